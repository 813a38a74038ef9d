"""``gzmorph predict``: MC-dropout predictions of rho on the test split (Walmsley et al. 2020, §2.3, §2.5.3, §2.7),
and (``--tree``) the whole-tree model's posterior catalog of any split or of galaxies without votes (below).

For every test galaxy the trained model draws T = A x D MC samples with ``training=True``: A =
``predict.augmentations`` passes through the trunk, each with a fresh augmentation of the image (test-time
augmentation, §2.5.3), and D = ``predict.dropout_masks`` fresh dropout masks on the head of each (MC dropout,
eqs. 7-10; :class:`MCSampling`), so the T values of rho sample both the approximate posterior over weights and
the invariances the network should have.  Dropout sits only after the dense layer, so the masks share the
trunk's pass (:func:`split_at_dropout`) and T samples cost about A full passes.
Any one of them alone (``gzmorph evaluate`` takes the first, ``rho[:, 0]``) is the paper's "without MC"
baseline of §2.7 and Tables 1-2: T = 1, one stochastic pass.  One more pass with ``training=False`` (no
dropout, central crop at the mean zoom, no random augmentation) gives ``rho_point``, the deterministic
network, a second baseline.

Which galaxies: the shards' ``test`` split (``--split``: any split, or ``all``), with the training cut
N >= max(min_total_votes, 1)
(:func:`gzmorph.inputs.keep_mask`).  Galaxies with fewer votes for the question are NOT
evaluated: the model was never trained on them (bar: the paper's N >= 10) and, with N = 0,
there are no votes to compare with.

Output (one parquet file, one row per galaxy, in shard reading order):

    id_str       string
    votes        int64           k, votes for the answer
    total_votes  int64           N, volunteers asked the question
    rho          list<float32>   the T MC-dropout predictions (each of length T)
    rho_point    float32         the deterministic prediction

plus key-value metadata ``question, answer, passes, augmentations, dropout_masks, precision, model, shards,
split, min_total_votes, votes_column, total_column``.  Galaxies are processed ``predict.chunk_size`` at a time and each
chunk is appended as a row group to a temporary file renamed when complete, so memory does not
grow with the test set.  :func:`load_predictions` reads the file back as (DataFrame, rho [G, T]).

The passes themselves (:func:`rho_functions`, :func:`predict_chunk`, :func:`chunk_passes` over an array or a
dataset in chunks) are shared with active learning, which scores its pool and test set the same way.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gzmorph.config import UserError
from gzmorph.inputs import effective_cut, question_spec, require_galaxies, vote_dataset
from gzmorph.runtime import configure_threads, describe_device, model_precision, seed_everything
from gzmorph.train import load_model

if TYPE_CHECKING:
    import keras
    import pandas as pd
    import pyarrow as pa
    import tensorflow as tf

log = logging.getLogger(__name__)

SPLIT = "test"
COLUMNS = ("id_str", "votes", "total_votes", "rho", "rho_point")


def prediction_schema(metadata: Mapping[str, Any] | None = None) -> pa.Schema:
    import pyarrow as pa

    fields = [
        ("id_str", pa.string()),
        ("votes", pa.int64()),
        ("total_votes", pa.int64()),
        ("rho", pa.list_(pa.float32())),
        ("rho_point", pa.float32()),
    ]
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    return pa.schema(fields, metadata=meta or None)


def chunk_table(ids: np.ndarray, counts: np.ndarray, rho: np.ndarray, rho_point: np.ndarray,
                schema: pa.Schema) -> pa.Table:
    """One chunk as an arrow table: ids (bytes) [B], counts (k, N) [B, 2], rho [B, T], rho_point [B]."""
    import pyarrow as pa

    n, passes = rho.shape
    # A list array over one flat buffer: no per-galaxy Python objects.
    offsets = pa.array(np.arange(0, n * passes + 1, passes, dtype=np.int32))
    rho_lists = pa.ListArray.from_arrays(offsets, pa.array(np.ascontiguousarray(rho, np.float32).ravel()))
    counts = np.rint(counts).astype(np.int64)  # float32 counts are exact below 2**24
    return pa.Table.from_arrays(
        [
            pa.array(ids, type=pa.binary()).cast(pa.string()),
            pa.array(counts[:, 0]),
            pa.array(counts[:, 1]),
            rho_lists,
            pa.array(np.asarray(rho_point, np.float32)),
        ],
        schema=schema,
    )


@dataclass(frozen=True)
class MCSampling:
    """How the T = A x D MC samples of a galaxy are drawn.

    ``augmentations`` (A): passes through the trunk, each with a fresh test-time augmentation of the image
    (flips, rotation, contrast, crop; §2.5.3).  ``dropout_masks`` (D): dropout masks drawn on the head for
    each trunk pass.  Dropout sits only after the dense layer (Fig. 3), so the trunk, nearly all the cost, runs
    A times instead of T.  D = 1 gives T independent full passes, the paper's scheme.
    """

    augmentations: int
    dropout_masks: int = 1

    def __post_init__(self) -> None:
        if int(self.augmentations) < 1 or int(self.dropout_masks) < 1:
            raise ValueError(f"augmentations ({self.augmentations}) and dropout_masks ({self.dropout_masks}) "
                             "must be positive")

    @property
    def passes(self) -> int:
        """T, the MC samples per galaxy."""
        return int(self.augmentations) * int(self.dropout_masks)

    @classmethod
    def of(cls, section: Mapping[str, Any]) -> MCSampling:
        """From a params section with ``augmentations`` and ``dropout_masks`` (``predict``, ``active_learning``)."""
        return cls(int(section["augmentations"]), int(section["dropout_masks"]))


def split_at_dropout(model: keras.Model) -> tuple[keras.Model, keras.Model] | None:
    """(trunk, head) of a Fig. 3 model cut before its ``mc_dropout`` layer; None for other shapes.

    trunk: uint8 images -> the dense layer's output (augmentation and convolutions: the cost).  head: that
    output -> the model's output, dropout first.  Both share the model's layers (and seed generators).
    """
    import keras

    names = [layer.name for layer in model.layers]
    if names.count("mc_dropout") != 1:
        return None
    cut = names.index("mc_dropout")
    try:
        features = model.layers[cut - 1].output
        trunk = keras.Model(model.input, features, name="mc_trunk")
        head_input = keras.Input(tuple(features.shape[1:]), dtype=features.dtype, name="features")
        y = head_input
        for layer in model.layers[cut:]:
            y = layer(y)
        head = keras.Model(head_input, y, name="mc_head")
    except (ValueError, TypeError, AttributeError):  # not a single chain of layers after the dense layer
        return None
    if tuple(head.output.shape[1:]) != tuple(model.output.shape[1:]):
        return None
    return trunk, head


def pass_functions(model: keras.Model, transform: Callable[[tf.Tensor], tf.Tensor] | None = None,
                   dropout_masks: int = 1
                   ) -> tuple[Callable[[tf.Tensor], tf.Tensor], Callable[[tf.Tensor], tf.Tensor]]:
    """(mc, point): compiled ``transform(model output)`` of a uint8 batch, with (MC dropout + augmentation) and without.

    ``mc(x)`` is [B, D, ...]: one augmented trunk pass and D = ``dropout_masks`` dropout masks on its head
    (:func:`split_at_dropout`; a model that cannot be split runs D full passes instead).  Each call draws new
    augmentations and masks (the layers' seed generators advance), so A calls give A x D samples.  ``point``
    is the deterministic network [B, ...].  A batch dimension of None means the last, shorter chunk does not
    retrace.
    """
    import tensorflow as tf

    out = transform or (lambda y: y)
    masks = int(dropout_masks)
    spec = [tf.TensorSpec([None, *model.input_shape[1:]], tf.uint8)]
    parts = split_at_dropout(model) if masks > 1 else None

    def samples(x: tf.Tensor) -> tf.Tensor:
        if parts is None:
            return tf.stack([out(model(x, training=True)) for _ in range(masks)], axis=1)
        trunk, head = parts
        features = trunk(x, training=True)  # [B, U]
        tiled = tf.tile(features, [masks, 1])  # row d * B + b: galaxy b under mask d
        y = out(head(tiled, training=True))  # [D * B, ...]
        y = tf.reshape(y, tf.concat([[masks, tf.shape(x)[0]], tf.shape(y)[1:]], axis=0))
        return tf.experimental.numpy.moveaxis(y, 0, 1)  # [B, D, ...]

    mc = tf.function(samples, input_signature=spec)
    point = tf.function(lambda x: out(model(x, training=False)), input_signature=spec)
    return mc, point


def rho_functions(model: keras.Model, dropout_masks: int = 1
                  ) -> tuple[Callable[[tf.Tensor], tf.Tensor], Callable[[tf.Tensor], tf.Tensor]]:
    """(mc, point) rho of a per-question (binomial) model: :func:`pass_functions` of its logit."""
    from gzmorph.losses import rho_from_logits

    return pass_functions(model, rho_from_logits, dropout_masks)


def predict_chunk(mc: Callable, point: Callable | None, images: tf.Tensor | np.ndarray, augmentations: int
                  ) -> tuple[np.ndarray, np.ndarray | None]:
    """(samples [B, A x D, ...] float32, point [B, ...] float32) for one chunk; point None without ``point``.

    ``mc`` is called ``augmentations`` (A) times, each giving [B, D, ...] (:func:`pass_functions`).
    """
    draws = np.concatenate([np.asarray(mc(images)) for _ in range(int(augmentations))], axis=1)
    return draws.astype(np.float32, copy=False), (None if point is None
                                                   else np.asarray(point(images)).astype(np.float32, copy=False))


def chunk_passes(mc: Callable, point: Callable | None, data: np.ndarray | Iterable, augmentations: int,
                 chunk_size: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray | None, tuple]]:
    """A calls of ``mc`` (and one deterministic pass with ``point``) over ``data``, one chunk at a time.

    ``data``: a uint8 image array [G, R, R, 3], cut into chunks of ``chunk_size`` galaxies, or an iterable
    of batches whose first element is the images (e.g. :func:`gzmorph.inputs.vote_dataset` with ids).
    Yields (samples [B, A x D], point [B] or None, the rest of the batch: () for an array) per chunk; all
    passes of a chunk run before the next chunk, so the draws depend on the data and the chunk size only.
    """
    if isinstance(data, np.ndarray):
        if not chunk_size or chunk_size < 1:
            raise ValueError("chunk_size: a positive number of galaxies is needed to cut an array")
        batches: Iterable = ((data[start:start + chunk_size],) for start in range(0, len(data), chunk_size))
    else:
        batches = data
    for images, *rest in batches:
        rho, rho_point = predict_chunk(mc, point, images, augmentations)
        yield rho, rho_point, tuple(rest)


def check_model_input(model: keras.Model, resolution: int, model_path: str | Path) -> None:
    shape = tuple(model.input_shape[1:])
    if shape != (resolution, resolution, 3):
        raise UserError(f"{model_path}: model expects images of shape {shape}, the shards hold "
                         f"{resolution}x{resolution}x3; train it on these shards")


def predict(params: dict[str, Any], question: str, shard_dir: str | Path, model_path: str | Path,
            out_path: str | Path, *, split: str = SPLIT, threads: int | None = None,
            sampling: MCSampling | None = None, chunk_size: int | None = None, progress: bool = True
            ) -> dict[str, Any]:
    """Write a split's (default test; ``all``: train, val, test in turn) MC-dropout predictions to ``out_path``."""
    import pyarrow.parquet as pq
    from tqdm import tqdm

    from gzmorph import io
    from gzmorph.shards import read_manifest

    manifest = read_manifest(shard_dir)
    spec = question_spec(params, question, manifest["tree"])
    sampling = MCSampling.of(params["predict"]) if sampling is None else sampling
    passes = sampling.passes
    chunk_size = int(params["predict"]["chunk_size"] if chunk_size is None else chunk_size)
    if chunk_size < 1:
        raise ValueError("chunk_size must be positive")
    configure_threads(threads)
    device, gpu = describe_device()
    seed_everything(int(params["seed"]), gpu)  # repeatable MC draws for a given model, data and chunk_size
    model = load_model(model_path)
    precision = model_precision(model)
    check_model_input(model, int(manifest["resolution"]), model_path)
    splits = ["train", "val", "test"] if split == "all" else [split]
    n_galaxies = sum(require_galaxies(shard_dir, s, spec) for s in splits)
    log.info("predicting %s for %d %s galaxies, %d MC samples (%d augmentations x %d dropout masks) + 1, %s, on %s",
             question, n_galaxies, split, passes, sampling.augmentations, sampling.dropout_masks, precision, device)

    schema = prediction_schema({
        "question": spec.question, "answer": spec.answer, "passes": passes,
        "augmentations": sampling.augmentations, "dropout_masks": sampling.dropout_masks, "precision": precision,
        "model": str(model_path),
        "shards": str(shard_dir), "split": split, "min_total_votes": effective_cut(spec.min_total_votes),
        "votes_column": spec.votes_column, "total_column": spec.total_column,
    })
    mc, point = rho_functions(model, sampling.dropout_masks)
    data = (batch for s in splits for batch in vote_dataset(shard_dir, s, spec, chunk_size, with_ids=True,
                                                              threads=threads))
    written = 0
    with io.atomic_path(out_path) as tmp, pq.ParquetWriter(tmp, schema) as writer, \
            tqdm(total=n_galaxies, unit="galaxy", desc=f"predict {question}", file=sys.stderr,
                 disable=not progress, mininterval=1.0 if sys.stderr.isatty() else 30.0) as bar:  # logs: sparse
        for rho, rho_point, (counts, ids) in chunk_passes(mc, point, data, sampling.augmentations):
            writer.write_table(chunk_table(ids.numpy(), counts.numpy(), rho, rho_point, schema))
            written += len(rho_point)
            bar.update(len(rho_point))
    if written != n_galaxies:  # cannot happen unless the shards changed under us
        raise RuntimeError(f"predicted {written} galaxies, expected {n_galaxies}")
    log.info("%s: %d galaxies x %d passes -> %s", question, written, passes, out_path)
    return {"n_galaxies": written, "passes": passes, "augmentations": sampling.augmentations,
            "dropout_masks": sampling.dropout_masks, "chunk_size": chunk_size, "device": device,
            "precision": precision}


def load_predictions(path: str | Path) -> tuple[pd.DataFrame, np.ndarray]:
    """(DataFrame of id_str, votes, total_votes, rho_point; rho float32 [G, T]).

    The file's metadata (question, answer, passes, ...) is in ``DataFrame.attrs``.
    """
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise UserError(f"{path}: not a gzmorph predictions file (missing {missing})")
    values = table.column("rho").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    passes = int(meta["passes"]) if "passes" in meta else (len(values) // max(len(table), 1))
    if len(values) != len(table) * passes:
        raise UserError(f"{path}: rho lists are not all of length {passes}")
    df = table.drop_columns(["rho"]).to_pandas()
    df.attrs.update(meta)
    return df, values.astype(np.float32, copy=False).reshape(len(table), passes)


# ---------------------------------------------------------------------------------------------- whole-tree model
#
# ``gzmorph predict --tree``: T MC passes of the whole-tree model over any catalog, written as the posterior
# catalog of :mod:`gzmorph.tree_catalog`.  Two inputs:
#
# * ``--shards DIR --split train|val|test|all`` (``all``: train, val, test in turn), every galaxy of the split
#   whatever its votes, with ra/dec looked up by id in ``--catalog`` (the survey's catalog parquet);
# * ``--images TABLE``: galaxies nobody voted on, a parquet or CSV with ``id_str`` and ``file_loc`` (an image
#   path, as in a gzmorph catalog; relative paths are relative to the working directory) and optionally ``ra``,
#   ``dec``.  Images are decoded and resized as ``gzmorph shards`` does (:func:`gzmorph.shards.load_image`).
#
# Galaxies go ``predict.chunk_size`` at a time.  Each finished chunk is written (atomically) to the chunk folder
# (``<out>.chunks/``, or ``--chunks``) as a small catalog; a rerun keeps the chunks written for the same model,
# input and settings and predicts only the rest.  Every chunk's MC draws are reseeded from (seed, chunk index), so
# a resumed run writes the same numbers as an uninterrupted one.  When all chunks exist they are copied row group
# by row group into ``--out`` and the folder is removed: memory holds one chunk whatever the catalog size.

CHUNK_META = "chunks.json"


def reseed(model: keras.Model, seed: int, chunk: int) -> None:
    """Set every random layer's generator state from (seed, chunk, layer): a chunk's draws depend on nothing else.

    Keras keeps a layer's generators in the (private) ``_seed_generators`` list; their state is what a
    traced function reads, so assigning it is enough.
    """
    from numpy.random import SeedSequence

    generators = [g for layer in model._flatten_layers() for g in getattr(layer, "_seed_generators", [])]
    for i, generator in enumerate(generators):
        state = SeedSequence([int(seed) % 2**32, int(chunk), i]).generate_state(2, "uint32")
        generator.state.assign(state.astype(generator.state.dtype))


def read_image_table(path: str | Path) -> pd.DataFrame:
    """An images-only catalog: id_str, file_loc (required), ra, dec (optional; NaN when absent)."""
    import pandas as pd

    path = Path(path)
    try:
        df = pd.read_csv(path, dtype={"id_str": str}) if path.suffix == ".csv" else pd.read_parquet(path)
    except FileNotFoundError:
        raise UserError(f"{path}: no such image table") from None
    except Exception as exc:  # pyarrow and pandas raise several types for a corrupt file
        raise UserError(f"{path}: not a readable image table ({type(exc).__name__}: {exc})") from None
    missing = [c for c in ("id_str", "file_loc") if c not in df.columns]
    if missing:
        raise UserError(f"{path}: image table lacks column(s) {', '.join(missing)} (needs id_str, file_loc)")
    for c in ("ra", "dec"):
        if c not in df.columns:
            df[c] = np.nan
    df = df[["id_str", "file_loc", "ra", "dec"]].astype({"id_str": str, "file_loc": str, "ra": float, "dec": float})
    duplicated = df["id_str"].duplicated()
    if duplicated.any():
        row = int(np.flatnonzero(duplicated.to_numpy())[0])
        raise UserError(f"{path}: row {row}: column id_str: duplicate id {df['id_str'].iloc[row]!r}")
    return df.reset_index(drop=True)


def decode_images(rows: pd.DataFrame, resolution: int, threads: int, source: str, first_row: int) -> np.ndarray:
    """uint8 [B, R, R, 3] for a chunk of an image table; an unusable image is a one-line error naming its row."""
    from concurrent.futures import ThreadPoolExecutor

    from gzmorph.shards import ImageError, load_image

    def one(i: int) -> bytes:
        try:
            return load_image(rows["file_loc"].iloc[i], resolution)
        except ImageError as exc:
            raise UserError(f"{source}: row {first_row + i}: column file_loc: {rows['file_loc'].iloc[i]}: "
                            f"{exc}") from None

    with ThreadPoolExecutor(max(1, int(threads))) as pool:  # PIL releases the GIL while decoding
        pixels = list(pool.map(one, range(len(rows))))
    return np.frombuffer(b"".join(pixels), np.uint8).reshape(len(rows), resolution, resolution, 3)


def _shard_chunks(shard_dir: str | Path, splits: list[str], column: str, chunk_size: int, threads: int | None
                  ) -> Iterator[tuple[np.ndarray, Callable[[], np.ndarray]]]:
    """(ids bytes [B], images thunk) per chunk of the splits' galaxies, in shard reading order."""
    from gzmorph.shards import make_dataset

    for split in splits:
        ds = make_dataset(shard_dir, split, columns=(column,), batch_size=chunk_size, with_ids=True)
        for images, _, ids in ds.as_numpy_iterator():
            yield ids, (lambda images=images: images)


def _table_chunks(df: pd.DataFrame, resolution: int, chunk_size: int, threads: int, source: str
                  ) -> Iterator[tuple[np.ndarray, Callable[[], np.ndarray]]]:
    """(ids [B], images thunk) per chunk of an image table: a skipped (finished) chunk decodes nothing."""
    for start in range(0, len(df), chunk_size):
        rows = df.iloc[start:start + chunk_size]
        yield rows["id_str"].to_numpy(), (lambda rows=rows, start=start:
                                          decode_images(rows, resolution, threads, source, start))


def _coordinates(ids: np.ndarray, lookup: pd.DataFrame | None, source: str) -> tuple[np.ndarray, np.ndarray]:
    """(ra, dec) of ``ids`` from a frame indexed by id_str; NaN without one."""
    if lookup is None:
        return np.full(len(ids), np.nan), np.full(len(ids), np.nan)
    from gzmorph.tree_catalog import id_strings

    keys = id_strings(ids)
    where = lookup.index.get_indexer(keys)
    if (where < 0).any():
        raise UserError(f"{source}: no row for id_str {keys[int(np.flatnonzero(where < 0)[0])]!r} of the shards")
    return lookup["ra"].to_numpy(np.float64)[where], lookup["dec"].to_numpy(np.float64)[where]


def _shard_input(shards: str | Path, split: str, catalog: str | Path | None, chunk_size: int,
                 threads: int | None) -> tuple:
    """(tree, resolution, galaxies, split, ra/dec by id or None, chunks, source) of a shards split (or all)."""
    import pandas as pd

    from gzmorph.shards import read_manifest
    from gzmorph.tree import get_tree

    manifest = read_manifest(shards)
    tree = get_tree(manifest["tree"])
    splits = ["train", "val", "test"] if split == "all" else [split]
    n_galaxies = sum(int(manifest["splits"][s]["n_galaxies"]) for s in splits)
    lookup = None
    if catalog is not None:
        lookup = pd.read_parquet(catalog, columns=["id_str", "ra", "dec"]).astype({"id_str": str}).set_index("id_str")
    batches = _shard_chunks(shards, splits, tree.questions[0].total_column, chunk_size, threads)
    return tree, int(manifest["resolution"]), n_galaxies, split, lookup, batches, f"{shards} ({split})"


def _table_input(params: dict[str, Any], images: str | Path, resolution: int, chunk_size: int,
                 threads: int | None) -> tuple:
    """The same for an images-only table; images are decoded at the model's input resolution."""
    from gzmorph.config import active_surveys
    from gzmorph.tree import get_tree

    table = read_image_table(images)
    tree = get_tree(active_surveys(params)[params["train"]["survey"]])  # the tree the model learnt
    batches = _table_chunks(table, resolution, chunk_size, threads or 1, str(images))
    return tree, resolution, len(table), "images", table.set_index("id_str")[["ra", "dec"]], batches, str(images)


def _chunk_folder(folder: Path, identity: dict[str, Any]) -> None:
    """Keep the chunks of an interrupted run with the same ``identity``; otherwise start an empty folder."""
    import json
    import shutil

    from gzmorph import io

    meta = folder / CHUNK_META
    if meta.exists():
        try:
            same = json.loads(meta.read_text()) == identity
        except ValueError:
            same = False
        if same:
            return
        log.info("%s: chunks of a different model, input or setting; starting again", folder)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    io.write_json(meta, identity)


def _join_chunks(files: list[Path], out_path: str | Path, schema: pa.Schema) -> int:
    """Copy the chunk files, one at a time, into ``out_path`` (atomically); the galaxies written."""
    import pyarrow.parquet as pq

    from gzmorph import io

    written = 0
    with io.atomic_path(out_path) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for path in files:
            chunk = pq.read_table(path, schema=schema)
            writer.write_table(chunk)
            written += len(chunk)
    return written


def predict_tree(params: dict[str, Any], model_path: str | Path, out_path: str | Path, *,
                 shards: str | Path | None = None, split: str | None = None, catalog: str | Path | None = None,
                 images: str | Path | None = None, chunks: str | Path | None = None, threads: int | None = None,
                 sampling: MCSampling | None = None, chunk_size: int | None = None, progress: bool = True
                 ) -> dict[str, Any]:
    """Write the whole-tree posterior catalog of a shards split (``shards``) or an image table (``images``)."""
    import shutil

    import pyarrow.parquet as pq
    from tqdm import tqdm

    from gzmorph import io, tree_catalog

    if (shards is None) == (images is None):
        raise UserError("predict --tree: give --shards (a split of a survey) or --images (a table of images)")
    sampling = MCSampling.of(params["predict"]) if sampling is None else sampling
    passes = sampling.passes
    chunk_size = int(params["predict"]["chunk_size"] if chunk_size is None else chunk_size)
    if chunk_size < 1:
        raise ValueError("chunk_size must be positive")
    expected_votes = int(params["predict"]["expected_votes"])
    configure_threads(threads)
    device, gpu = describe_device()
    seed = int(params["seed"])
    seed_everything(seed, gpu)
    model = load_model(model_path)
    n_answers = int(model.output_shape[-1])
    if shards is not None:
        split = str(params["predict"]["catalog_split"] if split is None else split)
        inputs = _shard_input(shards, split, catalog, chunk_size, threads)
    else:
        inputs = _table_input(params, images, int(model.input_shape[1]), chunk_size, threads)
    tree, resolution, n_galaxies, split, lookup, batches, source = inputs
    if n_answers != tree.n_answers():
        raise UserError(f"{model_path}: model gives {n_answers} outputs, the {tree.name} tree has "
                        f"{tree.n_answers()} answers; is it a `gzmorph train --tree` model of this survey?")
    check_model_input(model, resolution, model_path)
    model_file = Path(model_path).stat()
    identity = {"model": str(model_path), "model_bytes": model_file.st_size, "model_mtime_ns": model_file.st_mtime_ns,
                "source": source, "augmentations": sampling.augmentations, "dropout_masks": sampling.dropout_masks,
                "chunk_size": chunk_size, "seed": seed, "tree": tree.name,
                "expected_votes": expected_votes}
    folder = Path(chunks) if chunks is not None else Path(f"{out_path}.chunks")
    _chunk_folder(folder, identity)
    precision = model_precision(model)
    schema = tree_catalog.catalog_schema(tree, {"passes": passes, "augmentations": sampling.augmentations,
                                                "dropout_masks": sampling.dropout_masks, "precision": precision,
                                                "model": model_path, "source": source,
                                                "split": split, "expected_votes": expected_votes})
    mc, point = pass_functions(model, dropout_masks=sampling.dropout_masks)  # the concentrations themselves
    log.info("posteriors of %d galaxies (%s), %d questions x %d answers, %d MC samples (%d augmentations x %d "
             "dropout masks), %s, on %s", n_galaxies, source, len(tree.questions), tree.n_answers(), passes,
             sampling.augmentations, sampling.dropout_masks, precision, device)
    files, done = [], 0
    with tqdm(total=n_galaxies, unit="galaxy", desc="predict tree", file=sys.stderr, disable=not progress,
              mininterval=1.0 if sys.stderr.isatty() else 30.0) as bar:
        for index, (ids, images_of) in enumerate(batches):
            path = folder / f"chunk-{index:05d}.parquet"
            files.append(path)
            if path.exists():  # finished by an interrupted run with the same identity
                done += 1
            else:
                reseed(model, seed, index)
                alpha, alpha_point, _ = next(chunk_passes(mc, point, [(images_of(),)], sampling.augmentations))
                ra, dec = _coordinates(ids, lookup, str(catalog or images))
                with io.atomic_path(path) as tmp:
                    pq.write_table(tree_catalog.catalog_table(ids, ra, dec, alpha, alpha_point, tree, schema,
                                                                    expected_votes), tmp)
            bar.update(len(ids))
    written = _join_chunks(files, out_path, schema)
    if written != n_galaxies:  # cannot happen unless the input changed under us
        raise RuntimeError(f"wrote {written} galaxies, expected {n_galaxies}")
    shutil.rmtree(folder)
    log.info("%d galaxies x %d passes -> %s (%d chunks kept from an earlier run)", written, passes, out_path, done)
    return {"n_galaxies": written, "passes": passes, "chunk_size": chunk_size, "device": device,
            "chunks": len(files), "chunks_resumed": done, "tree": tree.name}


def run(args: argparse.Namespace) -> None:
    from gzmorph import config

    params = config.load(args.params)
    if args.tree:
        predict_tree(params, args.model, args.out, shards=args.shards, split=args.split, catalog=args.catalog,
                     images=args.images, chunks=args.chunks, threads=args.threads, progress=not args.no_progress)
        return
    if args.shards is None or args.images is not None or args.catalog is not None or args.chunks is not None:
        raise UserError("predict --question: give --shards; --images, --catalog and --chunks are for --tree")
    predict(params, args.question, args.shards, args.model, args.out, split=args.split or SPLIT,
            threads=args.threads, progress=not args.no_progress)


def register(sub: argparse._SubParsersAction) -> None:
    from gzmorph import config

    p = sub.add_parser("predict", help="MC-dropout predictions: rho of one question, or the whole-tree posteriors")
    config.add_params_argument(p)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--question", help="question under train.questions (e.g. bar): its binomial model")
    which.add_argument("--tree", action="store_true",
                       help="a `gzmorph train --tree` model: the posterior catalog (results/posteriors/)")
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--shards", help="shard directory from `gzmorph shards`")
    data.add_argument("--images", help="--tree only: parquet/CSV of unvoted galaxies: id_str, file_loc[, ra, dec]")
    p.add_argument("--split", choices=["train", "val", "test", "all"], default=None,
                   help="shards split (default: test for --question, predict.catalog_split for --tree)")
    p.add_argument("--catalog", default=None, help="--tree with --shards: the survey catalog giving ra, dec by id_str")
    p.add_argument("--chunks", default=None, help="--tree: folder of finished chunks, for resuming (<out>.chunks)")
    p.add_argument("--model", required=True, help="trained model (.keras) from `gzmorph train`")
    p.add_argument("--out", required=True, help="output parquet: id_str, votes, total_votes, rho[T], rho_point "
                   "(--tree: the posterior catalog, see gzmorph.tree_catalog)")
    config.add_threads_argument(p, "TensorFlow ops and the input pipeline")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)

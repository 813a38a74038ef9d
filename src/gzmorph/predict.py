"""``gzmorph predict``: MC-dropout predictions of rho on the test split (Walmsley et al. 2020, §2.3, §2.5.3, §2.7).

For every test galaxy the trained model makes T = ``predict.passes`` forward passes with
``training=True``: each pass draws fresh dropout masks (MC dropout, eqs. 7-10) AND a fresh
augmentation of the image (test-time augmentation, §2.5.3), so the T values of rho sample
both the approximate posterior over weights and the invariances the network should have.
Any one of them alone (``gzmorph evaluate`` takes the first, ``rho[:, 0]``) is the paper's "without MC"
baseline of §2.7 and Tables 1-2: T = 1, one stochastic pass.  One more pass with ``training=False`` (no
dropout, central crop at the mean zoom, no random augmentation) gives ``rho_point``, the deterministic
network, a second baseline.

Which galaxies: the shards' ``test`` split, with the training cut N >= max(min_total_votes, 1)
(:func:`gzmorph.inputs.keep_mask`).  Galaxies with fewer votes for the question are NOT
evaluated: the model was never trained on them (bar: the paper's N >= 10) and, with N = 0,
there are no votes to compare with.

Output (one parquet file, one row per galaxy, in shard reading order):

    id_str       string
    votes        int64           k, votes for the answer
    total_votes  int64           N, volunteers asked the question
    rho          list<float32>   the T MC-dropout predictions (each of length T)
    rho_point    float32         the deterministic prediction

plus key-value metadata ``question, answer, passes, model, shards, split, min_total_votes,
votes_column, total_column``.  Galaxies are processed ``predict.chunk_size`` at a time and each
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
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gzmorph.config import UserError
from gzmorph.inputs import effective_cut, question_spec, require_galaxies, vote_dataset
from gzmorph.runtime import configure_threads, describe_device, seed_everything
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


def rho_functions(model: keras.Model) -> tuple[Callable[[tf.Tensor], tf.Tensor], Callable[[tf.Tensor], tf.Tensor]]:
    """(mc, point): compiled rho of a uint8 batch, with (MC dropout + augmentation) and without.

    Each call of ``mc`` draws new dropout masks and augmentations (the layers' seed generators
    advance), so calling it T times gives T independent passes.  A batch dimension of None
    means the last, shorter chunk does not retrace.
    """
    import tensorflow as tf

    from gzmorph.losses import rho_from_logits

    spec = [tf.TensorSpec([None, *model.input_shape[1:]], tf.uint8)]
    mc = tf.function(lambda x: rho_from_logits(model(x, training=True)), input_signature=spec)
    point = tf.function(lambda x: rho_from_logits(model(x, training=False)), input_signature=spec)
    return mc, point


def predict_chunk(mc: Callable, point: Callable | None, images: tf.Tensor | np.ndarray, passes: int
                  ) -> tuple[np.ndarray, np.ndarray | None]:
    """(rho [B, T] float32, rho_point [B] float32) for one chunk of images; rho_point None without ``point``."""
    rho = np.stack([mc(images).numpy() for _ in range(passes)], axis=1).astype(np.float32, copy=False)
    return rho, None if point is None else point(images).numpy().astype(np.float32, copy=False)


def chunk_passes(mc: Callable, point: Callable | None, data: np.ndarray | Iterable, passes: int,
                 chunk_size: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray | None, tuple]]:
    """T MC passes (and one deterministic pass with ``point``) over ``data``, one chunk at a time.

    ``data``: a uint8 image array [G, R, R, 3], cut into chunks of ``chunk_size`` galaxies, or an iterable
    of batches whose first element is the images (e.g. :func:`gzmorph.inputs.vote_dataset` with ids).
    Yields (rho [B, T], rho_point [B] or None, the rest of the batch: () for an array) per chunk; all T
    passes of a chunk run before the next chunk, so the draws depend on the data and the chunk size only.
    """
    if isinstance(data, np.ndarray):
        if not chunk_size or chunk_size < 1:
            raise ValueError("chunk_size: a positive number of galaxies is needed to cut an array")
        batches: Iterable = ((data[start:start + chunk_size],) for start in range(0, len(data), chunk_size))
    else:
        batches = data
    for images, *rest in batches:
        rho, rho_point = predict_chunk(mc, point, images, passes)
        yield rho, rho_point, tuple(rest)


def check_model_input(model: keras.Model, resolution: int, model_path: str | Path) -> None:
    shape = tuple(model.input_shape[1:])
    if shape != (resolution, resolution, 3):
        raise UserError(f"{model_path}: model expects images of shape {shape}, the shards hold "
                         f"{resolution}x{resolution}x3; train it on these shards")


def predict(params: dict[str, Any], question: str, shard_dir: str | Path, model_path: str | Path,
            out_path: str | Path, *, threads: int | None = None, passes: int | None = None,
            chunk_size: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Write the test split's MC-dropout predictions to ``out_path``; return a small summary."""
    import pyarrow.parquet as pq
    from tqdm import tqdm

    from gzmorph import io
    from gzmorph.shards import read_manifest

    manifest = read_manifest(shard_dir)
    spec = question_spec(params, question, manifest["tree"])
    passes = int(params["predict"]["passes"] if passes is None else passes)
    chunk_size = int(params["predict"]["chunk_size"] if chunk_size is None else chunk_size)
    if passes < 1 or chunk_size < 1:
        raise ValueError("passes and chunk_size must be positive")
    configure_threads(threads)
    device, gpu = describe_device()
    seed_everything(int(params["seed"]), gpu)  # repeatable MC draws for a given model, data and chunk_size
    model = load_model(model_path)
    check_model_input(model, int(manifest["resolution"]), model_path)
    n_galaxies = require_galaxies(shard_dir, SPLIT, spec)
    log.info("predicting %s for %d test galaxies, %d MC passes + 1, on %s", question, n_galaxies, passes, device)

    schema = prediction_schema({
        "question": spec.question, "answer": spec.answer, "passes": passes, "model": str(model_path),
        "shards": str(shard_dir), "split": SPLIT, "min_total_votes": effective_cut(spec.min_total_votes),
        "votes_column": spec.votes_column, "total_column": spec.total_column,
    })
    mc, point = rho_functions(model)
    data = vote_dataset(shard_dir, SPLIT, spec, chunk_size, with_ids=True, threads=threads)
    written = 0
    with io.atomic_path(out_path) as tmp, pq.ParquetWriter(tmp, schema) as writer, \
            tqdm(total=n_galaxies, unit="galaxy", desc=f"predict {question}", file=sys.stderr,
                 disable=not progress, mininterval=1.0 if sys.stderr.isatty() else 30.0) as bar:  # logs: sparse
        for rho, rho_point, (counts, ids) in chunk_passes(mc, point, data, passes):
            writer.write_table(chunk_table(ids.numpy(), counts.numpy(), rho, rho_point, schema))
            written += len(rho_point)
            bar.update(len(rho_point))
    if written != n_galaxies:  # cannot happen unless the shards changed under us
        raise RuntimeError(f"predicted {written} galaxies, expected {n_galaxies}")
    log.info("%s: %d galaxies x %d passes -> %s", question, written, passes, out_path)
    return {"n_galaxies": written, "passes": passes, "chunk_size": chunk_size, "device": device}


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


def run(args: argparse.Namespace) -> None:
    from gzmorph import config

    params = config.load(args.params)
    predict(params, args.question, args.shards, args.model, args.out, threads=args.threads,
            progress=not args.no_progress)


def register(sub: argparse._SubParsersAction) -> None:
    from gzmorph import config

    p = sub.add_parser("predict", help="MC-dropout predictions of rho for the test split")
    config.add_params_argument(p)
    p.add_argument("--question", required=True, help="question under train.questions (e.g. bar)")
    p.add_argument("--shards", required=True, help="shard directory from `gzmorph shards`")
    p.add_argument("--model", required=True, help="trained model (.keras) from `gzmorph train`")
    p.add_argument("--out", required=True, help="output parquet: id_str, votes, total_votes, rho[T], rho_point")
    config.add_threads_argument(p, "TensorFlow ops and the input pipeline")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)

"""``gzmorph shards``: split a vote catalog and write TFRecord shards, plus the tf.data reader.

Layout of ``<out>/``:

- ``<split>-<index:05d>.tfrecord``: one ``tf.train.Example`` per galaxy with
  ``image`` (raw uint8 bytes, resolution x resolution x 3, row-major),
  ``image_shape`` (int64 [3]), ``id_str`` (bytes) and one int64 feature per vote
  column of the catalog's decision tree, named like the column.  A question's
  ``<question>_total-votes`` feature is N, the sum of its answer counts
  (:func:`gzmorph.catalog.answer_sum`): what the likelihood and the vote cuts use, which
  can be less than the catalog's published total (GZ DECaLS ``merging``);
- ``manifest.json``: tree, resolution, columns, seed, shard size, split fractions and
  per split the galaxy count and shard files.  Written last: it marks a complete run;
- ``quarantine.parquet``: ``id_str, file_loc, reason`` of every galaxy whose image
  could not be used (always written, possibly empty).

Galaxies are assigned to splits by :mod:`gzmorph.split` (id and seed only) and,
within a split, put in a seeded random order (:func:`gzmorph.split.order_key`, a hash
of seed and id, ties broken by id) before being cut into ``shard_size`` chunks: each
shard is a random sample of its split, not a patch of sky (ids, and catalogs, run in
sky order).  The bytes of every shard depend on the catalog and seed alone -- not on
``--threads``, the catalog's row order or timing.

The manifest also records, per split and per question, the histogram of N (the answer
sum) over the written galaxies (``n_histograms``): :func:`gzmorph.inputs.count_galaxies`
counts what a cut N >= c keeps from it without reading a shard.

:func:`make_dataset` reads a split's shards ``READ_CYCLE`` files at a time, interleaved
record by record in a fixed (deterministic) order; for training (``shuffle``) the file
order is a seeded shuffle, reshuffled every epoch, and records pass a shuffle buffer.

Work is split by cost.  Spawned worker processes (``--threads`` of them) do the
expensive part -- open, verify, decode and resize each image (:func:`load_image`)
-- and never import TensorFlow, which takes seconds per process.  They receive
only ``(id_str, file_loc)`` per galaxy, in chunks, and return the raw pixels or
a quarantine reason.  The parent process submits the rows in shard order with a
bounded window of chunks in flight, imports TensorFlow while the workers start
and decode, and consumes the results in submission order: it builds each
``tf.train.Example`` and writes it with ``tf.io.TFRecordWriter`` to a temporary
file that is renamed onto the shard name when the shard is complete.  Memory
holds at most the window's decoded images, whatever the catalog size.  With
``--threads 1`` everything runs in the parent, without a pool.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import re
import sys
import warnings
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from gzmorph import split as splitting

if TYPE_CHECKING:  # pandas and TensorFlow stay out of the spawned workers
    import pandas as pd
    import tensorflow as tf

    from gzmorph.tree import DecisionTree

log = logging.getLogger(__name__)

FORMAT = "gzmorph-shards/1"
CHANNELS = 3
IMAGE_KEY = "image"
SHAPE_KEY = "image_shape"
ID_KEY = "id_str"
MANIFEST = "manifest.json"
QUARANTINE = "quarantine.parquet"
QUARANTINE_COLUMNS = ("id_str", "file_loc", "reason")

IMAGE_FORMATS = ("PNG", "JPEG")
# Modes with an unambiguous RGB rendering; 16-bit, float, CMYK, bilevel... are quarantined.
ACCEPTED_MODES = ("RGB", "RGBA", "L", "P")
# Decompression-bomb guard, checked from the header before any pixel is decoded.
# Galaxy Zoo cutouts are 424 px; nothing legitimate comes near 8192 x 8192.
MAX_PIXELS = 8192 * 8192
RESAMPLE = Image.Resampling.LANCZOS
RESAMPLE_NOTE = "PIL LANCZOS to resolution x resolution (JPEG: libjpeg DCT scaling to >= resolution first)"
# Rows per task sent to a worker, and tasks in flight per worker: at most
# Decoded images waiting for the parent are bounded by DECODED_BUDGET bytes (and at least
# IN_FLIGHT chunks per worker): a constant, whatever the catalog size.  The budget is large
# enough that the workers keep decoding through the parent's ~3 s TensorFlow import instead
# of stalling on a full window (64 MiB = ~1300 images at 128 px).
CHUNK = 16
IN_FLIGHT = 4
DECODED_BUDGET = 64 * 2**20

# Shard files read at once by make_dataset, interleaved record by record.  A constant (not AUTOTUNE, which is
# the number of cores) so that the reading order is the same on every machine.
READ_CYCLE = 8

_SHARD_NAME = re.compile(r"^(train|val|test)-\d{5}\.tfrecord$")
# Temporary names of io.atomic_path and _atomic_shard: "." + target name + "." + random + suffix.
_TEMP_NAME = re.compile(r"^\.((train|val|test)-\d{5}\.tfrecord|manifest\.json|quarantine\.parquet)\..+")


# --------------------------------------------------------------------------- images


class ImageError(ValueError):
    """An image cannot be used; the message is the quarantine reason."""


def load_image(path: str | os.PathLike[str], resolution: int, max_pixels: int = MAX_PIXELS) -> bytes:
    """Decode a PNG/JPEG, convert to RGB and resize; raw uint8 bytes (row-major, H x W x 3).

    Raises :class:`ImageError` with a one-line reason for any unusable file.
    """
    with warnings.catch_warnings():
        # PIL only warns between MAX_IMAGE_PIXELS and twice that; a warning is not a guard.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(path, formats=IMAGE_FORMATS) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise ImageError(f"image is {width}x{height}, over the {max_pixels}-pixel limit "
                                     "(decompression bomb guard)")
                if img.mode not in ACCEPTED_MODES:
                    accepted = ", ".join(ACCEPTED_MODES)
                    raise ImageError(f"unsupported image mode {img.mode!r} (accepted: {accepted})")
                if img.format == "JPEG":
                    img.draft(None, (resolution, resolution))  # decode at 1/2..1/8 scale, still >= target
                img.load()  # decode now, so truncation is reported here
                rgb = img if img.mode == "RGB" else img.convert("RGB")
                if rgb.size != (resolution, resolution):
                    rgb = rgb.resize((resolution, resolution), RESAMPLE)
                return rgb.tobytes()
        except ImageError:
            raise
        except FileNotFoundError:
            raise ImageError("image file not found") from None
        except IsADirectoryError:
            raise ImageError("image path is a directory") from None
        except UnidentifiedImageError:
            size = _file_size(path)
            what = "empty file" if size == 0 else f"not a {' or '.join(IMAGE_FORMATS)} image"
            raise ImageError(what) from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageError(f"decompression bomb guard: {exc}") from None
        except Exception as exc:  # truncated or corrupt data surfaces as OSError, SyntaxError, ValueError...
            raise ImageError(f"corrupt image ({type(exc).__name__}: {exc})") from None


def _file_size(path: str | os.PathLike[str]) -> int | None:
    try:
        return os.path.getsize(path)
    except OSError:
        return None


# --------------------------------------------------------------------------- decoding (workers)

Row = tuple[str, str]  # (id_str, file_loc): all a worker is told about a galaxy
Decoded = tuple[str, bytes | None, str | None]  # (id_str, pixels, quarantine reason): one of the two is None


def decode_row(row: Row, resolution: int) -> Decoded:
    """Pixels of one galaxy, or the reason it is quarantined; never raises for a bad image."""
    id_str, loc = row
    try:
        return id_str, load_image(loc, resolution), None
    except ImageError as exc:
        return id_str, None, str(exc)
    except Exception as exc:  # a decoder bug on one file must not stop the stage
        return id_str, None, f"unexpected {type(exc).__name__}: {exc}"


def decode_chunk(resolution: int, rows: Sequence[Row]) -> list[Decoded]:
    """The task a worker runs: :func:`decode_row` for each row, in order."""
    return [decode_row(row, resolution) for row in rows]


def new_pool(threads: int) -> ProcessPoolExecutor:
    # spawn: fresh interpreters that import only numpy and PIL (not the parent's pandas/arrow/
    # TensorFlow threads, which fork would copy in whatever state they are in).
    return ProcessPoolExecutor(threads, mp_context=multiprocessing.get_context("spawn"))


class OrderedDecoder:
    """Decode ``rows`` in order, in-process (``threads`` 1) or in a pool of spawned workers.

    Creating it starts the workers and submits the first window of chunks, so whatever
    the caller does next (importing TensorFlow) overlaps with their start-up.  Iterating
    yields one :data:`Decoded` per row, in the order of ``rows``.  At most ``window``
    chunks are submitted and not yet consumed, plus the one being handed out, so at most
    ``(window + 1) * chunk`` decoded images exist -- unlike ``Pool.imap``, whose result
    thread buffers every finished result however far the consumer lags.
    """

    def __init__(self, rows: Iterable[Row], resolution: int, threads: int, chunk: int = CHUNK,
                 window: int | None = None) -> None:
        self.resolution = resolution
        self.threads = threads
        self._rows = iter(rows)
        self._chunk = chunk
        image_bytes = resolution * resolution * CHANNELS
        self.window = window or max(IN_FLIGHT * threads, DECODED_BUDGET // (chunk * image_bytes))
        self._pool: ProcessPoolExecutor | None = None
        self._pending: deque[Future[list[Decoded]]] = deque()
        if threads > 1:
            self._pool = new_pool(threads)
            self._fill()

    def _fill(self) -> None:
        assert self._pool is not None
        while len(self._pending) < self.window:
            rows = list(islice(self._rows, self._chunk))
            if not rows:
                return
            self._pending.append(self._pool.submit(decode_chunk, self.resolution, rows))

    def __iter__(self) -> Iterator[Decoded]:
        if self._pool is None:
            for row in self._rows:
                yield decode_row(row, self.resolution)
            return
        while self._pending:
            done = self._pending.popleft().result()
            self._fill()  # refill before handing results out: workers stay busy while the parent writes
            yield from done

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
            self._pending.clear()

    def __enter__(self) -> OrderedDecoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- writing (parent)


def galaxy_example(pixels: bytes, resolution: int, id_str: str, columns: Sequence[str],
                   vote_counts: Sequence[int]) -> bytes:
    """The serialised ``tf.train.Example`` stored for one galaxy.

    ``deterministic=True`` fixes the order of the feature map entries, so equal
    input gives equal bytes in every process and run.
    """
    import tensorflow as tf

    train = tf.train
    feature = {
        IMAGE_KEY: train.Feature(bytes_list=train.BytesList(value=[pixels])),
        SHAPE_KEY: train.Feature(int64_list=train.Int64List(value=[resolution, resolution, CHANNELS])),
        ID_KEY: train.Feature(bytes_list=train.BytesList(value=[id_str.encode()])),
    }
    for col, count in zip(columns, vote_counts, strict=True):
        feature[col] = train.Feature(int64_list=train.Int64List(value=[count]))
    example = train.Example(features=train.Features(feature=feature))
    return example.SerializeToString(deterministic=True)


@contextmanager
def _atomic_shard(target: Path) -> Iterator[tf.io.TFRecordWriter]:
    """A TFRecordWriter on :func:`gzmorph.io.atomic_path`'s temp file: the shard appears whole or not at all."""
    import tensorflow as tf

    from gzmorph import io

    with io.atomic_path(target) as tmp:
        writer = tf.io.TFRecordWriter(str(tmp))
        try:
            yield writer
        finally:
            writer.close()


# --------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class ShardPlan:
    split: str
    index: int
    rows: np.ndarray  # positions in the catalog


@dataclass(frozen=True)
class ShardResult:
    split: str
    index: int
    file: str
    n_galaxies: int


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}.tfrecord"


def plan_shards(ids: np.ndarray, split_codes: np.ndarray, shard_size: int, seed: int = 0) -> list[ShardPlan]:
    """Which catalog rows form which shard: per split in seeded random order, cut every shard_size.

    The order is by :func:`gzmorph.split.order_key` (seed and id only), ties by id_str, so it does not
    depend on the catalog's row order and each shard is a random sample of its split.
    """
    plans = []
    keys = splitting.order_key(ids, seed)
    for code, split in enumerate(splitting.SPLITS):
        rows = np.flatnonzero(split_codes == code)
        rows = rows[np.lexsort((ids[rows], keys[rows]))]
        plans += [ShardPlan(split, index, rows[start:start + shard_size])
                  for index, start in enumerate(range(0, len(rows), shard_size))]
    return plans


def _plan_rows(plans: Iterable[ShardPlan], ids: np.ndarray, locs: np.ndarray) -> Iterator[Row]:
    for plan in plans:
        for r in plan.rows.tolist():
            yield ids[r], locs[r]


# --------------------------------------------------------------------------- the stage


def remove_temp_files(out_dir: Path) -> list[Path]:
    """Delete temporary files a crashed or killed run left in ``out_dir``."""
    removed = []
    for p in out_dir.iterdir() if out_dir.is_dir() else ():
        if _TEMP_NAME.match(p.name) and p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def histogram_pairs(counts: Mapping[int, int]) -> list[list[int]]:
    """``{N: galaxies}`` as the manifest stores it: ``[[N, galaxies], ...]`` sorted by N."""
    return [[int(n), int(c)] for n, c in sorted(counts.items()) if c]


def build_manifest(results: Sequence[ShardResult], *, tree: str, columns: Sequence[str], resolution: int,
                   shard_size: int, seed: int, fractions: Mapping[str, float], n_catalog: int,
                   n_quarantined: int, catalog_path: str | None,
                   histograms: Mapping[str, Mapping[str, Mapping[int, int]]] | None = None) -> dict[str, Any]:
    """The manifest; ``histograms``: split -> question -> {N: written galaxies} (``n_histograms``)."""
    splits: dict[str, Any] = {}
    for name in splitting.SPLITS:
        shards = sorted((r for r in results if r.split == name), key=lambda r: r.index)
        splits[name] = {
            "n_galaxies": sum(r.n_galaxies for r in shards),
            "n_shards": len(shards),
            "files": [r.file for r in shards],
            "shards": [{"file": r.file, "n_galaxies": r.n_galaxies} for r in shards],
        }
        if histograms is not None:
            splits[name]["n_histograms"] = {q: histogram_pairs(h) for q, h in histograms.get(name, {}).items()}
    return {
        "format": FORMAT,
        "catalog": catalog_path,
        "tree": tree,
        "resolution": resolution,
        "channels": CHANNELS,
        "dtype": "uint8",
        "resample": RESAMPLE_NOTE,
        "columns": list(columns),
        "features": {
            IMAGE_KEY: "bytes: raw uint8 pixels, row-major [resolution, resolution, channels]",
            SHAPE_KEY: "int64 [3]: resolution, resolution, channels",
            ID_KEY: "bytes: utf-8 id_str",
            "<column>": "int64: vote count, one feature per entry of 'columns'",
            "<question>_total-votes": "int64: N, the sum of the question's answer counts (the catalog's "
                                      "published total can be larger)",
        },
        "seed": seed,
        "split_fractions": {s: float(fractions[s]) for s in splitting.SPLITS},
        "shard_size": shard_size,
        "n_catalog": n_catalog,
        "n_galaxies": sum(s["n_galaxies"] for s in splits.values()),
        "n_quarantined": n_quarantined,
        "splits": splits,
    }


def model_counts(block: np.ndarray, columns: Sequence[str], tree: DecisionTree) -> np.ndarray:
    """Catalog counts [G, len(columns)] with each question's total replaced by N, its answer sum."""
    from gzmorph.catalog import answer_sum

    by_column = dict(zip(columns, block.T, strict=True))
    out = block.copy()
    for q in tree.questions:
        out[:, list(columns).index(q.total_column)] = answer_sum(by_column, q)
    return out


def write_shards(df: pd.DataFrame, out_dir: str | os.PathLike[str], *, tree: DecisionTree, resolution: int,
                 shard_size: int, fractions: Mapping[str, float], seed: int, threads: int = 1,
                 progress: bool = True, catalog_path: str | None = None) -> dict[str, Any]:
    """Write every shard, ``quarantine.parquet`` and (last) ``manifest.json``; return the manifest.

    With ``threads`` > 1 images are decoded by that many *spawned* worker processes, so
    a calling script needs the usual ``if __name__ == "__main__":`` guard (the
    ``gzmorph`` command has it).  The shards are byte-identical for every ``threads``.
    """
    import pandas as pd
    from tqdm import tqdm

    from gzmorph.io import write_json, write_parquet

    if shard_size < 1 or resolution < 1 or threads < 1:
        raise ValueError("shard_size, resolution and threads must be positive")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # The manifest marks a finished run: drop it first so a failed rerun never looks complete.
    (out / MANIFEST).unlink(missing_ok=True)
    stale = remove_temp_files(out)
    if stale:
        log.info("removed %d temporary file(s) left by an interrupted run", len(stale))

    columns = tree.vote_columns
    ids = df["id_str"].astype(str).to_numpy()
    locs = df["file_loc"].astype(str).to_numpy()
    vote_cols = [df.columns.get_loc(c) for c in columns]
    plans = plan_shards(ids, splitting.assign_codes(ids, seed, fractions), shard_size, seed)
    results: list[ShardResult] = []
    bad: list[tuple[str, str, str]] = []
    # split -> question -> {N: written galaxies}, for counting cuts without reading shards
    totals = {q.name: list(columns).index(q.total_column) for q in tree.questions}
    histograms: dict[str, dict[str, dict[int, int]]] = {s: {q: {} for q in totals} for s in splitting.SPLITS}
    try:
        with OrderedDecoder(_plan_rows(plans, ids, locs), resolution, threads) as decoder, \
                tqdm(total=len(df), unit="galaxy", desc=f"shards {out.name}", file=sys.stderr,
                     disable=not progress, mininterval=1.0) as bar:
            import tensorflow  # noqa: F401  (seconds; the workers start and decode meanwhile)

            decoded = iter(decoder)
            for plan in plans:
                # this shard's rows only; totals as N (answer sums)
                counts = model_counts(df.iloc[plan.rows, vote_cols].to_numpy(np.int64), columns, tree)
                written = 0
                kept = np.zeros(len(plan.rows), dtype=bool)
                with _atomic_shard(out / shard_name(plan.split, plan.index)) as writer:
                    for row, r in enumerate(plan.rows.tolist()):
                        id_str, pixels, reason = next(decoded)
                        if id_str != ids[r]:
                            raise RuntimeError(f"decoder out of order: got {id_str!r}, expected {ids[r]!r}")
                        if pixels is None:
                            bad.append((id_str, locs[r], str(reason)))
                        else:
                            writer.write(galaxy_example(pixels, resolution, id_str, columns, counts[row].tolist()))
                            written += 1
                            kept[row] = True
                        bar.update(1)
                for q, col in totals.items():
                    hist = histograms[plan.split][q]
                    for n, c in zip(*np.unique(counts[kept, col], return_counts=True), strict=True):
                        hist[int(n)] = hist.get(int(n), 0) + int(c)
                results.append(ShardResult(plan.split, plan.index, shard_name(plan.split, plan.index), written))
    finally:
        remove_temp_files(out)  # a run killed mid-shard cannot clean up after itself; the next one does this too

    keep = {r.file for r in results}
    for p in out.iterdir():
        if _SHARD_NAME.match(p.name) and p.name not in keep:
            p.unlink()  # from an earlier, larger run; not listed in the new manifest

    quarantine = pd.DataFrame(sorted(bad), columns=list(QUARANTINE_COLUMNS), dtype=str)
    write_parquet(out / QUARANTINE, quarantine)
    manifest = build_manifest(
        results, tree=tree.name, columns=columns, resolution=resolution, shard_size=shard_size, seed=seed,
        fractions=fractions, n_catalog=len(df), n_quarantined=len(bad), catalog_path=catalog_path,
        histograms=histograms,
    )
    write_json(out / MANIFEST, manifest)

    counts_line = ", ".join(f"{s} {manifest['splits'][s]['n_galaxies']}" for s in splitting.SPLITS)
    log.info("%s: %d galaxies in %d shards (%s)", out, manifest["n_galaxies"], len(results), counts_line)
    if bad:
        log.warning("%s: %d of %d galaxies quarantined (unreadable images), see %s",
                    out, len(bad), len(df), out / QUARANTINE)
    return manifest


def run(args: argparse.Namespace) -> None:
    from gzmorph import catalog, config
    from gzmorph.tree import get_tree

    params = config.load(args.params)
    df = catalog.load(args.catalog)
    tree = get_tree(str(df["tree"].iloc[0])) if len(df) else catalog.validate(df, str(args.catalog))
    sp = params["shards"]
    write_shards(
        df, args.out, tree=tree, resolution=sp["resolution"], shard_size=sp["shard_size"],
        fractions=sp["split"], seed=params["seed"], threads=args.threads, progress=not args.no_progress,
        catalog_path=str(args.catalog),
    )


def register(sub: argparse._SubParsersAction) -> None:
    from gzmorph import config  # not at module level: the spawned workers import this module

    p = sub.add_parser("shards", help="split a catalog and write TFRecord shards")
    config.add_params_argument(p)
    p.add_argument("--catalog", required=True, help="canonical catalog parquet")
    p.add_argument("--out", required=True, help="output directory for shards, manifest and quarantine")
    config.add_threads_argument(p, "image decoding")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


# --------------------------------------------------------------------------- reading


def read_manifest(shard_dir: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(shard_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no manifest; run `gzmorph shards` for this directory") from None
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


def shard_files(shard_dir: str | os.PathLike[str], split: str, manifest: Mapping[str, Any] | None = None
                ) -> list[str]:
    manifest = manifest or read_manifest(shard_dir)
    if split not in manifest["splits"]:
        raise KeyError(f"unknown split {split!r}; splits: {list(manifest['splits'])}")
    return [str(Path(shard_dir) / name) for name in manifest["splits"][split]["files"]]


def read_columns(shard_dir: str | os.PathLike[str], split: str, columns: Sequence[str], batch_size: int = 4096
                 ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(id_str bytes [B], int64 counts [B, len(columns)]) per batch of a split, in :func:`make_dataset`'s order.

    Only ids and the named count features are parsed: no image is decoded or copied, so memory holds
    one batch of ids and counts (plus the records being read).
    """
    import tensorflow as tf

    columns = tuple(columns)
    spec = {ID_KEY: tf.io.FixedLenFeature([], tf.string)}
    spec.update({c: tf.io.FixedLenFeature([], tf.int64) for c in columns})

    def parse(serialized: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        f = tf.io.parse_example(serialized, spec)
        return f[ID_KEY], tf.stack([f[c] for c in columns], axis=1)

    paths = shard_files(shard_dir, split)
    files = tf.data.Dataset.from_tensor_slices(tf.constant(paths, tf.string))
    ds = files.interleave(tf.data.TFRecordDataset, cycle_length=max(1, min(READ_CYCLE, len(paths))), block_length=1,
                          num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    yield from ds.batch(batch_size).map(parse).prefetch(1).as_numpy_iterator()


def make_dataset(shard_dir: str | os.PathLike[str], split: str, columns: Sequence[str] | None = None,
                 batch_size: int = 32, shuffle: bool = False, seed: int | None = None, repeat: bool = False,
                 with_ids: bool = False, counts_dtype: str = "float32", shuffle_buffer: int = 2048,
                 drop_remainder: bool = False, cache: bool = False) -> tf.data.Dataset:
    """Batches of ``(image, vote_counts)`` or, with ``with_ids``, ``(image, vote_counts, id_str)``.

    ``image`` is uint8 [B, R, R, 3]; ``vote_counts`` is ``counts_dtype`` [B, len(columns)] in the
    order of ``columns`` (default: every vote column of the tree, in tree order).  ``READ_CYCLE`` shard
    files are read at once, interleaved record by record in a deterministic order (the same on any
    machine): manifest order without ``shuffle``; with it, a seeded shuffle of the files, reshuffled every
    epoch, then a ``shuffle_buffer`` record shuffle.  Shards are written in random order within a split,
    so even the unshuffled order is not sky order.
    With ``cache`` the split's records are held in memory after the first pass (no shard is read again) and
    the record shuffle spans the whole split, since the file order is fixed from then on.
    Note: Keras ``fit`` would read a third element as sample weights, so use ``with_ids``
    for prediction bookkeeping, not training.
    """
    import tensorflow as tf

    manifest = read_manifest(shard_dir)
    columns = tuple(manifest["columns"] if columns is None else columns)
    unknown = [c for c in columns if c not in manifest["columns"]]
    if unknown:
        raise KeyError(f"columns not in the shards of {shard_dir}: {unknown}")
    res, ch = manifest["resolution"], manifest["channels"]
    spec = {IMAGE_KEY: tf.io.FixedLenFeature([], tf.string), ID_KEY: tf.io.FixedLenFeature([], tf.string)}
    spec.update({c: tf.io.FixedLenFeature([], tf.int64) for c in columns})
    dtype = tf.as_dtype(counts_dtype)

    def parse(serialized: tf.Tensor) -> tuple[tf.Tensor, ...]:
        f = tf.io.parse_example(serialized, spec)  # whole batch at once: far cheaper than per record
        image = tf.reshape(tf.io.decode_raw(f[IMAGE_KEY], tf.uint8), [-1, res, res, ch])
        counts = tf.cast(tf.stack([f[c] for c in columns], axis=1), dtype)
        return (image, counts, f[ID_KEY]) if with_ids else (image, counts)

    paths = shard_files(shard_dir, split, manifest)
    files = tf.data.Dataset.from_tensor_slices(tf.constant(paths, tf.string))
    if shuffle:
        files = files.shuffle(max(1, len(paths)), seed=seed, reshuffle_each_iteration=True)
    ds = files.interleave(tf.data.TFRecordDataset, cycle_length=max(1, min(READ_CYCLE, len(paths))), block_length=1,
                          num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if cache:
        ds = ds.cache()
        shuffle_buffer = max(shuffle_buffer, int(manifest["splits"].get(split, {}).get("n_galaxies", 0)))
    if shuffle:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)

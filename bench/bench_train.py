"""Benchmark ``gzmorph train``'s input pipeline: is tf.data ever the bottleneck?

    .venv/bin/python bench/bench_train.py [--shards DIR] [--n 1500] [--steps 30] [--threads 2]

Without ``--shards`` it generates a fake catalog (``tests/_fake_catalog.py``: galaxy-like PNGs,
random valid votes) of ``--n`` galaxies and shards it at 128 px in a temporary directory.

One model (params.yaml's Fig. 3 CNN, network input ``--input-size`` = 64 px, augmentation on),
one process, ``--steps`` training steps per timed epoch, fed two ways:
  - pipeline: :func:`gzmorph.inputs.vote_dataset` on the train split exactly as ``gzmorph train``
    builds it (read TFRecords, seeded shuffle, parallel batch parse, vote cut, rebatch, prefetch),
    repeated and re-batched to full batches so both feeds see the same number of images;
  - memory: the SAME first ``--steps`` batches of that pipeline, materialised as tensors and
    served by ``Dataset.from_tensor_slices(...).batch().cache()`` -- an input cost of ~0.
Each feed first runs one untimed epoch (tracing, warm-up).  Then the feeds alternate for
``--repeats`` rounds; the best epoch of each is reported (the host is shared).  Also printed:
the pipeline alone (no model), i.e. how many images/s it could deliver.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the fake catalog generator shared with the tests

SEED = 42
FRACTIONS = {"train": 0.7, "val": 0.2, "test": 0.1}


def ensure_shards(shards: str | None, workdir: Path, n: int, resolution: int, threads: int) -> Path:
    """``shards`` if given, else fake shards of ``n`` galaxies at ``resolution`` px under ``workdir``."""
    if shards:
        return Path(shards)
    from _fake_catalog import make_catalog

    from gzmorph.shards import write_shards
    from gzmorph.tree import GZ2

    t0 = time.perf_counter()
    df = make_catalog(workdir, n, image_size=resolution, tree=GZ2, seed=SEED, compress_level=1)
    out = workdir / "shards"
    write_shards(df, out, tree=GZ2, resolution=resolution, shard_size=256, fractions=FRACTIONS, seed=SEED,
                 threads=max(1, threads), progress=False)
    print(f"generated {n} galaxies at {resolution} px in {time.perf_counter() - t0:.1f} s -> {out}")
    return out


def bench_params(input_size: int, batch_size: int) -> dict:
    from gzmorph import config

    params = config.load(ROOT / "params.yaml")
    params["train"].update(input_size=input_size, batch_size=batch_size, mixed_precision=False)
    return params


class EpochTimer:
    """Keras callback recording each epoch's wall time."""

    def __new__(cls):
        import keras

        class _Timer(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.times: list[float] = []

            def on_epoch_begin(self, epoch, logs=None):
                self._t0 = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                self.times.append(time.perf_counter() - self._t0)

        return _Timer()


def materialise(ds, steps: int):
    """The first ``steps`` batches of ``ds`` as one in-memory, cached dataset of the same batches."""
    import numpy as np
    import tensorflow as tf

    batches = list(ds.take(steps).as_numpy_iterator())
    images = np.concatenate([b[0] for b in batches])
    counts = np.concatenate([b[1] for b in batches])
    batch = len(batches[0][0])
    mem = tf.data.Dataset.from_tensor_slices((images, counts)).batch(batch, drop_remainder=True).cache()
    return mem.repeat().prefetch(tf.data.AUTOTUNE), len(images)


def time_fit(model, ds, steps: int, epochs: int) -> list[float]:
    timer = EpochTimer()
    model.fit(ds, epochs=epochs, steps_per_epoch=steps, callbacks=[timer], verbose=0, shuffle=False)
    return timer.times


def pipeline_only(ds, steps: int) -> float:
    t0 = time.perf_counter()
    for _ in ds.take(steps):
        pass
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", default=None, help="existing shard dir (default: generate fake shards)")
    ap.add_argument("--n", type=int, default=1500, help="galaxies to generate")
    ap.add_argument("--resolution", type=int, default=128)
    ap.add_argument("--input-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--question", default="smooth-or-featured")
    ap.add_argument("--steps", type=int, default=30, help="training steps per timed epoch")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_train.") as tmp:
        shards = ensure_shards(args.shards, Path(tmp), args.n, args.resolution, args.threads)
        run(args, shards)


def run(args: argparse.Namespace, shards: Path) -> None:
    import keras
    import tensorflow as tf

    from gzmorph.inputs import question_spec, require_galaxies, vote_dataset
    from gzmorph.losses import BinomialLoss
    from gzmorph.runtime import configure_threads, describe_device, seed_everything
    from gzmorph.shards import read_manifest
    from gzmorph.train import build_question_model

    configure_threads(args.threads)
    device, gpu = describe_device()
    manifest = read_manifest(shards)
    params = bench_params(args.input_size, args.batch_size)
    spec = question_spec(params, args.question, manifest["tree"])
    seed_everything(SEED, gpu)
    n_train = require_galaxies(shards, "train", spec)
    bs = args.batch_size

    def pipeline():
        ds = vote_dataset(shards, "train", spec, bs, shuffle=True, seed=SEED, threads=args.threads,
                          n_galaxies=n_train)
        # Full batches across epoch ends, so both feeds push steps * batch images per epoch.
        return ds.repeat().rebatch(bs, drop_remainder=True).prefetch(tf.data.AUTOTUNE)

    memory, n_mem = materialise(pipeline(), args.steps)
    feeds = {"pipeline": pipeline(), "memory": memory}
    model = build_question_model(params, spec, manifest["resolution"])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=BinomialLoss())
    print(f"device: {device}; threads {args.threads}; {n_train} train galaxies at {manifest['resolution']} px -> "
          f"{args.input_size} px; batch {bs}; {args.steps} steps ({n_mem} images) per timed epoch")

    for ds in feeds.values():  # trace each input signature, warm caches
        time_fit(model, ds, args.steps, 1)
    best = {name: float("inf") for name in feeds}
    for _ in range(args.repeats):
        for name, ds in feeds.items():
            best[name] = min(best[name], min(time_fit(model, ds, args.steps, 1)))
    alone = min(pipeline_only(feeds["pipeline"], args.steps) for _ in range(args.repeats))

    images = args.steps * bs
    rate = {name: images / t for name, t in best.items()}
    print(f"{'feed':<28}{'images/s':>12}{'s/epoch':>10}")
    for name in feeds:
        print(f"{'training, ' + name:<28}{rate[name]:>12.0f}{best[name]:>10.2f}")
    print(f"{'tf.data pipeline alone':<28}{images / alone:>12.0f}{alone:>10.2f}")
    ratio = rate["pipeline"] / rate["memory"]
    print(f"ratio pipeline / memory: {ratio:.3f} (goal >= 0.9) -> {'OK' if ratio >= 0.9 else 'BELOW GOAL'}")


if __name__ == "__main__":
    main()

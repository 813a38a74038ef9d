"""Peak memory of each stage at 1x, 4x and 16x the default catalog: it must stay flat.

    .venv/bin/python bench/bench_memory.py [--scales 1 4 16] [--al-scales 1 4] [--base 5900] [--workdir DIR]
                                           [--stages predict_tree ...]

1x is ``--base`` galaxies (the default run's SDSS catalog: ~5,900 of ``simulate.n_galaxies`` 8,000).  Tiny
synthetic shards keep it to a few minutes on 2 cores: 32 px images (3 kB of pixels each, so a stage that held a
split in memory would grow by ~200 MB between 1x and 16x), 200 PNGs reused cyclically, every GZ2 vote column.
Stages, each in a fresh child process, at every scale:

- ``shards``: ``write_shards`` (``--threads 1``) of the catalog (the shards the other stages read);
- ``train_input``: two epochs of ``vote_dataset`` on the train split as ``gzmorph train`` builds it (seeded shuffled
  file interleave, shuffle buffer, parse, vote cut; held in memory when it fits in ``train.cache_mb``, so this
  stage grows with the catalog up to that bound), no model;
- ``predict``: ``gzmorph predict`` (T = 1 x 2 MC samples + 1) of the test split with a small untrained model;
- ``predict_tree``: ``gzmorph predict --tree`` (T = 1 x 2) of every split (the posterior catalog) with a small
  untrained whole-tree model, chunk files and all;
- ``active_learning`` (``--al-scales``): ``gzmorph active-learning run`` (BALD, 1 acquisition, 1 epoch of a small
  model): load the pool index, train on the filtered labelled stream, score the streamed pool and test split.

A thread of this process samples the RSS of the child and all its descendants every 10 ms (psutil) and keeps the
peak of the sum; the child reports its RSS once its imports are done (TensorFlow included) as the baseline.
Printed: peak RSS, peak above the baseline, and both as ratios against the 1x run.  ``getrusage`` maxrss is not
used: Linux carries a process's high-water mark across fork+exec.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

RESOLUTION = 32
SHARD_SIZE = 256
FRACTIONS = {"train": 0.7, "val": 0.2, "test": 0.1}
SEED = 42
QUESTION = "bar"
STAGES = ("shards", "train_input", "predict", "predict_tree", "active_learning")


def _params(workdir: Path) -> dict:
    from gzmorph import config

    override = {"seed": SEED, "shards": {"resolution": RESOLUTION, "shard_size": SHARD_SIZE, "split": FRACTIONS},
                "train": {"input_size": RESOLUTION, "batch_size": 64, "dropout_rate": 0.2,
                          "questions": {q: {"trunk_filters": [32, 32, 16], "dense_units": 128}
                                        for q in ("smooth-or-featured", "bar")}},
                "predict": {"augmentations": 1, "dropout_masks": 2, "chunk_size": 256},
                "active_learning": {"augmentations": 1, "dropout_masks": 2, "max_epochs": 1, "min_epochs": 0,
                                    "warm_start": False, "patience": 1, "warmup_epochs": 0, "min_steps_per_epoch": 2,
                                    "batch_size": 32,
                                    "questions": {QUESTION: {"initial": 32, "per_iteration": 32, "iterations": 1}}}}
    path = workdir / "override.json"
    path.write_text(json.dumps(override))
    params = config.load([ROOT / "params.yaml", path])
    params["train"]["questions"][QUESTION]["min_total_votes"] = 0
    return params


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def child(stage: str, n: int, workdir: Path) -> None:
    shard_dir = workdir / f"shards-{n}"
    if stage == "shards":
        import pandas as pd
        import tensorflow  # noqa: F401

        from gzmorph.shards import write_shards
        from gzmorph.tree import GZ2

        df = pd.read_parquet(workdir / f"catalog-{n}.parquet")
        print(json.dumps({"baseline": _rss()}), flush=True)
        write_shards(df, shard_dir, tree=GZ2, resolution=RESOLUTION, shard_size=SHARD_SIZE, fractions=FRACTIONS,
                     seed=SEED, threads=1, progress=False)
        return
    import tensorflow as tf

    from gzmorph.inputs import question_spec, vote_dataset

    params = _params(workdir)
    spec = question_spec(params, QUESTION, "gz2")
    if stage == "train_input":
        from gzmorph.inputs import fits_in_cache

        print(json.dumps({"baseline": _rss()}), flush=True)
        cache = fits_in_cache(shard_dir, ("train",), params["train"]["cache_mb"])
        ds = vote_dataset(shard_dir, "train", spec, 64, shuffle=True, seed=SEED, cache=cache)
        for _ in range(2):  # the second epoch reads the cache, when the split fits in train.cache_mb
            seen = sum(int(tf.shape(x)[0]) for x, _ in ds)
        assert seen > 0
    elif stage == "predict":
        from gzmorph import predict, train

        model_path = workdir / "model.keras"
        if not model_path.exists():
            train.build_question_model(params, spec, RESOLUTION).save(model_path)
        predict.load_model(model_path)  # warm the import and the format
        print(json.dumps({"baseline": _rss()}), flush=True)
        predict.predict(params, QUESTION, shard_dir, model_path, workdir / f"pred-{n}.parquet", threads=2,
                        progress=False)
    elif stage == "predict_tree":
        from gzmorph import predict, train
        from gzmorph.tree import GZ2

        model_path = workdir / "tree.keras"
        if not model_path.exists():
            train.build_tree_model(params, GZ2, RESOLUTION).save(model_path)
        predict.load_model(model_path)
        print(json.dumps({"baseline": _rss()}), flush=True)
        predict.predict_tree(params, model_path, workdir / f"posteriors-{n}.parquet", shards=shard_dir, split="all",
                             threads=2, progress=False)
    elif stage == "active_learning":
        from gzmorph import active_learning as al
        from gzmorph import train  # noqa: F401  (keras)

        print(json.dumps({"baseline": _rss()}), flush=True)
        al.simulate(params, QUESTION, "bald", 0, shard_dir, workdir / f"al-{n}.csv", workdir / f"al-{n}.parquet",
                    threads=2)
    else:
        raise SystemExit(f"unknown stage {stage}")


def measure(stage: str, n: int, workdir: Path) -> dict:
    import psutil

    proc = subprocess.Popen([sys.executable, __file__, "--child", stage, "--n", str(n), "--workdir", str(workdir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""})
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        p = psutil.Process(proc.pid)
        while not stop.is_set():
            try:
                total = p.memory_info().rss + sum(c.memory_info().rss for c in p.children(recursive=True))
                peak[0] = max(peak[0], total)
            except psutil.Error:
                pass
            time.sleep(0.01)

    t = threading.Thread(target=sample, daemon=True)
    start = time.perf_counter()
    t.start()
    out, err = proc.communicate()
    stop.set()
    t.join()
    if proc.returncode:
        raise SystemExit(f"{stage} at {n} failed:\n{err[-3000:]}")
    baseline = json.loads(out.strip().splitlines()[0])["baseline"]
    return {"peak": peak[0], "baseline": baseline, "seconds": time.perf_counter() - start}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", type=int, default=5900, help="galaxies at 1x (the default SDSS catalog)")
    ap.add_argument("--scales", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--al-scales", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES),
                    help="stages to measure (shards are always written: the others read them)")
    ap.add_argument("--child", choices=STAGES, default=None)
    ap.add_argument("--n", type=int, default=0)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.n, args.workdir)
        return
    from _fake_catalog import make_catalog

    with tempfile.TemporaryDirectory(prefix="bench_memory_") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        scales = sorted(set(args.scales) | set(args.al_scales))
        for s in scales:
            n = args.base * s
            make_catalog(workdir, n, image_size=RESOLUTION, n_images=200, compress_level=1).to_parquet(
                workdir / f"catalog-{n}.parquet")
        measure("shards", args.base * scales[0], workdir)  # warm-up (bytecode, page cache), not reported
        print(f"1x = {args.base} galaxies, {RESOLUTION} px shards; peak RSS of child + descendants (psutil, 10 ms)")
        print(f"{'stage':<16}{'scale':>6}{'galaxies':>10}{'peak MB':>10}{'above base MB':>15}{'peak/1x':>9}"
              f"{'above/1x':>10}{'s':>7}")
        for stage in STAGES:
            if stage != "shards" and stage not in args.stages:
                continue
            first = None
            for s in {"shards": scales, "active_learning": args.al_scales}.get(stage, args.scales):
                n = args.base * s
                r = measure(stage, n, workdir)
                above = r["peak"] - r["baseline"]
                first = first or (r["peak"], max(above, 1))
                print(f"{stage:<16}{s:>5}x{n:>10}{r['peak'] / 2**20:>10.0f}{above / 2**20:>15.0f}"
                      f"{r['peak'] / first[0]:>9.2f}{above / first[1]:>10.2f}{r['seconds']:>7.1f}", flush=True)


if __name__ == "__main__":
    main()

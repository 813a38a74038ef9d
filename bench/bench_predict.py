"""Benchmark ``gzmorph predict``: MC-dropout throughput, and peak memory against test-set size.

    .venv/bin/python bench/bench_predict.py [--shards DIR] [--model M.keras] [--n 1500] [--passes 30]

Without ``--shards`` it generates fake shards (as ``bench_train.py``: ``--n`` galaxies at 128 px,
7:2:1 split); without ``--model`` it saves an untrained Fig. 3 CNN (64 px network input) --
the cost of a forward pass does not depend on the weights.

(a) Throughput, images x passes per second (T + 1 passes counted), best of ``--repeats`` after a
    warm-up run: :func:`gzmorph.predict.predict` end to end (model load, tracing, the cut's
    counting pass, parquet writing), and its per-chunk MC loop alone (functions traced first).
(b) Memory: the same prediction in a fresh child process per test-set size, 1x and 4x, where
    4x is a shard directory whose manifest lists every test shard four times (same files,
    symlinked).  A thread samples the child's RSS (psutil) every 10 ms; printed are the RSS
    once TensorFlow and the model are loaded, the peak during prediction, and their difference.
    Chunking should make the peak flat in the test-set size.
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

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # bench_train's shard generator
from bench_train import ROOT, bench_params, ensure_shards  # noqa: E402


def repeated_test_split(shards: Path, out: Path, times: int) -> Path:
    """A shard dir whose test split lists the original test shards ``times`` times (symlinks, no copies)."""
    from gzmorph.io import write_json
    from gzmorph.shards import read_manifest

    manifest = read_manifest(shards)
    out.mkdir(parents=True, exist_ok=True)
    for split in manifest["splits"].values():
        for name in split["files"]:
            link = out / name
            if not link.exists():
                link.symlink_to((shards / name).resolve())
    test = manifest["splits"]["test"]
    manifest["splits"]["test"] = test | {"files": test["files"] * times, "n_galaxies": test["n_galaxies"] * times}
    write_json(out / "manifest.json", manifest)
    return out


def untrained_model(shards: Path, path: Path, input_size: int, question: str) -> Path:
    from gzmorph.inputs import question_spec
    from gzmorph.shards import read_manifest
    from gzmorph.train import build_question_model

    manifest = read_manifest(shards)
    params = bench_params(input_size, 64)
    model = build_question_model(params, question_spec(params, question, manifest["tree"]), manifest["resolution"])
    model.save(path)
    return path


class PeakRSS:
    """Samples this process's RSS in a thread; ``peak`` is the largest seen since ``reset``."""

    def __init__(self, interval: float = 0.01):
        import psutil

        self._proc = psutil.Process()
        self._interval = interval
        self._stop = threading.Event()
        self.peak = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(self._interval)

    def reset(self) -> int:
        self.peak = now = self._proc.memory_info().rss
        return now

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, self._proc.memory_info().rss)


def predict_once(args: argparse.Namespace, shards: Path, model: Path, out: Path) -> dict:
    from gzmorph.predict import MCSampling, predict

    params = bench_params(args.input_size, 64)
    t0 = time.perf_counter()
    summary = predict(params, args.question, shards, model, out, threads=args.threads,
                      sampling=MCSampling(args.passes, 1), chunk_size=args.chunk_size, progress=False)
    return summary | {"seconds": time.perf_counter() - t0}


def mc_loop_seconds(args: argparse.Namespace, shards: Path, model_path: Path) -> float:
    """The per-chunk work of predict() alone: T MC passes + 1 on every chunk, functions traced beforehand."""
    from gzmorph.inputs import question_spec, vote_dataset
    from gzmorph.predict import predict_chunk, rho_functions
    from gzmorph.shards import read_manifest
    from gzmorph.train import load_model

    spec = question_spec(bench_params(args.input_size, 64), args.question, read_manifest(shards)["tree"])
    mc, point = rho_functions(load_model(model_path))
    data = vote_dataset(shards, "test", spec, args.chunk_size, with_ids=True, threads=args.threads)
    predict_chunk(mc, point, next(iter(data))[0], 1)  # trace both functions
    t0 = time.perf_counter()
    for images, _, _ in data:
        predict_chunk(mc, point, images, args.passes)
    return time.perf_counter() - t0


def child(args: argparse.Namespace) -> None:
    """Memory run in a fresh process: RSS after setup, then the peak while predicting."""
    sampler = PeakRSS()
    import tensorflow as tf  # noqa: F401  (setup: TensorFlow and the model, as predict will load them)

    from gzmorph.train import load_model

    load_model(args.model)
    setup = sampler.reset()
    summary = predict_once(args, Path(args.shards), Path(args.model), Path(args.out))
    peak = sampler.stop()
    print(json.dumps(summary | {"rss_setup": setup, "rss_peak": peak}))


def child_run(args: argparse.Namespace, shards: Path, model: Path, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", "--shards", str(shards), "--model", str(model), "--out", str(out),
           "--passes", str(args.passes), "--chunk-size", str(args.chunk_size), "--threads", str(args.threads),
           "--input-size", str(args.input_size), "--question", args.question]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if res.returncode:
        raise RuntimeError(res.stderr[-3000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", default=None, help="existing shard dir (default: generate fake shards)")
    ap.add_argument("--model", default=None, help="trained .keras model (default: an untrained one)")
    ap.add_argument("--n", type=int, default=1500, help="galaxies to generate")
    ap.add_argument("--resolution", type=int, default=128)
    ap.add_argument("--input-size", type=int, default=64)
    ap.add_argument("--question", default="smooth-or-featured")
    ap.add_argument("--passes", type=int, default=30)
    ap.add_argument("--chunk-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="timed runs for (a); the best is shown")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 4], help="test-set multiples for (b)")
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return

    with tempfile.TemporaryDirectory(prefix="bench_predict.") as tmp:
        work = Path(tmp)
        shards = ensure_shards(args.shards, work, args.n, args.resolution, args.threads)
        model = Path(args.model) if args.model else untrained_model(shards, work / "model.keras",
                                                                   args.input_size, args.question)
        from gzmorph.runtime import describe_device

        print(f"device: {describe_device()[0]}; threads {args.threads}; T = {args.passes} MC passes + 1; "
              f"chunk {args.chunk_size} galaxies")

        predict_once(args, shards, model, work / "warmup.parquet")
        runs, loops = [], []
        for _ in range(args.repeats):  # interleaved: both see the same (shared) host load
            runs.append(predict_once(args, shards, model, work / "timed.parquet"))
            loops.append(mc_loop_seconds(args, shards, model))
        run, loop = min(runs, key=lambda r: r["seconds"]), min(loops)
        images = run["n_galaxies"] * (run["passes"] + 1)
        print(f"(a) throughput on {run['n_galaxies']} test galaxies x {run['passes'] + 1} passes (best of "
              f"{args.repeats}):")
        print(f"    predict() end to end (model load, tracing, cut count, parquet): {run['seconds']:.2f} s = "
              f"{images / run['seconds']:.0f} images x passes / s")
        print(f"    MC loop only (traced functions, reading shards included):      {loop:.2f} s = "
              f"{images / loop:.0f} images x passes / s")

        print("(b) peak memory, fresh process per size")
        print(f"{'test set':>9}{'galaxies':>10}{'seconds':>9}{'RSS setup MiB':>15}{'RSS peak MiB':>14}"
              f"{'peak - setup':>14}")
        mib = 2.0**20
        for times in args.sizes:
            dir_ = shards if times == 1 else repeated_test_split(shards, work / f"x{times}", times)
            r = child_run(args, dir_, model, work / f"mem{times}.parquet")
            print(f"{times:>8}x{r['n_galaxies']:>10}{r['seconds']:>9.1f}{r['rss_setup'] / mib:>15.0f}"
                  f"{r['rss_peak'] / mib:>14.0f}{(r['rss_peak'] - r['rss_setup']) / mib:>14.0f}")


if __name__ == "__main__":
    main()

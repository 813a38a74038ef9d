"""Where the default run's time goes, as ratios measured side by side in one run of this script.

    .venv/bin/python bench/bench_speed.py [--shards data/shards/sdss] [--models data/models] [--steps 20]

(a) Training throughput (images/s, best of ``--repeats`` epochs of ``--steps`` batches, after an untimed epoch)
    of both trunks (Fig. 3's, the binomial models of the paper; [32, 64, 64] + 256, params.yaml's) in float32
    and in the precision ``train.mixed_precision: auto`` picks on this machine: bfloat16 / float32.
(b) The same precision fed by the pipeline (``gzmorph.inputs.vote_dataset`` with the in-memory cache, as
    ``gzmorph train`` builds it) against the model alone (the same batches as in-memory tensors): pipeline /
    model alone.
(c) Two trainings side by side, one thread each (two processes), against one after the other with both threads
    each: the images/s of the two together / the images/s of one.
(d) T = 30 MC samples as A = 6 augmented trunk passes x D = 5 head dropout masks against 30 full passes:
    seconds per galaxy, and, with trained models under ``--models`` (a pipeline run's data/models), the MC
    coverage errors of both on the test split with 68 % bootstrap intervals (1000 resamples of galaxies), for
    the binomial models and the whole-tree model's smooth and bar answers.
(e) The pipeline's time from ``--benchmarks`` (Snakemake's benchmarks/*.tsv): each job's seconds, their sum,
    and the wall time of the latest Snakemake run (first to last timestamp of its .snakemake/log).

Without ``--shards`` fake shards are generated (``tests/_fake_catalog.py``); (d)'s calibration needs a run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

SEED = 42
QUESTION = "smooth-or-featured"
TRUNKS = {"fig3": {"trunk_filters": [32, 32, 16], "dense_units": 128},
          "wide": {"trunk_filters": [32, 64, 64], "dense_units": 256}}
EPSILONS = (0.02, 0.05, 0.10, 0.20)


def bench_params(trunk: str, mixed: bool | str) -> dict:
    from gzmorph import config

    params = config.load(ROOT / "params.yaml")
    params["train"]["mixed_precision"] = mixed
    params["train"]["questions"][QUESTION].update(TRUNKS[trunk])
    return params


def training_rates(shards: Path, trunk: str, mixed: bool | str, steps: int, repeats: int, threads: int,
                   feeds: tuple[str, ...]) -> dict[str, float]:
    """{feed: images/s} of one model trained on ``feeds`` (memory, pipeline) in turn, best epoch of each."""
    import keras
    import tensorflow as tf
    from bench_train import materialise, time_fit

    from gzmorph.inputs import question_spec, require_galaxies, vote_dataset
    from gzmorph.losses import BinomialLoss
    from gzmorph.runtime import configure_threads, describe_device, precision_policy, seed_everything
    from gzmorph.shards import read_manifest
    from gzmorph.train import build_question_model

    configure_threads(threads)
    gpu = describe_device()[1]
    manifest = read_manifest(shards)
    params = bench_params(trunk, mixed)
    spec = question_spec(params, QUESTION, manifest["tree"])
    seed_everything(SEED, gpu)
    batch = int(params["train"]["batch_size"])
    n_train = require_galaxies(shards, "train", spec)

    def pipeline():
        ds = vote_dataset(shards, "train", spec, batch, shuffle=True, seed=SEED, threads=threads,
                          n_galaxies=n_train, cache=True)
        return ds.repeat().rebatch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)

    memory, _ = materialise(pipeline(), steps)
    datasets = {"memory": memory, "pipeline": pipeline()}
    with precision_policy(mixed, gpu):
        model = build_question_model(params, spec, manifest["resolution"])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=BinomialLoss())
    best = {}
    for feed in feeds:
        time_fit(model, datasets[feed], steps, 1)  # trace, fill the cache
        best[feed] = steps * batch / min(time_fit(model, datasets[feed], steps, repeats))
    return best


def worker(args: argparse.Namespace) -> None:
    """One training process of (a)-(c): prints its images/s per feed as JSON."""
    mixed = {"auto": "auto", "false": False}[args.worker_precision]
    rates = training_rates(Path(args.shards), args.worker_trunk, mixed, args.steps, args.repeats, args.threads,
                           tuple(args.worker_feeds.split(",")))
    print("RESULT " + json.dumps(rates), flush=True)


def spawn(args: argparse.Namespace, shards: Path, trunk: str, precision: str, feeds: str,
          threads: int) -> subprocess.Popen:
    cmd = [sys.executable, __file__, "--worker", "--shards", str(shards), "--steps", str(args.steps),
           "--repeats", str(args.repeats), "--threads", str(threads), "--worker-trunk", trunk,
           "--worker-precision", precision, "--worker-feeds", feeds]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)


def collect(process: subprocess.Popen) -> dict[str, float]:
    out, _ = process.communicate()
    if process.returncode:
        raise SystemExit(f"worker failed ({process.returncode}): {out[-2000:]}")
    return json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])


def ensure_shards(args: argparse.Namespace, workdir: Path) -> Path:
    from bench_train import ensure_shards as make

    return make(args.shards, workdir, args.n, 128, args.threads)


# ---------------------------------------------------------------------------------------------- (d) MC samples


def mc_seconds(model, images, sampling, rounds: int = 3) -> float:
    """Seconds per galaxy of T = A x D samples (best of ``rounds``), functions traced beforehand."""
    from gzmorph.predict import pass_functions, predict_chunk

    mc, _ = pass_functions(model, dropout_masks=sampling.dropout_masks)
    predict_chunk(mc, None, images[:8], 1)
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        predict_chunk(mc, None, images, sampling.augmentations)
        best = min(best, time.perf_counter() - t0)
    return best / len(images)


def coverage_row(pmf, k, n) -> tuple[list[float], list[float], list[float]]:
    from gzmorph.evaluate import bootstrap_coverage_error, coverage_error, coverage_per_galaxy

    expected, hit = coverage_per_galaxy(pmf, k, n, EPSILONS)
    lo, hi = bootstrap_coverage_error(expected, hit)
    return list(coverage_error(expected.sum(0), hit.sum(0))), list(lo), list(hi)


def binomial_coverage(params, shards: Path, model: Path, sampling, threads: int, workdir: Path):
    from gzmorph.evaluate import posteriors
    from gzmorph.predict import load_predictions, predict

    question = model.stem
    out = workdir / f"{question}_{sampling.augmentations}x{sampling.dropout_masks}.parquet"
    predict(params, question, shards, model, out, threads=threads, sampling=sampling, progress=False)
    df, rho = load_predictions(out)
    post = posteriors(df["votes"], df["total_votes"], rho, df["rho_point"])
    return coverage_row(post.pmf_mc, post.k, post.n)


def tree_coverage(params, shards: Path, model: Path, sampling, threads: int, workdir: Path) -> dict:
    from gzmorph.evaluate_tree import shard_counts
    from gzmorph.posterior import answer_mixture_pmf
    from gzmorph.predict import predict_tree
    from gzmorph.shards import read_manifest
    from gzmorph.tree import get_tree
    from gzmorph.tree_catalog import load_concentrations

    out = workdir / f"tree_{sampling.augmentations}x{sampling.dropout_masks}.parquet"
    predict_tree(params, model, out, shards=shards, split="test", threads=threads, sampling=sampling,
                 progress=False)
    tree = get_tree(read_manifest(shards)["tree"])
    ids, alpha = load_concentrations(out, tree)
    counts = shard_counts(shards, tree, list(ids))
    rows = {}
    for question, answer in (("smooth-or-featured", "smooth"), ("bar", "yes")):
        sl = tree.answer_slices[question]
        k_q = counts[:, sl]
        n = k_q.sum(axis=1).astype(int)
        asked = n >= 1
        j = tree.question(question).answer_names.index(answer)
        pmf = answer_mixture_pmf(alpha[asked][:, :, sl], n[asked], j)
        rows[f"tree {question}"] = coverage_row(pmf, k_q[asked, j].astype(int), n[asked])
    return rows


def mc_section(args: argparse.Namespace, shards: Path, workdir: Path) -> None:
    import numpy as np

    from gzmorph import config
    from gzmorph.predict import MCSampling
    from gzmorph.runtime import configure_threads
    from gzmorph.shards import make_dataset
    from gzmorph.train import load_model

    configure_threads(args.threads)
    shared, full = MCSampling(6, 5), MCSampling(30, 1)
    images = np.concatenate([b[0] for b in make_dataset(shards, "test", batch_size=256).take(1)
                             .as_numpy_iterator()])[: args.mc_galaxies]
    models = Path(args.models) if args.models else None
    trained = {p.stem: p for p in sorted(models.glob("*.keras"))} if models and models.exists() else {}
    if models and (models / "tree").exists():
        trained.update({f"tree/{p.stem}": p for p in (models / "tree").glob("*.keras")})
    print(f"\n(d) T = 30 MC samples: {shared.augmentations} augmentations x {shared.dropout_masks} dropout masks "
          f"against {full.augmentations} full passes, {len(images)} test galaxies, {args.threads} threads")
    if not trained:
        from gzmorph.model import build_model

        trained = {"untrained wide trunk": None}
        untrained = build_model(int(images.shape[1]), output_size=64, seed=0, filters=(32, 64, 64), dense_units=256)
    for name, path in trained.items():
        model = load_model(path) if path is not None else untrained
        t_shared, t_full = mc_seconds(model, images, shared), mc_seconds(model, images, full)
        print(f"  {name:<28} shared {1e3 * t_shared:7.2f} ms/galaxy, full {1e3 * t_full:7.2f} ms/galaxy: "
              f"shared / full = {t_shared / t_full:.3f} (the cost of {30 * t_shared / t_full:.1f} full passes)")
    if not args.models or not any(p is not None for p in trained.values()):
        return
    params = config.load(ROOT / "params.yaml")
    table: dict[str, dict] = {}
    for name, path in trained.items():
        for sampling in (shared, full):
            label = f"{sampling.augmentations} x {sampling.dropout_masks}"
            if name.startswith("tree/"):
                for key, row in tree_coverage(params, shards, path, sampling, args.threads, workdir).items():
                    table.setdefault(key, {})[label] = row
            else:
                table.setdefault(name, {})[label] = binomial_coverage(params, shards, path, sampling, args.threads,
                                                                      workdir)
    print("  MC coverage errors (%) at eps " + "/".join(f"{e:g}" for e in EPSILONS)
          + ", [68 % bootstrap interval], test split")
    for name, rows in table.items():
        for label, (err, lo, hi) in rows.items():
            cells = "  ".join(f"{100 * e:6.1f} [{100 * a:5.1f}, {100 * b:5.1f}]" for e, a, b in zip(err, lo, hi,
                                                                                               strict=True))
            print(f"  {name:<26}{label:>8}: {cells}")
        (shared_err, *_), (_, full_lo, full_hi) = rows["6 x 5"], rows["30 x 1"]
        inside = all(a <= e <= b for e, a, b in zip(shared_err, full_lo, full_hi, strict=True))
        print(f"  {'':<26}6 x 5 inside the 30-pass interval at every eps: {inside}")


# ---------------------------------------------------------------------------------------------- (e) pipeline time


def pipeline_time(benchmarks: Path) -> None:
    import pandas as pd

    files = sorted(benchmarks.glob("*.tsv"))
    if not files:
        print(f"\n(e) no {benchmarks}/*.tsv: run the pipeline first")
        return
    jobs = pd.DataFrame([{"job": f.stem, "seconds": float(pd.read_csv(f, sep="\t")["s"].iloc[-1])} for f in files])
    jobs = jobs.sort_values("seconds", ascending=False)
    print(f"\n(e) pipeline jobs ({benchmarks}): {len(jobs)} jobs, {jobs['seconds'].sum() / 60:.1f} min summed")
    for row in jobs.head(8).itertuples():
        print(f"  {row.job:<40}{row.seconds / 60:7.1f} min")
    logs = sorted((benchmarks.parent / ".snakemake" / "log").glob("*.snakemake.log"))
    if logs:
        stamps = [datetime.strptime(m, "%a %b %d %H:%M:%S %Y") for m in
                  re.findall(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$", logs[-1].read_text(), re.MULTILINE)]
        if len(stamps) > 1:
            wall = (stamps[-1] - stamps[0]).total_seconds()
            print(f"  wall time of the latest run ({logs[-1].name}): {wall / 60:.1f} min; "
                  f"summed job time / wall = {jobs['seconds'].sum() / wall:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", default=None, help="shard dir (default: generate fake shards)")
    ap.add_argument("--models", default=None, help="a pipeline run's data/models, for (d)'s trained models")
    ap.add_argument("--benchmarks", default="benchmarks", help="Snakemake's benchmark folder for (e)")
    ap.add_argument("--n", type=int, default=1500, help="galaxies of the fake shards")
    ap.add_argument("--steps", type=int, default=20, help="batches per timed epoch")
    ap.add_argument("--repeats", type=int, default=2, help="timed epochs per measurement (the best is kept)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mc-galaxies", type=int, default=256)
    ap.add_argument("--skip", default="", help="comma-separated sections to skip, e.g. c,d")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--worker-trunk", default="wide", help=argparse.SUPPRESS)
    ap.add_argument("--worker-precision", default="auto", help=argparse.SUPPRESS)
    ap.add_argument("--worker-feeds", default="memory", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    skip = set(args.skip.split(","))
    from gzmorph.runtime import policy_name

    auto = policy_name("auto", gpu=False)
    with tempfile.TemporaryDirectory(prefix="bench_speed.") as tmp:
        shards = ensure_shards(args, Path(tmp))
        print(f"shards {shards}; {args.threads} threads; {args.steps} steps of 64 per timed epoch; "
              f"auto precision here: {auto[0]} ({auto[1]})")
        if "a" not in skip or "b" not in skip:
            print(f"\n(a, b) training images/s{'':<18}{'float32':>10}{'auto':>10}{'auto/f32':>10}"
                  f"{'pipeline':>10}{'pipe/alone':>11}")
            for trunk in TRUNKS:
                f32 = collect(spawn(args, shards, trunk, "false", "memory", args.threads))["memory"]
                mixed = collect(spawn(args, shards, trunk, "auto", "memory,pipeline", args.threads))
                print(f"  {trunk + ' trunk':<40}{f32:>10.0f}{mixed['memory']:>10.0f}{mixed['memory'] / f32:>10.2f}"
                      f"{mixed['pipeline']:>10.0f}{mixed['pipeline'] / mixed['memory']:>11.2f}")
        if "c" not in skip:
            one = collect(spawn(args, shards, "wide", "auto", "memory", args.threads))["memory"]
            pair = [spawn(args, shards, "wide", "auto", "memory", 1) for _ in range(2)]
            rates = [collect(p)["memory"] for p in pair]
            print(f"\n(c) wide trunk, auto precision: one training on {args.threads} threads {one:.0f} images/s; two "
                  f"side by side on 1 thread each {rates[0]:.0f} + {rates[1]:.0f} = {sum(rates):.0f} images/s: "
                  f"side by side / one after the other = {sum(rates) / one:.2f}")
        if "d" not in skip:
            mc_section(args, Path(args.shards) if args.shards else shards, Path(tmp))
    if "e" not in skip:
        pipeline_time(Path(args.benchmarks))


if __name__ == "__main__":
    main()

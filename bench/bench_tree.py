"""The whole-tree model on the default run: per-question RMSE beside the binomial models, and prediction throughput.

    .venv/bin/python bench/bench_tree.py --model data/models/tree/sdss.keras [--shards data/shards/sdss]
        [--catalog data/catalogs/sdss.parquet] [--predictions results/predictions] [--passes 30] [--scales 1 4]

1. RMSE (test split, every question): the expected vote fraction of each question's first answer (mean over
   T passes of alpha_a / sum alpha) against k/N and against the simulator's true rho, on the galaxies with
   N >= 1 for that question.  For the questions under ``train.questions`` also on the binomial model's galaxies
   and cut (its ``results/predictions/<q>.parquet``, when present), beside that model's MC-mean rho.
2. Throughput: ``gzmorph predict --tree`` of the test split at 1x, and of the test split repeated 4x (the same
   shards listed 4 times in a copied manifest), galaxies x passes per second and peak RSS of the process
   (psutil, sampled every 10 ms), as ratios against 1x.  Peak memory at larger catalogs: bench_memory.py
   ``--stages predict_tree``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def rmse_table(params: dict, posteriors: Path, catalog_path: Path, predictions: Path) -> None:
    import pandas as pd

    from gzmorph import catalog
    from gzmorph.catalog import rho_column
    from gzmorph.evaluate import rmse
    from gzmorph.posterior import tree_expected_fractions
    from gzmorph.tree import get_tree
    from gzmorph.tree_catalog import load_concentrations

    cat = catalog.load(catalog_path).set_index("id_str")
    tree = get_tree(str(cat["tree"].iloc[0]))
    ids, alpha = load_concentrations(posteriors, tree)
    fractions = pd.DataFrame(tree_expected_fractions(alpha, tree), index=ids, columns=list(tree.answer_columns))
    rows = cat.loc[ids]
    print(f"{'question':<20}{'answer':<18}{'galaxies':>9}{'tree vs k/N':>12}{'tree vs rho':>12}"
          f"{'| binomial cut':>14}{'galaxies':>9}{'tree k/N':>9}{'binom k/N':>10}{'tree rho':>9}{'binom rho':>10}")
    for q in tree.questions:
        answer = str(params["train"]["questions"].get(q.name, {}).get("answer", q.answer_names[0]))
        col = q.column(answer)
        n = rows[list(q.answer_columns)].sum(axis=1).to_numpy()
        asked = n >= 1
        observed = rows[col].to_numpy()[asked] / n[asked]
        predicted = fractions[col].to_numpy()[asked]
        truth_col = rho_column(q.name, answer)
        truth = rows[truth_col].to_numpy()[asked] if truth_col in rows else np.full(asked.sum(), np.nan)
        line = (f"{q.name:<20}{answer:<18}{int(asked.sum()):>9}{rmse(predicted, observed):>12.3f}"
                f"{rmse(predicted, truth):>12.3f}")
        path = predictions / f"{q.name}.parquet"
        if q.name in params["train"]["questions"] and path.exists():
            pred = pd.read_parquet(path)
            rho = np.stack(pred["rho"].to_numpy()).mean(axis=1)
            k_n = pred["votes"].to_numpy() / pred["total_votes"].to_numpy()
            tree_rho = fractions.loc[pred["id_str"], col].to_numpy()
            true = cat.loc[pred["id_str"], truth_col].to_numpy() if truth_col in cat else np.full(len(pred), np.nan)
            line += (f"{'|':>3}{' ':>11}{len(pred):>9}{rmse(tree_rho, k_n):>9.3f}{rmse(rho, k_n):>10.3f}"
                     f"{rmse(tree_rho, true):>9.3f}{rmse(rho, true):>10.3f}")
        print(line, flush=True)


def repeated_shards(shard_dir: Path, out: Path, times: int) -> Path:
    """A shard folder whose test split lists the test shards ``times`` times (links, no copy of the data)."""
    manifest = json.loads((shard_dir / "manifest.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for r in range(times):
        for name in manifest["splits"]["test"]["files"]:
            link = out / f"r{r}-{name}"
            if not link.exists():
                os.symlink((shard_dir / name).resolve(), link)
            files.append(link.name)
    manifest["splits"]["test"] = {**manifest["splits"]["test"], "files": files,
                                  "n_galaxies": manifest["splits"]["test"]["n_galaxies"] * times}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def child(args: argparse.Namespace) -> None:
    import psutil

    from gzmorph import config, predict

    params = config.load(ROOT / "params.yaml")
    predict.load_model(args.model)
    print(json.dumps({"baseline": psutil.Process().memory_info().rss}), flush=True)
    start = time.perf_counter()
    summary = predict.predict_tree(params, args.model, args.out, shards=args.shards, split="test",
                                   sampling=predict.MCSampling(args.passes, 1), threads=args.threads, progress=False)
    print(json.dumps({"seconds": time.perf_counter() - start, **summary}), flush=True)


def measure(args: argparse.Namespace, shards: Path, out: Path) -> dict:
    import subprocess

    import psutil

    cmd = [sys.executable, __file__, "--child", "--model", str(args.model), "--shards", str(shards), "--out", str(out),
           "--passes", str(args.passes), "--threads", str(args.threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    peak, stop = [0], threading.Event()

    def sample() -> None:
        p = psutil.Process(proc.pid)
        while not stop.is_set():
            try:
                peak[0] = max(peak[0], p.memory_info().rss)
            except psutil.Error:
                pass
            time.sleep(0.01)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    stdout, stderr = proc.communicate()
    stop.set()
    t.join()
    if proc.returncode:
        raise SystemExit(f"predict --tree failed:\n{stderr[-3000:]}")
    lines = [json.loads(line) for line in stdout.strip().splitlines() if line.startswith("{")]
    return {"peak": peak[0], **lines[0], **lines[-1]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--shards", type=Path, default=Path("data/shards/sdss"))
    ap.add_argument("--catalog", type=Path, default=Path("data/catalogs/sdss.parquet"))
    ap.add_argument("--predictions", type=Path, default=Path("results/predictions"))
    ap.add_argument("--posteriors", type=Path, default=None, help="an existing posterior catalog of the test split "
                    "(default: the 1x throughput run's)")
    ap.add_argument("--passes", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--scales", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    from gzmorph import config

    params = config.load(ROOT / "params.yaml")
    with tempfile.TemporaryDirectory(prefix="bench_tree_") as tmp:
        tmp = Path(tmp)
        first = None
        print(f"predict --tree, test split, T = {args.passes}, {args.threads} threads; peak RSS (psutil, 10 ms)")
        print(f"{'scale':>5}{'galaxies':>10}{'s':>8}{'gal x passes/s':>16}{'peak MB':>9}{'above base MB':>15}"
              f"{'peak/1x':>9}{'above/1x':>10}")
        for s in args.scales:
            shards = args.shards if s == 1 else repeated_shards(args.shards, tmp / f"x{s}", s)
            r = measure(args, shards, tmp / f"posteriors-{s}.parquet")
            above = r["peak"] - r["baseline"]
            first = first or (r["peak"], max(above, 1))
            rate = r["n_galaxies"] * args.passes / r["seconds"]
            print(f"{s:>4}x{r['n_galaxies']:>10}{r['seconds']:>8.1f}{rate:>16.0f}"
                  f"{r['peak'] / 2**20:>9.0f}{above / 2**20:>15.0f}{r['peak'] / first[0]:>9.2f}"
                  f"{above / first[1]:>10.2f}", flush=True)
        posteriors = args.posteriors or tmp / f"posteriors-{args.scales[0]}.parquet"
        if args.posteriors is not None or args.scales[0] == 1:
            rmse_table(params, posteriors, args.catalog, args.predictions)


if __name__ == "__main__":
    main()

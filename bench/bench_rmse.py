"""RMSE of the MC-mean rho against the observed vote fraction k/N and against the true rho.

Beside each: one stochastic pass (T = 1, the paper's "without MC") and the deterministic network (rho_point).

Reads the default run's predictions and the training survey's catalog (which carries the simulator's
truth) and prints one row per question beside the paper's figures (Walmsley et al. 2020: 0.10 smooth,
0.15 bar).  Run after `snakemake` / `dvc repro`:  python bench/bench_rmse.py
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from gzmorph import catalog, config
from gzmorph.catalog import rho_column
from gzmorph.evaluate import rmse

PAPER_RMSE = {"smooth-or-featured": 0.10, "bar": 0.15}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    params = config.load(args.params)
    survey = params["train"]["survey"]
    cat = catalog.load(f"data/catalogs/{survey}.parquet").set_index("id_str")
    print(f"{'question':<20} {'galaxies':>8} {'RMSE vs k/N':>12} {'(T=1)':>7} {'(determ.)':>9} "
          f"{'RMSE vs true rho':>17} {'(T=1)':>7} {'(determ.)':>9} {'paper':>6}")
    for question, spec in params["train"]["questions"].items():
        pred = pd.read_parquet(f"results/predictions/{question}.parquet")
        rho = np.stack(pred["rho"].to_numpy())
        rho_mc, rho_t1 = rho.mean(axis=1), rho[:, 0]
        fraction = pred["votes"].to_numpy() / pred["total_votes"].to_numpy()
        truth = cat.loc[pred["id_str"], rho_column(question, spec["answer"])].to_numpy()
        point = pred["rho_point"].to_numpy()
        print(f"{question:<20} {len(pred):>8} {rmse(rho_mc, fraction):>12.3f} {rmse(rho_t1, fraction):>7.3f} "
              f"{rmse(point, fraction):>9.3f} {rmse(rho_mc, truth):>17.3f} {rmse(rho_t1, truth):>7.3f} "
              f"{rmse(point, truth):>9.3f} {PAPER_RMSE.get(question, float('nan')):>6.2f}")


if __name__ == "__main__":
    main()

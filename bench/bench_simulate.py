"""Benchmark the simulated survey: sky, votes and rendering speed (galaxies/second) per survey.

Run: ``.venv/bin/python bench/bench_simulate.py [--params params.yaml] [--n-render 192] [--full]``.
Renders ``--n-render`` galaxies of each survey at the configured image_size with 1 and 2 worker
processes (``--full``: every catalogued galaxy) into a temporary folder, and prints measured rates.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from gzmorph import config, simulate
from gzmorph.sim.population import sky_table


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--n-render", type=int, default=192, help="galaxies rendered per survey and thread count")
    ap.add_argument("--full", action="store_true", help="render every catalogued galaxy")
    args = ap.parse_args()
    params = config.load(args.params)
    size = params["simulate"]["image_size"]

    sky, t_sky = timed(sky_table, params)
    print(f"sky: {len(sky)} galaxies in {t_sky:.2f} s ({len(sky) / t_sky:,.0f} gal/s)")
    for survey in params["simulate"]["surveys"]:
        with tempfile.TemporaryDirectory() as tmp:
            cat, t_cat = timed(simulate.build_catalog, sky, params, survey, str(Path(tmp) / "x"))
            print(f"{survey}: catalog + votes for {len(cat)} galaxies in {t_cat:.2f} s "
                  f"({len(cat) / t_cat:,.0f} gal/s)")
            sub = cat if args.full else cat.iloc[: args.n_render]
            rates = {}
            for threads in (1, 2):
                out = Path(tmp) / f"t{threads}"
                fmt = params["simulate"]["surveys"][survey]["image_format"]
                sub = sub.assign(file_loc=[simulate.image_path(str(out), i, fmt) for i in sub["id_str"]])
                done, t = timed(simulate.render_images, sub, sky, params, survey, threads=threads,
                                progress=False)
                rates[threads] = done["rendered"] / t
                print(f"{survey}: rendered {done['rendered']} images of {size}x{size} with {threads} "
                      f"process(es) in {t:.1f} s: {rates[threads]:.1f} gal/s")
            print(f"{survey}: speed-up 2 vs 1 processes: {rates[2] / rates[1]:.2f}x")


if __name__ == "__main__":
    main()

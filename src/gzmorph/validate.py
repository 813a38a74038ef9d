"""``gzmorph validate``: check params files and catalogs without running anything."""

from __future__ import annotations

import argparse

from gzmorph import catalog, config


def run(args: argparse.Namespace) -> None:
    config.load(args.params)
    print(f"{', '.join(args.params or ['params.yaml'])}: valid")
    for path in args.catalogs:
        df = catalog.load(path)
        print(f"{path}: valid catalog of {len(df)} galaxies")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="validate params files and catalogs")
    config.add_params_argument(p)
    p.add_argument("catalogs", nargs="*", help="catalog parquet files to validate")
    p.set_defaults(func=run)

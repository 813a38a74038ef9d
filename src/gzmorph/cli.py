"""``gzmorph <stage> ...``: the command line every Snakemake rule and DVC stage calls.

Each stage module exposes ``register(subparsers)``, which adds its sub-command
and sets ``func`` to a callable taking the parsed arguments.  Errors a person
can fix (bad params, bad catalog) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from gzmorph import __version__
from gzmorph.catalog import CatalogError
from gzmorph.config import ConfigError

STAGES = ("simulate", "crossmatch", "shards", "validate")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gzmorph", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"gzmorph {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for stage in STAGES:
        importlib.import_module(f"gzmorph.{stage}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        args.func(args)
    except (ConfigError, CatalogError) as exc:
        print(f"gzmorph {args.stage}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

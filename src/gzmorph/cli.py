"""``gzmorph <stage> ...``: the command line every Snakemake rule and DVC stage calls.

Each stage module exposes ``register(subparsers)``, which adds its sub-command
and sets ``func`` to a callable taking the parsed arguments.  Only the stage
being run is imported, so a quick stage never pays for TensorFlow's import.
Errors a person can fix (bad params, bad catalog, missing input) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from gzmorph import __version__
from gzmorph.config import UserError

STAGES = {
    "simulate": "simulated surveys: sky truth, survey images and volunteer votes, example figure",
    "fetch": "real Galaxy Zoo catalogs and images: catalog, archives, images, gather, estimate",
    "crossmatch": "one-to-one sky match of two survey catalogs",
    "shards": "7:2:1 split and TFRecord shards of a survey",
    "train": "train the Bayesian CNN for one question",
    "predict": "MC-dropout posteriors on the test split",
    "evaluate": "calibration, metrics and figures of one question's posteriors",
    "evaluate-tree": "calibration, RMSE, confusion and galleries of every question of a whole-tree model",
    "metrics": "gather per-question metrics into results/metrics.json",
    "finetune": "fine-tune a trained model on new labels (rings); survey-to-survey transfer",
    "active-learning": "BALD against random acquisition: simulation runs and their summary",
    "validate": "validate params files and catalogs",
}


def build_parser(stage: str | None = None) -> argparse.ArgumentParser:
    """The parser with every stage listed; only ``stage`` (if given) gets its full arguments."""
    parser = argparse.ArgumentParser(prog="gzmorph", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"gzmorph {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name, help_text in STAGES.items():
        if name == stage:
            importlib.import_module(f"gzmorph.{name.replace('-', '_')}").register(sub)
        else:
            sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    stage = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(stage if stage in STAGES else None).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        args.func(args)
    except (UserError, FileNotFoundError) as exc:
        print(f"gzmorph {args.stage}: error: {exc}", file=sys.stderr)
        return 2
    except KeyError as exc:  # unknown question/answer/column: the message names it and what exists
        print(f"gzmorph {args.stage}: error: {exc.args[0]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

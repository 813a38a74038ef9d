"""``gzmorph metrics``: gather each question's metrics.json into one file for ``dvc metrics``.

``results/metrics.json`` maps question -> that question's metrics (see :mod:`gzmorph.evaluate`), so
``dvc metrics show`` lists them side by side and ``dvc metrics diff`` compares runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from gzmorph import io
from gzmorph.config import UserError


def merge_metrics(paths: list[str | Path]) -> dict[str, Any]:
    """{question: metrics} from per-question metrics.json files, keyed by their ``question`` field."""
    merged: dict[str, Any] = {}
    for path in paths:
        try:
            metrics = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise UserError(f"{path}: no such metrics file; run `gzmorph evaluate` first") from None
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: not valid JSON ({exc})") from None
        question = metrics.get("question")
        if not question:
            raise UserError(f"{path}: no 'question' field; not a gzmorph evaluate metrics file")
        if question in merged:
            raise UserError(f"{path}: question {question!r} appears twice")
        merged[question] = metrics
    return merged


def run(args: argparse.Namespace) -> None:
    io.write_json(args.out, merge_metrics(args.metrics))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("metrics", help="gather per-question metrics.json files into one")
    p.add_argument("metrics", nargs="+", help="per-question metrics.json files from `gzmorph evaluate`")
    p.add_argument("--out", required=True, help="combined metrics JSON (results/metrics.json)")
    p.set_defaults(func=run)

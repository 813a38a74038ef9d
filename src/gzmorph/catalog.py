"""Vote catalogs: one parquet per survey, validated on load.

Columns (the canonical catalog every stage reads):

- ``id_str`` (str, unique), ``ra``, ``dec`` (deg, finite), ``survey`` (str),
  ``tree`` (decision-tree name, see :mod:`gzmorph.tree`), ``file_loc`` (image path);
- per question ``<question>_total-votes`` and per answer ``<question>_<answer>``:
  non-negative integer vote counts, the answers summing to at most their total;
- optional truth for simulated data: columns starting ``truth_``, among them
  ``truth_rho_<question>_<answer>``, the typical volunteer's answer probability.

Totals and N.  ``<question>_total-votes`` is the total as published.  It can exceed the sum of
the question's answers: in the real GZ DECaLS ``gz_decals_volunteers_5`` catalog the answers of
``merging`` changed during the campaign, and its total also counts votes for answers no longer
listed (by up to ~30).  Such rows are real data and are kept as they are (the fetch reports count
them per question, :func:`total_excess`); a total *below* its answers is impossible and stops.
Downstream, N -- the number of trials of the binomial (one answer) or multinomial (all answers)
likelihood -- is :func:`answer_sum`, the volunteers who gave one of the listed answers, never the
published total: the shards store it as each question's ``<question>_total-votes`` feature
(:mod:`gzmorph.shards`), and the vote cuts (``min_total_votes``) and :func:`votes` use it too.

A bad catalog stops with one line naming the file, column and first bad row.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gzmorph.config import UserError
from gzmorph.tree import DecisionTree, Question, get_tree

BASE_COLUMNS = ("id_str", "ra", "dec", "survey", "tree", "file_loc")
TRUTH_PREFIX = "truth_"


class CatalogError(UserError):
    """A catalog breaks the canonical format; the message names file, column and row."""


def rho_column(question: str, answer: str) -> str:
    return f"{TRUTH_PREFIX}rho_{question}_{answer}"


def answer_sum(counts: pd.DataFrame | Mapping[str, Any], question: Question) -> np.ndarray:
    """N of the likelihood for ``question``: per galaxy, the sum of its answer counts.

    ``counts`` is anything indexed by column name (a catalog, a dict of arrays); integer counts give
    int64 (unchecked floats stay floats, so a bad cell is still reported by :func:`validate` in its own
    column).  This, not the published ``<question>_total-votes`` (which may be larger, see the module
    docstring), is the number of volunteers whose votes the model sees.
    """
    n = np.sum([np.asarray(counts[c]) for c in question.answer_columns], axis=0)
    return n.astype(np.int64) if n.dtype.kind in "biu" else n


def total_excess(df: pd.DataFrame, tree: DecisionTree) -> dict[str, dict[str, int]]:
    """Per question: rows whose published total exceeds the answer sum, and the largest excess."""
    out = {}
    for q in tree.questions:
        excess = df[q.total_column].to_numpy(np.int64) - answer_sum(df, q)
        over = excess > 0
        out[q.name] = {"rows": int(over.sum()), "max_excess": int(excess[over].max()) if over.any() else 0}
    return out


def _fail(path: str, column: str, row: int | None, what: str) -> CatalogError:
    where = f"column {column!r}" + (f", row {row}" if row is not None else "")
    return CatalogError(f"{path}: {where}: {what}")


def _show(value: object) -> str:
    """repr of a cell without numpy's type wrapper (``nan``, not ``np.float64(nan)``)."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def _first_bad(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def validate(df: pd.DataFrame, path: str = "<catalog>", tree: DecisionTree | None = None) -> DecisionTree:
    """Raise CatalogError on the first problem; return the catalog's decision tree."""
    for col in BASE_COLUMNS:
        if col not in df.columns:
            raise _fail(path, col, None, "required column is missing")
    if tree is None:
        trees = df["tree"].unique()
        if len(trees) > 1:
            raise _fail(path, "tree", _first_bad((df["tree"] != trees[0]).to_numpy()), "mixes decision trees")
        try:
            tree = get_tree(str(trees[0])) if len(trees) else get_tree("gz2")
        except KeyError as exc:
            raise _fail(path, "tree", 0, str(exc.args[0])) from None

    ids = df["id_str"]
    if ids.isna().any():
        raise _fail(path, "id_str", _first_bad(ids.isna().to_numpy()), "missing id")
    dup = ids.duplicated().to_numpy()
    if dup.any():
        row = _first_bad(dup)
        raise _fail(path, "id_str", row, f"duplicate id {_show(ids.iloc[row])}")

    for col, lo, hi in (("ra", 0.0, 360.0), ("dec", -90.0, 90.0)):
        try:
            values = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float)
        except (TypeError, ValueError):
            values = np.full(len(df), np.nan)
        bad = ~np.isfinite(values) | (values < lo) | (values > hi)
        if bad.any():
            row = _first_bad(bad)
            raise _fail(path, col, row, f"{_show(df[col].iloc[row])} is not a finite coordinate in [{lo:g}, {hi:g}]")

    for q in tree.questions:
        for col in (q.total_column, *q.answer_columns):
            if col not in df.columns:
                raise _fail(path, col, None, f"required vote column for tree {tree.name!r} is missing")
        counts = {}
        for col in (q.total_column, *q.answer_columns):
            values = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float)
            bad = ~np.isfinite(values) | (values < 0) | (values != np.round(values))
            if bad.any():
                row = _first_bad(bad)
                raise _fail(path, col, row, f"{_show(df[col].iloc[row])} is not a non-negative integer vote count")
            counts[col] = values.astype(np.int64)
        n = answer_sum(counts, q)
        # A larger total is real (answers retired during a campaign); a smaller one cannot be.
        bad = counts[q.total_column] < n
        if bad.any():
            row = _first_bad(bad)
            raise _fail(
                path, q.total_column, row,
                f"total {counts[q.total_column][row]} is below the sum of its answers {n[row]}",
            )
    return tree


def load(path: str | os.PathLike[str], tree: DecisionTree | None = None) -> pd.DataFrame:
    """Read and validate a catalog parquet; vote columns come back as int64."""
    path = Path(path)
    try:
        df = pd.read_parquet(path)
    except FileNotFoundError:
        raise CatalogError(f"{path}: no such catalog file") from None
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise CatalogError(f"{path}: not a readable parquet file ({type(exc).__name__}: {exc})") from None
    tree = validate(df, str(path), tree)
    return df.astype({c: "int64" for c in tree.vote_columns})


def votes(df: pd.DataFrame, tree: DecisionTree, question: str, answer: str) -> tuple[np.ndarray, np.ndarray]:
    """(k, N) for one answer: the counts a binomial likelihood needs (N = :func:`answer_sum`)."""
    q = tree.question(question)
    return df[q.column(answer)].to_numpy(np.int64), answer_sum(df, q)

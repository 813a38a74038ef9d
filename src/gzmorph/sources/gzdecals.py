"""Galaxy Zoo DECaLS DR5 (``gz_decals_volunteers_5.csv``/``.parquet``, Zenodo 4573248) to and from canonical.

The real file has 13 leading columns, then per question ``<q>_total-votes`` and per answer
``<q>_<a>``, ``<q>_<a>_fraction``, ``<q>_<a>_debiased``.  Counts may be written as floats
(``12.0``) and are empty for questions a galaxy was never asked.  The record's schema.md
calls the totals ``<q>_total``; both spellings are read.  A total may exceed the sum of its
answers (``merging``: votes for answers retired during the campaign); it is kept as published,
and N downstream is the answer sum (see :mod:`gzmorph.catalog`).  A total below its answers stops.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from gzmorph.catalog import CatalogError, answer_sum, validate
from gzmorph.sources import gz2
from gzmorph.tree import DECALS_DR5

LEADING_COLUMNS = ("iauname", "ra", "dec", "redshift", "elpetro_absmag_r", "sersic_nmgy_r", "petro_th50",
                   "petro_th90", "petro_theta", "upload_group", "active_learning_on", "in_gzd_ab", "png_loc")
REQUIRED_COLUMNS = ("iauname", "ra", "dec")
EXTRA_COLUMNS = ("png_loc", "petro_th90")  # kept in the canonical catalog: image lookup and cutout size
IAUNAME_PATTERN = r"J\d{6}\.\d{2}[+-]\d{6}\.\d"  # JHHMMSS.ss+DDMMSS.s
PARQUET_SUFFIXES = (".parquet", ".pq")

# Plausible values for the descriptive leading columns when the canonical catalog has none.
_DEFAULTS: dict[str, object] = {
    "redshift": 0.05, "elpetro_absmag_r": -20.5, "sersic_nmgy_r": 40.0, "petro_th50": 2.5, "petro_th90": 7.0,
    "petro_theta": 5.0, "upload_group": "pre_active", "active_learning_on": False, "in_gzd_ab": True,
}


def _cell_error(path: str, column: str, row: int, value: object, what: str) -> CatalogError:
    if isinstance(value, np.generic):
        value = value.item()  # show 3.5, not np.float64(3.5)
    return CatalogError(f"{path}: column {column!r}, row {row}: {value!r} {what}")


def _total_renames(columns: list[str]) -> dict[str, str]:
    """``<q>_total`` -> ``<q>_total-votes`` where only the schema.md spelling is present."""
    have = set(columns)
    return {f"{q.name}_total": q.total_column for q in DECALS_DR5.questions
            if q.total_column not in have and f"{q.name}_total" in have}


def _read_columns(path: str | os.PathLike[str], parquet: bool) -> list[str]:
    try:
        if parquet:
            return list(pq.read_schema(path).names)
        return list(pd.read_csv(path, nrows=0).columns)
    except FileNotFoundError:
        raise CatalogError(f"{path}: no such catalog file") from None
    except Exception as exc:  # pandas and pyarrow raise many types for a corrupt file
        kind = "parquet" if parquet else "CSV"
        raise CatalogError(f"{path}: not a readable {kind} file ({type(exc).__name__}: {exc})") from None


def _is_empty(values: pd.Series) -> np.ndarray:
    empty = values.isna().to_numpy(dtype=bool)
    if not pd.api.types.is_numeric_dtype(values.dtype):  # a parquet string column may hold ""
        empty = empty | (values.astype("string").str.strip() == "").fillna(True).to_numpy(dtype=bool)
    return empty


def _parse_votes(values: pd.Series, path: str, column: str) -> tuple[np.ndarray, np.ndarray]:
    """(counts int64 with empty cells as 0, empty mask); a non-empty non-count cell stops."""
    empty = _is_empty(values)
    num = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    bad = ~empty & (~np.isfinite(num) | (num < 0) | (num != np.round(num)))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise _cell_error(path, column, i + 1, values.iloc[i], "is not a non-negative integer vote count")
    return np.where(empty, 0, num).astype(np.int64), empty


def read_volunteers(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read ``gz_decals_volunteers_5`` (csv, csv.gz or parquet): leading columns and the vote counts.

    Totals come back as ``<q>_total-votes``, counts int64 (an empty cell is 0 votes where the
    question's total is empty or 0), ``ra``/``dec`` float, ``iauname`` str.
    """
    where = str(path)
    parquet = Path(path).suffix.lower() in PARQUET_SUFFIXES
    header = _read_columns(path, parquet)
    renames = _total_renames(header)
    back = {new: old for old, new in renames.items()}
    needed = [*REQUIRED_COLUMNS, *(back.get(c, c) for c in DECALS_DR5.vote_columns)]
    for col in needed:
        if col not in header:
            raise CatalogError(f"{where}: column {col!r}: required column is missing")
    # Skip the _fraction and _debiased columns: two thirds of the file.
    usecols = [c for c in LEADING_COLUMNS if c in header and c not in needed] + needed
    try:
        if parquet:
            df = pd.read_parquet(path, columns=usecols)
        else:
            df = pd.read_csv(path, usecols=usecols, dtype={c: str for c in ("iauname", "png_loc") if c in header})
    except Exception as exc:  # ragged CSV rows, truncated gzip, corrupt parquet pages
        raise CatalogError(f"{where}: not a readable file ({type(exc).__name__}: {exc})") from None
    df = df[[c for c in LEADING_COLUMNS if c in df.columns] + needed[len(REQUIRED_COLUMNS):]].rename(columns=renames)

    empty_id = _is_empty(df["iauname"])
    if empty_id.any():
        i = int(np.flatnonzero(empty_id)[0])
        raise _cell_error(where, "iauname", i + 1, df["iauname"].iloc[i], "is not an IAU name (empty)")
    df["iauname"] = df["iauname"].astype(str)
    gz2.parse_coordinates(df, where)

    counts: dict[str, np.ndarray] = {}
    for q in DECALS_DR5.questions:
        total_name = back.get(q.total_column, q.total_column)
        total, total_empty = _parse_votes(df[q.total_column], where, total_name)
        for col in q.answer_columns:
            k, empty = _parse_votes(df[col], where, col)
            # An empty answer only means 0 where the question was not asked; with votes cast it is lost data.
            lost = empty & (total > 0)
            if lost.any():
                i = int(np.flatnonzero(lost)[0])
                raise _cell_error(where, col, i + 1, df[col].iloc[i],
                                  f"is empty although the question has {total[i]} votes")
            counts[col] = k
        n = answer_sum(counts, q)
        # A total above its answers is real (retired answers) and kept; below them it is impossible.
        below = total < n
        if below.any():
            i = int(np.flatnonzero(below)[0])
            what = (f"is empty although its answers hold {n[i]} votes" if total_empty[i]
                    else f"is below the sum of its answers {n[i]}")
            raise _cell_error(where, total_name, i + 1, df[q.total_column].iloc[i], what)
        counts[q.total_column] = total
    return df.assign(**counts)


def to_canonical(raw: pd.DataFrame, *, survey: str, path: str = "<gzdecals>") -> pd.DataFrame:
    """The canonical catalog (tree ``decals-dr5``) from a :func:`read_volunteers` frame.

    ``png_loc`` and ``petro_th90`` are kept as extra columns when present.
    """
    raw = raw.rename(columns=_total_renames(list(raw.columns)))
    for col in (*REQUIRED_COLUMNS, *DECALS_DR5.vote_columns):
        if col not in raw.columns:
            raise CatalogError(f"{path}: column {col!r}: required column is missing")
    n = len(raw)
    out: dict[str, object] = {
        "id_str": raw["iauname"].astype(str).to_numpy(dtype=object),
        "ra": raw["ra"].to_numpy(dtype=float),
        "dec": raw["dec"].to_numpy(dtype=float),
        "survey": np.full(n, survey, dtype=object),
        "tree": np.full(n, DECALS_DR5.name, dtype=object),
        "file_loc": np.full(n, "", dtype=object),
    }
    out.update({c: raw[c].to_numpy() for c in DECALS_DR5.vote_columns})
    out.update({c: raw[c].to_numpy() for c in EXTRA_COLUMNS if c in raw.columns})
    df = pd.DataFrame(out)
    validate(df, path, DECALS_DR5)
    df["id_str"] = df["id_str"].astype(str)
    return df.astype({c: "int64" for c in DECALS_DR5.vote_columns})


def zip_member(iauname: str) -> str:
    """Path of a galaxy's PNG inside the DR5 zips: ``J###/<iauname>.png``."""
    return f"{iauname[:4]}/{iauname}.png"


def member_from_png_loc(png_loc: str) -> str:
    """The zip member named by a catalog ``png_loc``: its last two path components."""
    parts = [p for p in str(png_loc).replace("\\", "/").split("/") if p]
    if not parts:
        raise ValueError(f"png_loc {png_loc!r} names no file")
    if len(parts) == 1:  # a bare file name: the directory is implied by the iauname
        return zip_member(parts[0].removesuffix(".png"))
    return "/".join(parts[-2:])


def from_canonical(df: pd.DataFrame) -> pd.DataFrame:
    """A frame in the real ``gz_decals_volunteers_5`` layout from a canonical decals-dr5 catalog."""
    validate(df, "<canonical>", DECALS_DR5)
    ids = df["id_str"].astype(str).reset_index(drop=True)
    ok = ids.str.fullmatch(IAUNAME_PATTERN).to_numpy(dtype=bool)
    if not ok.all():
        i = int(np.flatnonzero(~ok)[0])
        raise _cell_error("<canonical>", "id_str", i, ids.iloc[i], "is not an IAU name like 'J094632.40+005103.6'")
    n = len(df)
    out: dict[str, object] = {"iauname": ids.to_numpy(dtype=object),
                              "ra": df["ra"].to_numpy(dtype=float), "dec": df["dec"].to_numpy(dtype=float)}
    for col, default in _DEFAULTS.items():
        out[col] = df[col].to_numpy() if col in df.columns else np.full(n, default)
    out["png_loc"] = ("dr5/" + ids.str[:4] + "/" + ids + ".png").to_numpy(dtype=object)  # vectorised zip_member
    for q in DECALS_DR5.questions:
        total = df[q.total_column].to_numpy(np.int64)
        out[q.total_column] = total
        for col in q.answer_columns:
            count = df[col].to_numpy(np.int64)
            fraction = np.round(np.divide(count, total, out=np.zeros(n), where=total > 0), 3)
            out[col] = count
            out[f"{col}_fraction"] = fraction
            out[f"{col}_debiased"] = fraction  # no debiasing for simulated votes
    return pd.DataFrame(out)


def filter_catalog(df: pd.DataFrame, *, min_total_votes: int,
                   question: str = "smooth-or-featured") -> tuple[pd.DataFrame, dict[str, int]]:
    """Rows with N >= ``min_total_votes`` for ``question``; same return shape as the GZ2 filter."""
    return gz2.filter_catalog(df, samples=None, min_total_votes=min_total_votes, question=question,
                              tree=DECALS_DR5)

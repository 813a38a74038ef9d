"""Galaxy Zoo 2 (Hart et al. 2016, ``gz2_hart16.csv``) to and from the canonical catalog.

The real file has nine leading columns, then six columns per answer for the 37 answers
(``<task>_<answer>_count`` ... ``_flag``), tasks in order t01..t11.  Only the raw ``_count``
columns feed the canonical catalog: the papers train on raw votes, not weighted or debiased
fractions.  ``from_canonical`` writes the same layout, so loopback servers can serve simulated
galaxies exactly as the real file looks.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Sequence

import astropy.units as u
import numpy as np
import pandas as pd
from astropy.coordinates import Angle

from gzmorph.catalog import CatalogError, answer_sum, validate
from gzmorph.tree import GZ2, DecisionTree, Question

LEADING_COLUMNS = ("dr7objid", "ra", "dec", "rastring", "decstring", "sample", "gz2_class",
                   "total_classifications", "total_votes")
REQUIRED_COLUMNS = ("dr7objid", "ra", "dec", "sample")  # the rest of the leading ones are descriptive
SAMPLES = ("original", "extra", "stripe82")
SUFFIXES = ("count", "weight", "fraction", "weighted_fraction", "debiased", "flag")
INT64_MAX = np.iinfo(np.int64).max


def _stem(q: Question, i: int) -> str:
    raw = q.answers[i].raw
    if raw is None:  # every GZ2 answer carries its Hart16 stem; guard against a tree edit
        raise ValueError(f"GZ2 answer {q.name}/{q.answers[i].name} has no Hart16 column stem")
    return raw


# The file orders tasks t01..t11; the tree orders questions as asked (t06 'odd' comes late).
FILE_QUESTIONS: tuple[Question, ...] = tuple(sorted(GZ2.questions, key=lambda q: _stem(q, 0)[:3]))
ANSWER_STEMS: tuple[str, ...] = tuple(_stem(q, i) for q in FILE_QUESTIONS for i in range(len(q.answers)))
COUNT_COLUMNS: tuple[str, ...] = tuple(f"{s}_count" for s in ANSWER_STEMS)
HART16_COLUMNS: tuple[str, ...] = LEADING_COLUMNS + tuple(f"{s}_{x}" for s in ANSWER_STEMS for x in SUFFIXES)


def _cell_error(path: str, column: str, row: int, value: object, what: str) -> CatalogError:
    """One line naming file, column and row (for files: the 1-based CSV data row, header not counted)."""
    if isinstance(value, np.generic):
        value = value.item()  # show 3, not np.int64(3)
    return CatalogError(f"{path}: column {column!r}, row {row}: {value!r} {what}")


def _missing(path: str, column: str, hint: str = "") -> CatalogError:
    return CatalogError(f"{path}: column {column!r}: required column is missing{hint}")


def _read_header(path: str | os.PathLike[str]) -> list[str]:
    try:
        return list(pd.read_csv(path, nrows=0).columns)
    except FileNotFoundError:
        raise CatalogError(f"{path}: no such catalog file") from None
    except (ValueError, OSError, EOFError, zlib.error) as exc:  # empty, bad gzip, undecodable
        raise CatalogError(f"{path}: not a readable CSV file ({type(exc).__name__}: {exc})") from None


def _read_csv(path: str | os.PathLike[str], **kwargs: object) -> pd.DataFrame:
    try:
        return pd.read_csv(path, **kwargs)  # type: ignore[call-overload]
    except (ValueError, OSError, EOFError, zlib.error) as exc:  # ragged rows, truncated gzip
        raise CatalogError(f"{path}: not a readable CSV file ({type(exc).__name__}: {exc})") from None


def parse_int_ids(values: pd.Series, path: str, column: str, *, row_offset: int = 1) -> np.ndarray:
    """Decimal integer strings -> int64, never through float (objids exceed 2**53).

    Errors report row ``position + row_offset``: 1 for CSV data rows, 0 for in-memory frames.
    """
    text = values.astype("string")
    ok = text.str.fullmatch(r"\d{1,19}").fillna(False).to_numpy(dtype=bool)
    if not ok.all():
        i = int(np.flatnonzero(~ok)[0])
        raise _cell_error(path, column, i + row_offset, values.iloc[i], "is not an integer object id")
    try:
        return text.astype("int64").to_numpy(np.int64)
    except (OverflowError, ValueError):
        # Only 19-digit ids above 2**63 - 1 get here; find the first for the message.
        big = text.str.len().to_numpy() == 19
        i = next(j for j in np.flatnonzero(big) if int(text.iloc[j]) > INT64_MAX)
        raise _cell_error(path, column, int(i) + row_offset, values.iloc[i], "does not fit in int64") from None


def parse_coordinates(df: pd.DataFrame, path: str) -> None:
    """ra/dec to float in place; a non-numeric, non-finite or out-of-range cell stops."""
    for col, lo, hi in (("ra", 0.0, 360.0), ("dec", -90.0, 90.0)):
        values = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float)
        bad = ~np.isfinite(values) | (values < lo) | (values > hi)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise _cell_error(path, col, i + 1, df[col].iloc[i], f"is not a finite coordinate in [{lo:g}, {hi:g}]")
        df[col] = values


def _parse_counts(values: pd.Series, path: str, column: str) -> np.ndarray:
    if pd.api.types.is_integer_dtype(values.dtype):  # the common case: pandas already parsed clean ints
        counts = values.to_numpy(np.int64)
        bad = counts < 0
    else:
        num = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
        bad = ~np.isfinite(num) | (num < 0) | (num != np.round(num))
        counts = np.where(bad, 0, num).astype(np.int64)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise _cell_error(path, column, i + 1, values.iloc[i], "is not a non-negative integer vote count")
    return counts


def read_hart16(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read ``gz2_hart16.csv[.gz]``: leading columns plus the 37 ``_count`` columns.

    ``dr7objid`` comes back int64 (exact), ``ra``/``dec`` float, counts int64.
    """
    where = str(path)
    header = _read_header(path)
    for col in (*REQUIRED_COLUMNS, *COUNT_COLUMNS):
        if col not in header:
            raise _missing(where, col)
    # usecols skips the 185 weighted/debiased columns: most of the parse cost of the real file.
    usecols = [c for c in LEADING_COLUMNS if c in header] + list(COUNT_COLUMNS)
    text_cols = {c: str for c in ("dr7objid", "rastring", "decstring", "sample", "gz2_class") if c in header}
    df = _read_csv(path, usecols=usecols, dtype=text_cols)
    df = df[usecols]  # usecols keeps file order; fix ours so output does not depend on the file
    df["dr7objid"] = parse_int_ids(df["dr7objid"], where, "dr7objid")
    parse_coordinates(df, where)
    counts = {col: _parse_counts(df[col], where, col) for col in COUNT_COLUMNS}
    return df.assign(**counts)


def to_canonical(raw: pd.DataFrame, *, survey: str, path: str = "<gz2>") -> pd.DataFrame:
    """The canonical catalog (tree ``gz2``) from a :func:`read_hart16` frame; ``sample`` kept as an extra."""
    for col in ("dr7objid", "ra", "dec", *COUNT_COLUMNS):
        if col not in raw.columns:
            raise _missing(path, col)
    ids = raw["dr7objid"]
    if pd.api.types.is_float_dtype(ids.dtype):
        raise CatalogError(f"{path}: column 'dr7objid': read as float, which corrupts ids above 2**53; "
                           "read it as int64 (see read_hart16)")
    if pd.api.types.is_integer_dtype(ids.dtype):
        objid = ids.to_numpy(np.int64)
    else:
        objid = parse_int_ids(ids.reset_index(drop=True), path, "dr7objid", row_offset=0)
    n = len(raw)
    out: dict[str, object] = {
        "id_str": objid.astype(str).astype(object),
        "ra": raw["ra"].to_numpy(dtype=float),
        "dec": raw["dec"].to_numpy(dtype=float),
        "survey": np.full(n, survey, dtype=object),
        "tree": np.full(n, GZ2.name, dtype=object),
        "file_loc": np.full(n, "", dtype=object),
    }
    for q in GZ2.questions:
        answers = dict(zip(q.answer_columns, (raw[f"{_stem(q, i)}_count"].to_numpy() for i in range(len(q.answers))),
                           strict=True))
        out[q.total_column] = answer_sum(answers, q)  # Hart16 publishes no per-task total
        out.update(answers)
    if "sample" in raw.columns:
        out["sample"] = raw["sample"].astype(str).to_numpy()
    df = pd.DataFrame(out)
    validate(df, path, GZ2)
    df["id_str"] = df["id_str"].astype(str)
    return df.astype({c: "int64" for c in GZ2.vote_columns})


def _argmax(df: pd.DataFrame, question: str) -> np.ndarray:
    q = GZ2.question(question)
    return np.argmax(np.stack([df[c].to_numpy(np.int64) for c in q.answer_columns], axis=1), axis=1)


def _gz2_class(df: pd.DataFrame) -> np.ndarray:
    """A plausible Willett+13 style class (``Ei``, ``Ser``, ``SBb``, ``A``) from the majority votes."""
    kind = _argmax(df, "smooth-or-featured")
    elliptical = np.char.add("E", np.array(["r", "i", "c"])[_argmax(df, "how-rounded")])
    edge_on = np.char.add("Se", np.array(["r", "b", "n"])[_argmax(df, "edge-on-bulge")])
    bar_yes = df["bar_yes"].to_numpy() > df["bar_no"].to_numpy()
    face_on = np.char.add(np.where(bar_yes, "SB", "S"), np.array(["d", "c", "b", "a"])[_argmax(df, "bulge-size")])
    is_edge = df["disk-edge-on_yes"].to_numpy() > df["disk-edge-on_no"].to_numpy()
    disk = np.where(is_edge, edge_on, face_on)
    return np.where(kind == 2, "A", np.where(kind == 0, elliptical, disk)).astype(object)


def from_canonical(df: pd.DataFrame) -> pd.DataFrame:
    """A frame in the real Hart16 layout (all 231 columns, real order) from a canonical gz2 catalog."""
    validate(df, "<canonical>", GZ2)
    ids = df["id_str"].astype(str).reset_index(drop=True)
    objid = parse_int_ids(ids, "<canonical>", "id_str", row_offset=0)  # canonical rows are 0-based
    ra = df["ra"].to_numpy(dtype=float)
    dec = df["dec"].to_numpy(dtype=float)
    n = len(df)
    counts = {c: df[c].to_numpy(np.int64) for c in GZ2.vote_columns}
    sample = df["sample"].astype(str).to_numpy() if "sample" in df.columns else np.full(n, "original", dtype=object)
    out: dict[str, object] = {
        "dr7objid": objid,
        "ra": ra,
        "dec": dec,
        "rastring": Angle(ra, u.deg).to_string(unit=u.hour, sep=":", precision=2, pad=True),
        "decstring": Angle(dec, u.deg).to_string(unit=u.deg, sep=":", precision=1, pad=True, alwayssign=True),
        "sample": sample,
        "gz2_class": _gz2_class(df),
        "total_classifications": counts[GZ2.question("smooth-or-featured").total_column],
        "total_votes": np.sum(np.stack([counts[c] for c in GZ2.answer_columns]), axis=0),
    }
    for q in FILE_QUESTIONS:
        total = answer_sum(counts, q)  # Hart16 fractions are over the task's answers
        for i, col in enumerate(q.answer_columns):
            count = counts[col]
            fraction = np.round(np.divide(count, total, out=np.zeros(n), where=total > 0), 3)
            stem = _stem(q, i)
            out[f"{stem}_count"] = count
            out[f"{stem}_weight"] = count.astype(float)  # no per-user weights for simulated votes
            out[f"{stem}_fraction"] = fraction
            out[f"{stem}_weighted_fraction"] = fraction
            out[f"{stem}_debiased"] = fraction
            out[f"{stem}_flag"] = np.zeros(n, dtype=np.int64)
    result = pd.DataFrame(out)
    assert tuple(result.columns) == HART16_COLUMNS
    return result


def filter_catalog(df: pd.DataFrame, *, samples: Sequence[str] | None, min_total_votes: int,
                   question: str = "smooth-or-featured", tree: DecisionTree = GZ2
                   ) -> tuple[pd.DataFrame, dict[str, int]]:
    """Rows in ``samples`` (None = all) with N >= ``min_total_votes`` for ``question``.

    N is the sum of the question's answers (:func:`gzmorph.catalog.answer_sum`), as in the training
    cut.  Returns the kept rows (new index) and how many rows each filter dropped; a row failing both
    counts under ``sample`` only, so the numbers add up to the rows removed.
    """
    try:
        q = tree.question(question)
    except KeyError as exc:
        raise CatalogError(f"<catalog>: {exc.args[0]}") from None
    for col in q.answer_columns:
        if col not in df.columns:
            raise _missing("<catalog>", col)
    in_sample = np.ones(len(df), dtype=bool)
    if samples is not None:
        wanted = [samples] if isinstance(samples, str) else list(samples)
        unknown = sorted(set(wanted) - set(SAMPLES))
        if unknown:
            raise CatalogError(f"unknown GZ2 sample(s) {unknown}; known samples: {list(SAMPLES)}")
        if "sample" not in df.columns:
            raise _missing("<catalog>", "sample", " (needed to filter by sample)")
        in_sample = df["sample"].isin(wanted).to_numpy(dtype=bool)
    enough = answer_sum(df, q) >= min_total_votes
    keep = in_sample & enough
    dropped = {"sample": int((~in_sample).sum()), "min_total_votes": int((in_sample & ~enough).sum())}
    return df.loc[keep].reset_index(drop=True), dropped


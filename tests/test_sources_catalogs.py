"""Readers and writers of the real GZ2 (Hart16) and GZ DECaLS DR5 catalog formats."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _fake_catalog import fake_votes

from gzmorph.catalog import CatalogError, answer_sum, total_excess, validate
from gzmorph.catalog import votes as catalog_votes
from gzmorph.sim.observe import iau_names
from gzmorph.sources import gz2, gzdecals
from gzmorph.tree import DECALS_DR5, GZ2

# Typed from the Hart16 catalog description (facts.md), not from gzmorph.tree, so a wrong stem in the
# tree shows up here.  File order: t01..t11, answers in a-number order except a38 after a24.
HART16_STEMS = [
    "t01_smooth_or_features_a01_smooth", "t01_smooth_or_features_a02_features_or_disk",
    "t01_smooth_or_features_a03_star_or_artifact",
    "t02_edgeon_a04_yes", "t02_edgeon_a05_no",
    "t03_bar_a06_bar", "t03_bar_a07_no_bar",
    "t04_spiral_a08_spiral", "t04_spiral_a09_no_spiral",
    "t05_bulge_prominence_a10_no_bulge", "t05_bulge_prominence_a11_just_noticeable",
    "t05_bulge_prominence_a12_obvious", "t05_bulge_prominence_a13_dominant",
    "t06_odd_a14_yes", "t06_odd_a15_no",
    "t07_rounded_a16_completely_round", "t07_rounded_a17_in_between", "t07_rounded_a18_cigar_shaped",
    "t08_odd_feature_a19_ring", "t08_odd_feature_a20_lens_or_arc", "t08_odd_feature_a21_disturbed",
    "t08_odd_feature_a22_irregular", "t08_odd_feature_a23_other", "t08_odd_feature_a24_merger",
    "t08_odd_feature_a38_dust_lane",
    "t09_bulge_shape_a25_rounded", "t09_bulge_shape_a26_boxy", "t09_bulge_shape_a27_no_bulge",
    "t10_arms_winding_a28_tight", "t10_arms_winding_a29_medium", "t10_arms_winding_a30_loose",
    "t11_arms_number_a31_1", "t11_arms_number_a32_2", "t11_arms_number_a33_3", "t11_arms_number_a34_4",
    "t11_arms_number_a36_more_than_4", "t11_arms_number_a37_cant_tell",
]
HART16_LEADING = ["dr7objid", "ra", "dec", "rastring", "decstring", "sample", "gz2_class", "total_classifications",
                  "total_votes"]
SUFFIXES = ["count", "weight", "fraction", "weighted_fraction", "debiased", "flag"]

BIG_OBJID = 588015509806252176  # > 2**53: float64 would turn it into ...2176 -> ...2176 +/- 16
# Three galaxies: leading cells, then the 37 counts in file order.
HART16_ROWS = [
    (f"{BIG_OBJID},179.689293,-0.373138,11:58:45.43,-00:22:23.3,original,Sc+t,6,703",
     list(range(1, 38))),  # every answer a distinct count: a misplaced column cannot hide
    ("587732591714893851,179.709,0.6789,11:58:50.16,+00:40:44.0,stripe82,Ei,4,7",
     [3, 1, 0, 0, 1, 0, 1, 1, 0, 0, 1, 0, 0, 0, 4, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 1, 0, 0, 0, 0]),
    ("588009368545984617,0.000425,-10.3738,00:00:00.10,-10:22:25.7,extra,A,45,46",
     [20, 0, 25, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
]


def hart16_text(rows: list[tuple[str, list[int]]] = HART16_ROWS, drop: str | None = None,
                cell: tuple[int, str, str] | None = None) -> str:
    """The CSV text; ``drop`` removes one answer's six columns, ``cell`` = (row, column, text) overrides a cell."""
    header = HART16_LEADING + [f"{s}_{x}" for s in HART16_STEMS for x in SUFFIXES]
    lines = []
    for leading, counts in rows:
        values = leading.split(",")
        for k in counts:
            values += [str(k), f"{k:.1f}", "0.5", "0.5", "0.5", "0"]
        lines.append(values)
    if cell is not None:
        lines[cell[0] - 1][header.index(cell[1])] = cell[2]
    if drop is not None:
        keep = [i for i, c in enumerate(header) if not c.startswith(drop + "_")]
        header = [header[i] for i in keep]
        lines = [[v[i] for i in keep] for v in lines]
    return "\n".join(",".join(v) for v in [header, *lines]) + "\n"


def write(path: Path, text: str) -> Path:
    if path.suffix == ".gz":
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


def canonical(tree, n: int, seed: int = 0) -> pd.DataFrame:
    """A small canonical catalog with random valid votes and survey-style ids."""
    rng = np.random.default_rng(seed)
    ra, dec = rng.uniform(0, 360, n), rng.uniform(-30, 60, n)
    ids = ([str(1237645_000_000_000_000 + 1_000_003 * i + 7) for i in range(n)] if tree is GZ2
           else list(iau_names(ra, dec)))
    base = pd.DataFrame({"id_str": ids, "ra": ra, "dec": dec, "survey": "sim", "tree": tree.name, "file_loc": ""})
    votes = fake_votes(rng, tree, n)
    return pd.concat([base, pd.DataFrame({c: votes[c] for c in tree.vote_columns})], axis=1)


# ---------------------------------------------------------------------------------------------- GZ2


def test_hart16_layout_matches_the_real_file():
    assert gz2.HART16_COLUMNS == tuple(HART16_LEADING + [f"{s}_{x}" for s in HART16_STEMS for x in SUFFIXES])
    assert len(gz2.HART16_COLUMNS) == 9 + 37 * 6
    assert gz2.COUNT_COLUMNS == tuple(f"{s}_count" for s in HART16_STEMS)


@pytest.mark.parametrize("name", ["gz2_hart16.csv", "gz2_hart16.csv.gz"])
def test_read_hart16_known_counts(tmp_path, name):
    path = write(tmp_path / name, hart16_text())
    raw = gz2.read_hart16(path)
    assert len(raw) == 3 and raw["dr7objid"].dtype == np.int64
    assert list(raw.columns) == HART16_LEADING + [f"{s}_count" for s in HART16_STEMS]  # no weights read
    cat = gz2.to_canonical(raw, survey="sdss", path=str(path))
    assert validate(cat, "x") is GZ2
    assert list(cat.columns[:6]) == ["id_str", "ra", "dec", "survey", "tree", "file_loc"]
    first = cat.iloc[0]
    assert first["id_str"] == str(BIG_OBJID)
    assert (first["ra"], first["dec"]) == (179.689293, -0.373138)
    assert (first["survey"], first["tree"], first["file_loc"], first["sample"]) == ("sdss", "gz2", "", "original")
    # Row 1 counts equal their position in the file (1..37).
    expected = {
        "smooth-or-featured_smooth": 1, "smooth-or-featured_artifact": 3, "smooth-or-featured_total-votes": 6,
        "disk-edge-on_no": 5, "bar_yes": 6, "has-spiral-arms_no": 9, "bulge-size_dominant": 13,
        "bulge-size_total-votes": 10 + 11 + 12 + 13, "something-odd_yes": 14, "something-odd_total-votes": 29,
        "how-rounded_cigar-shaped": 18, "odd-feature_ring": 19, "odd-feature_merger": 24,
        "odd-feature_dust-lane": 25, "odd-feature_total-votes": sum(range(19, 26)), "edge-on-bulge_rounded": 26,
        "edge-on-bulge_none": 28, "spiral-winding_loose": 31, "spiral-arm-count_1": 32,
        "spiral-arm-count_more-than-4": 36, "spiral-arm-count_cant-tell": 37,
        "spiral-arm-count_total-votes": sum(range(32, 38)),
    }
    assert {c: int(first[c]) for c in expected} == expected
    assert cat["sample"].tolist() == ["original", "stripe82", "extra"]
    assert cat["smooth-or-featured_total-votes"].tolist() == [6, 4, 45]
    assert cat["how-rounded_completely-round"].tolist() == [16, 1, 1]
    assert cat["id_str"].tolist() == [str(BIG_OBJID), "587732591714893851", "588009368545984617"]
    assert all(cat[c].dtype == np.int64 for c in GZ2.vote_columns)


def test_objid_precision_is_exact(tmp_path):
    assert float(BIG_OBJID) != BIG_OBJID  # the reason it must never pass through float
    raw = gz2.read_hart16(write(tmp_path / "h.csv", hart16_text()))
    assert int(raw["dr7objid"].iloc[0]) == BIG_OBJID
    assert gz2.to_canonical(raw, survey="sdss")["id_str"].iloc[0] == "588015509806252176"
    floats = raw.astype({"dr7objid": float})
    with pytest.raises(CatalogError, match=r"<gz2>: column 'dr7objid': read as float"):
        gz2.to_canonical(floats, survey="sdss")


@pytest.mark.parametrize("compression", ["csv", "csv.gz"])
def test_gz2_round_trip_through_the_real_layout(tmp_path, compression):
    original = canonical(GZ2, 40)
    original["sample"] = np.where(np.arange(40) % 3 == 0, "extra", "original")
    hart = gz2.from_canonical(original)
    assert tuple(hart.columns) == gz2.HART16_COLUMNS
    assert all(re.fullmatch(r"\d\d:\d\d:\d\d\.\d\d", s) for s in hart["rastring"])
    assert all(re.fullmatch(r"[+-]\d\d:\d\d:\d\d\.\d", s) for s in hart["decstring"])
    assert all(re.fullmatch(r"A|E[ric]|Se[rbn]|SB?[dcba]", s) for s in hart["gz2_class"])
    assert hart["total_classifications"].tolist() == original["smooth-or-featured_total-votes"].tolist()
    assert hart["total_votes"].tolist() == original[list(GZ2.answer_columns)].sum(axis=1).tolist()
    total = original["bar_total-votes"].to_numpy()
    expected = np.round(np.where(total > 0, original["bar_yes"] / np.maximum(total, 1), 0.0), 3)
    np.testing.assert_array_equal(hart["t03_bar_a06_bar_fraction"], expected)
    assert (hart["t03_bar_a06_bar_flag"] == 0).all()

    path = tmp_path / f"gz2_hart16.{compression}"
    hart.to_csv(path, index=False)
    back = gz2.to_canonical(gz2.read_hart16(path), survey="sim")
    assert back["sample"].tolist() == original["sample"].tolist()
    pd.testing.assert_frame_equal(back.drop(columns="sample"), original.drop(columns="sample"), check_dtype=False)
    assert all(back[c].dtype == np.int64 for c in GZ2.vote_columns)


def test_gz2_from_canonical_defaults_sample_and_rejects_non_integer_ids():
    df = canonical(GZ2, 3)
    assert gz2.from_canonical(df)["sample"].tolist() == ["original"] * 3
    df.loc[1, "id_str"] = "J094632.40+005103.6"
    with pytest.raises(CatalogError, match=r"column 'id_str', row 1: 'J094632.40\+005103.6' is not an integer"):
        gz2.from_canonical(df)


@pytest.mark.parametrize(("drop", "cell", "message"), [
    ("t03_bar_a06_bar", None, "column 't03_bar_a06_bar_count': required column is missing"),
    (None, (2, "t03_bar_a06_bar_count", "x"), "column 't03_bar_a06_bar_count', row 2: 'x' is not a non-negative"),
    (None, (3, "t11_arms_number_a37_cant_tell_count", "2.5"), "column 't11_arms_number_a37_cant_tell_count', row 3"),
    (None, (1, "t06_odd_a14_yes_count", "-1"), "column 't06_odd_a14_yes_count', row 1: -1 is not"),
    (None, (3, "dr7objid", "58800936854598461x"), "column 'dr7objid', row 3: '58800936854598461x' is not an integer"),
    (None, (2, "dr7objid", "9999999999999999999"), "column 'dr7objid', row 2: '9999999999999999999' does not fit"),
    (None, (2, "ra", "inf"), "column 'ra', row 2: inf is not a finite coordinate"),
    (None, (3, "dec", "north"), "column 'dec', row 3: 'north' is not a finite coordinate"),
])
def test_hart16_errors_name_file_column_and_row(tmp_path, drop, cell, message):
    path = write(tmp_path / "gz2_hart16.csv.gz", hart16_text(drop=drop, cell=cell))
    with pytest.raises(CatalogError) as err:
        gz2.read_hart16(path)
    assert str(err.value).startswith(f"{path}: ")
    assert message in str(err.value)


def test_hart16_unreadable_files(tmp_path):
    with pytest.raises(CatalogError, match="no such catalog file"):
        gz2.read_hart16(tmp_path / "absent.csv")
    (tmp_path / "bad.csv.gz").write_bytes(b"not gzip at all")
    with pytest.raises(CatalogError, match="not a readable CSV file"):
        gz2.read_hart16(tmp_path / "bad.csv.gz")


def test_gz2_filter_catalog_counts_what_each_filter_drops(tmp_path):
    cat = gz2.to_canonical(gz2.read_hart16(write(tmp_path / "h.csv", hart16_text())), survey="sdss")
    # totals: original 6, stripe82 4, extra 45
    kept, dropped = gz2.filter_catalog(cat, samples=("original", "extra"), min_total_votes=10)
    assert kept["id_str"].tolist() == ["588009368545984617"] and kept.index.tolist() == [0]
    assert dropped == {"sample": 1, "min_total_votes": 1}
    kept, dropped = gz2.filter_catalog(cat, samples=None, min_total_votes=5)
    assert kept["sample"].tolist() == ["original", "extra"] and dropped == {"sample": 0, "min_total_votes": 1}
    kept, dropped = gz2.filter_catalog(cat, samples=["stripe82"], min_total_votes=0, question="has-spiral-arms")
    assert len(kept) == 1 and dropped == {"sample": 2, "min_total_votes": 0}
    kept, dropped = gz2.filter_catalog(cat, samples=None, min_total_votes=1, question="has-spiral-arms")
    assert kept["sample"].tolist() == ["original", "stripe82"] and dropped["min_total_votes"] == 1
    with pytest.raises(CatalogError, match=r"unknown GZ2 sample\(s\) \['main'\]; known samples: "
                                           r"\['original', 'extra', 'stripe82'\]"):
        gz2.filter_catalog(cat, samples=["original", "main"], min_total_votes=0)


# ------------------------------------------------------------------------------------------- DECaLS


def decals_text(rows: list[dict[str, float]], total_name: str = "total-votes",
                blank: tuple[int, str] | None = None, totals: dict[tuple[int, str], int] | None = None) -> str:
    """A volunteers CSV: counts written as floats (``12.0``) and questions nobody answered left empty.

    Totals are the answer sums unless ``totals`` gives one for (1-based row, question), as the real
    file's ``merging`` totals that also count answers retired during the campaign.
    """
    totals = totals or {}
    header = list(gzdecals.LEADING_COLUMNS)
    for q in DECALS_DR5.questions:
        header.append(f"{q.name}_{total_name}")
        header += [f"{c}{x}" for c in q.answer_columns for x in ("", "_fraction", "_debiased")]
    lines = [",".join(header)]
    for r, votes in enumerate(rows, start=1):
        name = votes["iauname"]
        cells = {"iauname": name, "ra": votes["ra"], "dec": votes["dec"], "redshift": 0.03, "png_loc":
                 f"/raid/decals/dr5/png/{name[:4]}/{name}.png"}
        for q in DECALS_DR5.questions:
            total = totals.get((r, q.name), sum(votes.get(c, 0) for c in q.answer_columns))
            if total == 0:
                continue  # never asked: empty cells, as in the real file
            cells[f"{q.name}_{total_name}"] = f"{total:.1f}"
            for c in q.answer_columns:
                cells[c] = f"{votes.get(c, 0):.1f}"
                cells[f"{c}_fraction"] = f"{votes.get(c, 0) / total:.3f}"
        if blank is not None and blank[0] == r:
            cells[blank[1]] = ""
        lines.append(",".join(str(cells.get(h, "")) for h in header))
    return "\n".join(lines) + "\n"


DECALS_ROWS = [
    {"iauname": "J094632.40+005103.6", "ra": 146.635, "dec": 0.851, "smooth-or-featured_smooth": 12,
     "smooth-or-featured_featured-or-disk": 30, "smooth-or-featured_artifact": 1, "disk-edge-on_no": 27,
     "disk-edge-on_yes": 3, "bar_weak": 10, "bar_no": 17, "has-spiral-arms_yes": 20, "has-spiral-arms_no": 7,
     "bulge-size_small": 27, "spiral-winding_tight": 20, "spiral-arm-count_2": 15, "spiral-arm-count_cant-tell": 5,
     "how-rounded_round": 12, "merging_none": 40, "merging_merger": 3},
    {"iauname": "J000000.80-004200.0", "ra": 0.00333, "dec": -0.7, "smooth-or-featured_smooth": 5,
     "how-rounded_cigar-shaped": 5, "merging_none": 5},
]


def test_read_volunteers_known_counts_floats_and_empty_cells(tmp_path):
    path = write(tmp_path / "gz_decals_volunteers_5.csv", decals_text(DECALS_ROWS))
    raw = gzdecals.read_volunteers(path)
    cat = gzdecals.to_canonical(raw, survey="decals", path=str(path))
    assert validate(cat) is DECALS_DR5
    assert cat["id_str"].tolist() == ["J094632.40+005103.6", "J000000.80-004200.0"]
    assert cat["ra"].tolist() == [146.635, 0.00333] and cat["tree"].tolist() == ["decals-dr5"] * 2
    assert cat["png_loc"].iloc[0] == "/raid/decals/dr5/png/J094/J094632.40+005103.6.png"
    assert cat["petro_th90"].isna().all()  # present but empty in this file
    assert cat["smooth-or-featured_total-votes"].tolist() == [43, 5]
    assert cat["bar_total-votes"].tolist() == [27, 0]  # empty in row 2: never asked
    assert cat["bar_weak"].tolist() == [10, 0] and cat["spiral-arm-count_2"].tolist() == [15, 0]
    assert cat["how-rounded_cigar-shaped"].tolist() == [0, 5] and cat["merging_merger"].tolist() == [3, 0]
    assert all(cat[c].dtype == np.int64 for c in DECALS_DR5.vote_columns)
    assert set(cat.columns) == {"id_str", "ra", "dec", "survey", "tree", "file_loc",
                                *DECALS_DR5.vote_columns, "png_loc", "petro_th90"}


def test_read_volunteers_accepts_schema_md_total_names(tmp_path):
    real = gzdecals.read_volunteers(write(tmp_path / "a.csv", decals_text(DECALS_ROWS)))
    schema = gzdecals.read_volunteers(write(tmp_path / "b.csv", decals_text(DECALS_ROWS, total_name="total")))
    pd.testing.assert_frame_equal(schema, real)
    assert "bar_total-votes" in schema.columns and "bar_total" not in schema.columns


@pytest.mark.parametrize(("blank", "message"), [
    ((1, "bar_weak"), "column 'bar_weak', row 1: nan is empty although the question has 27 votes"),
    ((2, "iauname"), "column 'iauname', row 2: nan is not an IAU name"),
    # A total left empty while its answers hold votes: it cannot be below them.
    ((1, "bar_total-votes"), "column 'bar_total-votes', row 1: nan is empty although its answers hold 27 votes"),
])
def test_volunteers_empty_cells_that_are_errors(tmp_path, blank, message):
    path = write(tmp_path / "v.csv", decals_text(DECALS_ROWS, blank=blank))
    with pytest.raises(CatalogError) as err:
        gzdecals.read_volunteers(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)


# Shaped like rows of the real gz_decals_volunteers_5: the merging answers sum to 32 in row 3, and its
# published total, 35, also counts votes for answers retired during the campaign (excesses up to ~30 occur).
REAL_ROWS = DECALS_ROWS + [
    {"iauname": "J101010.10+101010.1", "ra": 152.542, "dec": 10.169, "smooth-or-featured_smooth": 20,
     "smooth-or-featured_featured-or-disk": 15, "disk-edge-on_no": 15, "bar_no": 15, "has-spiral-arms_no": 15,
     "bulge-size_moderate": 15, "how-rounded_in-between": 20, "merging_none": 25, "merging_minor-disturbance": 5,
     "merging_major-disturbance": 1, "merging_merger": 1},
]
REAL_TOTALS = {(1, "merging"): 73, (3, "merging"): 35}  # row 1: answers 43, published total 73 (+30)


@pytest.mark.parametrize("total_name", ["total-votes", "total"])
def test_volunteers_totals_above_their_answers_are_kept_and_counted(tmp_path, total_name):
    path = write(tmp_path / "gz_decals_volunteers_5.csv", decals_text(REAL_ROWS, total_name, totals=REAL_TOTALS))
    cat = gzdecals.to_canonical(gzdecals.read_volunteers(path), survey="decals", path=str(path))
    assert validate(cat, str(path)) is DECALS_DR5
    merging = DECALS_DR5.question("merging")
    assert cat["merging_total-votes"].tolist() == [73, 5, 35]  # as published
    np.testing.assert_array_equal(answer_sum(cat, merging), [43, 5, 32])  # N of the likelihood
    k, n = catalog_votes(cat, DECALS_DR5, "merging", "merger")
    assert k.tolist() == [3, 0, 1] and n.tolist() == [43, 5, 32]
    excess = total_excess(cat, DECALS_DR5)
    assert excess["merging"] == {"rows": 2, "max_excess": 30}
    assert all(e == {"rows": 0, "max_excess": 0} for q, e in excess.items() if q != "merging")
    # the real layout written back keeps the published totals
    back = gzdecals.to_canonical(gzdecals.read_volunteers(write(tmp_path / "again.csv", gzdecals.from_canonical(
        cat).to_csv(index=False))), survey="decals")
    assert back["merging_total-votes"].tolist() == [73, 5, 35]


def test_volunteers_total_below_its_answers_names_file_row_and_column(tmp_path):
    path = write(tmp_path / "gz_decals_volunteers_5.csv", decals_text(REAL_ROWS, totals={(3, "merging"): 30}))
    with pytest.raises(CatalogError) as err:
        gzdecals.read_volunteers(path)
    assert str(err.value) == f"{path}: column 'merging_total-votes', row 3: 30.0 is below the sum of its answers 32"
    path = write(tmp_path / "schema.csv", decals_text(REAL_ROWS, "total", totals={(3, "merging"): 30}))
    with pytest.raises(CatalogError, match=r"column 'merging_total', row 3: 30.0 is below the sum of its answers 32"):
        gzdecals.read_volunteers(path)


def test_decals_filter_cuts_on_the_answer_sum(tmp_path):
    totals = {**REAL_TOTALS, (2, "smooth-or-featured"): 12}  # row 2: 5 answers, published total 12
    path = write(tmp_path / "v.csv", decals_text(REAL_ROWS, totals=totals))
    cat = gzdecals.to_canonical(gzdecals.read_volunteers(path), survey="decals")
    kept, dropped = gzdecals.filter_catalog(cat, min_total_votes=10)
    assert kept["id_str"].tolist() == ["J094632.40+005103.6", "J101010.10+101010.1"]
    assert dropped == {"sample": 0, "min_total_votes": 1}
    kept, _ = gzdecals.filter_catalog(cat, min_total_votes=33, question="merging")  # N 43, 5, 32; published 73, 5, 35
    assert kept["id_str"].tolist() == ["J094632.40+005103.6"]


@pytest.mark.parametrize(("old", "new", "message"), [
    ("30.0,", "30.5,", "column 'smooth-or-featured_featured-or-disk', row 1: 30.5 is not a non-negative"),
    ("146.635", "999.5", "column 'ra', row 1: 999.5 is not a finite coordinate in [0, 360]"),
    ("_total-votes,", "_totes,", "column 'smooth-or-featured_total-votes': required column is missing"),
])
def test_volunteers_bad_cells_name_file_column_and_row(tmp_path, old, new, message):
    text = decals_text(DECALS_ROWS).replace(old, new, 1)
    path = write(tmp_path / "v.csv.gz", text)
    with pytest.raises(CatalogError) as err:
        gzdecals.read_volunteers(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)


@pytest.mark.parametrize(("fmt", "total_name"), [("csv", "total-votes"), ("parquet", "total-votes"),
                                                  ("parquet", "total")])
def test_decals_round_trip_through_the_real_layout(tmp_path, fmt, total_name):
    original = canonical(DECALS_DR5, 30, seed=3)
    real = gzdecals.from_canonical(original)
    expected_columns = list(gzdecals.LEADING_COLUMNS)
    for q in DECALS_DR5.questions:
        expected_columns += [q.total_column] + [f"{c}{x}" for c in q.answer_columns for x in ("", "_fraction",
                                                                                               "_debiased")]
    assert list(real.columns) == expected_columns
    assert real["png_loc"].iloc[0] == "dr5/" + gzdecals.zip_member(original["id_str"].iloc[0])
    assert (real["redshift"] == 0.05).all()
    if total_name == "total":
        real = real.rename(columns={q.total_column: f"{q.name}_total" for q in DECALS_DR5.questions})
    path = tmp_path / f"gz_decals_volunteers_5.{fmt}"
    if fmt == "parquet":
        real.to_parquet(path, index=False)
    else:
        real.to_csv(path, index=False)
    back = gzdecals.to_canonical(gzdecals.read_volunteers(path), survey="sim")
    assert back["png_loc"].tolist() == real["png_loc"].tolist()
    pd.testing.assert_frame_equal(back.drop(columns=["png_loc", "petro_th90"]), original, check_dtype=False)


def test_decals_from_canonical_rejects_objids_and_keeps_known_columns():
    df = canonical(DECALS_DR5, 3)
    df["petro_th90"] = [4.0, 5.0, 6.0]
    assert gzdecals.from_canonical(df)["petro_th90"].tolist() == [4.0, 5.0, 6.0]
    df.loc[2, "id_str"] = "1237645000000000007"
    with pytest.raises(CatalogError, match=r"column 'id_str', row 2: '1237645000000000007' is not an IAU name"):
        gzdecals.from_canonical(df)


def test_zip_member_and_png_loc():
    assert gzdecals.zip_member("J094632.40+005103.6") == "J094/J094632.40+005103.6.png"
    assert gzdecals.zip_member("J235959.99-895959.9") == "J235/J235959.99-895959.9.png"
    assert gzdecals.member_from_png_loc("/raid/dr5/png/J094/J094632.40+005103.6.png") == \
        "J094/J094632.40+005103.6.png"
    assert gzdecals.member_from_png_loc("dr5/J000/J000000.80-004200.0.png") == "J000/J000000.80-004200.0.png"
    assert gzdecals.member_from_png_loc("J000000.80-004200.0.png") == "J000/J000000.80-004200.0.png"
    with pytest.raises(ValueError, match="names no file"):
        gzdecals.member_from_png_loc("")


def test_decals_filter_catalog(tmp_path):
    cat = gzdecals.to_canonical(gzdecals.read_volunteers(write(tmp_path / "v.csv", decals_text(DECALS_ROWS))),
                                survey="decals")
    kept, dropped = gzdecals.filter_catalog(cat, min_total_votes=10)
    assert kept["id_str"].tolist() == ["J094632.40+005103.6"] and dropped == {"sample": 0, "min_total_votes": 1}
    kept, dropped = gzdecals.filter_catalog(cat, min_total_votes=1, question="how-rounded")
    assert len(kept) == 2 and dropped == {"sample": 0, "min_total_votes": 0}
    with pytest.raises(CatalogError, match="tree 'decals-dr5' has no question 'no-such'"):
        gzdecals.filter_catalog(cat, min_total_votes=1, question="no-such")
    with pytest.raises(CatalogError, match="column 'bar_weak': required column is missing"):
        gzdecals.filter_catalog(cat.drop(columns=["bar_weak"]), min_total_votes=1, question="bar")

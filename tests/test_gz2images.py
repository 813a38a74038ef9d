"""The GZ2 images record (Zenodo 3565489): reading gz2_filename_mapping.csv, the join and the zip layout."""

from __future__ import annotations

import pandas as pd
import pytest

from gzmorph.catalog import CatalogError
from gzmorph.sources import gz2images

BIG = 587722981736120347  # a real-looking dr7objid, above 2**53


def catalog(*ids: int, sample: str = "original") -> pd.DataFrame:
    return pd.DataFrame({"id_str": [str(i) for i in ids], "sample": sample})


def mapping(rows: list[tuple[int, str, int]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["objid", "sample", "asset_id"]).astype({"objid": "int64", "asset_id": "int64"})


def test_read_mapping_keeps_objids_exact(tmp_path):
    path = tmp_path / "gz2_filename_mapping.csv"
    path.write_text(f"objid,sample,asset_id\n{BIG},original,1\n{BIG + 1},extra, 2\n")
    df = gz2images.read_mapping(path)
    assert df["objid"].tolist() == [BIG, BIG + 1] and df["asset_id"].tolist() == [1, 2]
    assert df["sample"].tolist() == ["original", "extra"]


@pytest.mark.parametrize("body, message", [
    ("objid,sample\n1,original\n", "column 'asset_id': required column is missing"),
    ("objid,sample,asset_id\n1,original,\n", "column 'asset_id', row 1: '' is not an integer object id"),
    ("objid,sample,asset_id\n1.5e17,original,3\n", "column 'objid', row 1: '1.5e17' is not an integer object id"),
])
def test_read_mapping_stops_at_a_bad_cell(tmp_path, body, message):
    path = tmp_path / "m.csv"
    path.write_text(body)
    with pytest.raises(CatalogError, match=message):
        gz2images.read_mapping(path)


def test_assign_assets_is_deterministic_whatever_the_row_order():
    rows = [(BIG, "stripe82", 7), (BIG, "original", 9), (BIG, "original", 8),   # own sample first, then by id
            (BIG + 1, "original", 20), (BIG + 1, "original", 20),                # identical rows count once
            (BIG + 2, "original", 30), (BIG + 3, "original", 30),                # 30 is ambiguous: used by none
            (BIG + 3, "original", 31), (99, "stripe82_coadd_1", 40)]             # 99 is not in the catalog
    cat = catalog(BIG, BIG + 1, BIG + 2, BIG + 3, BIG + 4)
    assets, stats = gz2images.assign_assets(cat, mapping(rows))
    assert assets.tolist() == ["8;9;7", "20", "", "31", ""]
    for shuffled in (rows[::-1], rows[3:] + rows[:3]):
        assert gz2images.assign_assets(cat, mapping(shuffled))[0].tolist() == assets.tolist()
    assert {k: v for k, v in stats.items() if k != "examples"} == {
        "mapping_rows": 9, "galaxies": 5, "with_asset": 3, "without_asset": 2, "identical_rows_dropped": 1,
        "ambiguous_assets": 1, "galaxies_with_ambiguous_assets": 2, "galaxies_with_several_assets": 1,
        "best_asset_sample_differs": 0, "rows_not_in_catalog": 1}
    assert stats["examples"] == {"without_asset": [str(BIG + 2), str(BIG + 4)], "several_assets": [str(BIG)],
                                 "ambiguous_assets": [30]}
    assert gz2images.candidates("8;9;7") == [8, 9, 7] and gz2images.candidates("") == []
    assert gz2images.candidates(None) == []


def test_member_assets_finds_jpegs_in_any_folder_and_skips_resource_forks():
    members = ["images/1.jpg", "images/2.JPG", "3.jpg", "__MACOSX/images/._1.jpg", "images/._4.jpg",
               "other/1.jpg", "images/notes.txt", "images/5.png"]
    found, repeated = gz2images.member_assets(members)
    assert found == {1: "images/1.jpg", 2: "images/2.JPG", 3: "3.jpg"} and repeated == ["other/1.jpg"]

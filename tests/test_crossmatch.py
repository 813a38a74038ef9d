import json

import numpy as np
import pandas as pd
import pytest

from gzmorph import crossmatch

ARCSEC = 1 / 3600


def test_hand_computed_one_to_one():
    # left 0 and 1 both lie near right 0; left 0 is closer, so left 1 must take nothing
    # (right 1 is beyond the radius), and left 2 pairs with right 2.
    left_ra = np.array([150.0, 150.0 + 0.6 * ARCSEC, 151.0])
    left_dec = np.array([2.0, 2.0, 2.0])
    right_ra = np.array([150.0 + 0.2 * ARCSEC, 150.0 + 5 * ARCSEC, 151.0])
    right_dec = np.array([2.0, 2.0, 2.0 + 0.5 * ARCSEC])
    m = crossmatch.match_one_to_one(left_ra, left_dec, right_ra, right_dec, radius_arcsec=1.0)
    assert m["left_index"].tolist() == [0, 2]
    assert m["right_index"].tolist() == [0, 2]
    # separation on the sky shrinks RA offsets by cos(dec)
    np.testing.assert_allclose(m["separation_arcsec"], [0.2 * np.cos(np.radians(2.0)), 0.5], rtol=1e-6)


def test_no_galaxy_claimed_twice_in_crowded_field():
    rng = np.random.default_rng(1)
    ra = 150 + rng.uniform(0, 20 * ARCSEC, 200)
    dec = 2 + rng.uniform(0, 20 * ARCSEC, 200)
    m = crossmatch.match_one_to_one(ra, dec, ra + rng.normal(0, 0.3 * ARCSEC, 200), dec, radius_arcsec=2.0)
    assert m["left_index"].is_unique and m["right_index"].is_unique
    assert (m["separation_arcsec"] <= 2.0).all()


def test_recovers_shifted_catalog_and_statistics():
    rng = np.random.default_rng(2)
    n = 500
    ra = rng.uniform(150, 152, n)
    dec = rng.uniform(1, 3, n)
    keep = rng.random(n) < 0.8
    ra2 = ra[keep] + rng.normal(0, 0.15 * ARCSEC, keep.sum()) / np.cos(np.radians(dec[keep]))
    dec2 = dec[keep] + rng.normal(0, 0.15 * ARCSEC, keep.sum())
    m = crossmatch.match_one_to_one(ra, dec, ra2, dec2, 1.0)
    truth = np.flatnonzero(keep)
    assert len(m) == keep.sum()
    assert (truth[m["right_index"]] == m["left_index"]).all()
    stats = crossmatch.match_statistics(m, n, keep.sum(), 1.0, "sdss", "decals")
    assert stats["matched"] == keep.sum() and stats["unmatched_sdss"] == n - keep.sum()
    assert stats["unmatched_decals"] == 0
    # 2-d Gaussian scatter of 0.15" per axis: median separation 0.15 * sqrt(2 ln 2) = 0.177"
    assert stats["separation_arcsec"]["p50"] == pytest.approx(0.177, abs=0.03)


def test_empty_inputs():
    m = crossmatch.match_one_to_one(np.array([]), np.array([]), np.array([1.0]), np.array([1.0]), 1.0)
    assert len(m) == 0 and list(m.columns) == ["left_index", "right_index", "separation_arcsec"]


def test_cli_writes_catalog_stats_and_figure(tmp_path, monkeypatch):
    from test_catalog import make_catalog

    from gzmorph.cli import main

    left = make_catalog(20, seed=3)
    right = make_catalog(15, seed=4).assign(survey="decals")
    right[["ra", "dec"]] = left[["ra", "dec"]].iloc[5:20].to_numpy() + 0.1 * ARCSEC
    right["id_str"] = [f"J{i:03d}" for i in range(15)]
    left.to_parquet(tmp_path / "sdss.parquet")
    right.to_parquet(tmp_path / "decals.parquet")
    out = tmp_path / "out"
    rc = main(["crossmatch", "--params", "params.yaml", "--left", str(tmp_path / "sdss.parquet"),
               "--right", str(tmp_path / "decals.parquet"), "--out", str(out / "m.parquet"),
               "--stats", str(out / "s.json"), "--figure", str(out / "sky.png")])
    assert rc == 0
    matched = pd.read_parquet(out / "m.parquet")
    assert len(matched) == 15
    assert (matched["sdss__id_str"].to_numpy() == left["id_str"].iloc[5:20].to_numpy()).all()
    assert (matched["decals__id_str"] == right["id_str"]).all()
    stats = json.loads((out / "s.json").read_text())
    assert stats["matched"] == 15 and stats["unmatched_sdss"] == 5
    assert (out / "sky.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

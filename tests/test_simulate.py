"""Simulated surveys: CLI outputs, determinism, resume, and the vote statistics of the GZ papers."""

from __future__ import annotations

import argparse
import copy
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from gzmorph import catalog, config, simulate
from gzmorph.sim import rng_for
from gzmorph.sim.observe import iau_name
from gzmorph.sim.population import MAG_LIMIT, R90_MIN_ARCSEC, sample_population
from gzmorph.sim.render import image_bytes, image_extension, is_valid_image, render_galaxy
from gzmorph.sim.volunteers import classifications_per_galaxy, rho, vote_counts
from gzmorph.tree import get_tree

IAU = re.compile(r"^J\d{6}\.\d{2}[+-]\d{6}\.\d$")
N_STATS = 4000  # galaxies for vote statistics (population + votes only, no pixels)


def _default_params() -> dict:
    return config.load("params.yaml")


def _small_params(n: int = 150, size: int = 96) -> dict:
    p = copy.deepcopy(_default_params())
    p["simulate"]["n_galaxies"] = n
    p["simulate"]["image_size"] = size
    return config.validate(p)


def _cli(argv: list[str]):
    """Parse with the simulate stage alone (independent of other stages being importable)."""
    parser = argparse.ArgumentParser()
    simulate.register(parser.add_subparsers(dest="stage", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def _survey(tmp: Path, survey: str, images: str, cat: str, threads: int = 1) -> dict:
    return _cli(["simulate", "survey", "--params", str(tmp / "params.yaml"), "--survey", survey,
                 "--sky", str(tmp / "sky.parquet"), "--images", images, "--catalog", cat,
                 "--threads", str(threads), "--no-progress"])


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> Path:
    """sky + both surveys with a small patch and 96 px images, run from inside the output folder
    so that --images is a relative path."""
    tmp = tmp_path_factory.mktemp("sim")
    (tmp / "params.yaml").write_text(yaml.safe_dump(_small_params()))
    cwd = os.getcwd()
    os.chdir(tmp)
    try:
        _cli(["simulate", "sky", "--params", "params.yaml", "--out", "sky.parquet"])
        _survey(tmp, "sdss", "img/sdss", "cat/sdss.parquet", threads=2)
        _survey(tmp, "decals", "img/decals", "cat/decals.parquet", threads=1)
    finally:
        os.chdir(cwd)
    return tmp


@pytest.fixture(scope="module")
def stats() -> dict:
    """Default-params population of N_STATS galaxies, voted on by both surveys (as if both saw all)."""
    p = _default_params()
    pop = sample_population(N_STATS, p["simulate"]["sky"], p["seed"])
    out = {"pop": pop}
    for name in ("sdss", "decals"):
        tree = get_tree(p["simulate"]["surveys"][name]["tree"])
        probs, counts = simulate.simulate_votes(pop, p, name, tree)
        out[name] = (tree, probs, counts)
    return out


# ------------------------------------------------------------------------------------------ catalog
def test_sky_is_deterministic_selected_and_on_the_patch():
    sky = _default_params()["simulate"]["sky"]
    a, b = sample_population(500, sky, 7), sample_population(500, sky, 7)
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(a["ra"], sample_population(500, sky, 8)["ra"])
    assert (a["mag_r"] < MAG_LIMIT).all() and (a["petro_r90_arcsec"] > R90_MIN_ARCSEC).all()
    assert a["ra"].between(sky["ra_min"], sky["ra_max"]).all()
    assert a["dec"].between(sky["dec_min"], sky["dec_max"]).all()
    assert set(a["morphology"]) == {"smooth", "disk"}


def test_catalogs_validate_with_ids_paths_and_truth(small_run: Path):
    sky = pd.read_parquet(small_run / "sky.parquet")
    for survey, pattern in (("sdss", re.compile(r"^1237\d{15}$")), ("decals", IAU)):
        df = catalog.load(small_run / "cat" / f"{survey}.parquet")
        tree = get_tree(_small_params()["simulate"]["surveys"][survey]["tree"])
        assert len(df) > 50 and (df["tree"] == tree.name).all() and (df["survey"] == survey).all()
        assert df["id_str"].is_unique
        assert all(pattern.match(s) for s in df["id_str"])
        fp = _small_params()["simulate"]["surveys"][survey]
        ext = {"jpeg": ".jpg", "png": ".png"}[fp["image_format"]]
        assert (df["file_loc"] == [os.path.join("img", survey, f"{i}{ext}") for i in df["id_str"]]).all()
        assert df["truth_ra"].between(fp["ra_min"], fp["ra_max"]).all()
        assert df["truth_sky_id"].isin(sky["sky_id"]).all()
        for q in tree.questions:
            r = df[[catalog.rho_column(q.name, a) for a in q.answer_names]].to_numpy()
            assert ((r >= 0) & (r <= 1)).all()
            np.testing.assert_allclose(r.sum(axis=1), 1.0, atol=1e-9)
        for col in ("truth_morphology", "truth_bar_strength", "truth_n_arms", "truth_redshift"):
            assert col in df.columns
    dec = catalog.load(small_run / "cat" / "decals.parquet")
    # IAU names are built from the measured coordinates
    assert all(iau_name(r, d) == i for r, d, i in zip(dec["ra"], dec["dec"], dec["id_str"], strict=True))
    dra = (dec["ra"] - dec["truth_ra"]) * np.cos(np.radians(dec["dec"]))
    sep = np.hypot(dra, dec["dec"] - dec["truth_dec"])
    assert 0 < np.median(sep) * 3600 < 0.5


def test_default_formats_are_gz2_jpegs_and_decals_pngs():
    surveys = _default_params()["simulate"]["surveys"]
    assert surveys["sdss"]["image_format"] == "jpeg" and surveys["decals"]["image_format"] == "png"


@pytest.mark.parametrize(("fmt", "ext"), [("jpeg", ".jpg"), ("png", ".png")])
def test_catalog_file_loc_extension_follows_image_format(small_run: Path, fmt: str, ext: str):
    p = _small_params()
    p["simulate"]["surveys"]["sdss"]["image_format"] = fmt
    sky = pd.read_parquet(small_run / "sky.parquet")
    df = simulate.build_catalog(sky, config.validate(p), "sdss", "imgs")
    assert (df["file_loc"] == [os.path.join("imgs", f"{i}{ext}") for i in df["id_str"]]).all()
    assert simulate.image_path("d", "7", fmt) == os.path.join("d", f"7{ext}")


def test_unknown_image_format_is_refused(small_run: Path):
    p = _small_params()
    p["simulate"]["surveys"]["sdss"]["image_format"] = "webp"
    with pytest.raises(config.ConfigError, match="simulate.surveys.sdss.image_format: 'webp' is not one of"):
        config.validate(p)
    with pytest.raises(ValueError, match="not one of"):
        image_extension("webp")


def test_image_formats_round_trip(tmp_path: Path):
    p = _small_params(size=64)
    survey = p["simulate"]["surveys"]["sdss"]
    g = sample_population(1, p["simulate"]["sky"], 3).to_dict("records")[0]
    rgb = render_galaxy(g, "sdss", survey, 64, 3)
    files = {}
    for fmt, magic in (("png", b"\x89PNG"), ("jpeg", b"\xff\xd8\xff")):
        data = image_bytes(rgb, fmt)
        assert data.startswith(magic) and data == image_bytes(rgb, fmt)  # deterministic bytes
        files[fmt] = tmp_path / f"g{image_extension(fmt)}"
        files[fmt].write_bytes(data)
        with Image.open(files[fmt]) as im:
            assert im.format == fmt.upper() and im.size == (64, 64) and im.mode == "RGB"
            back = np.asarray(im).astype(int)
        if fmt == "png":
            np.testing.assert_array_equal(back, rgb)  # lossless
        else:
            assert np.abs(back - rgb).mean() < 12  # lossy, but the same image
            assert np.corrcoef(back.ravel(), rgb.ravel())[0, 1] > 0.9
        assert is_valid_image(str(files[fmt]), 64, fmt)
        assert not is_valid_image(str(files[fmt]), 96, fmt)  # wrong size
    assert not is_valid_image(str(files["png"]), 64, "jpeg")  # a PNG is not a finished JPEG render
    assert not is_valid_image(str(files["jpeg"]), 64, "png")
    assert not is_valid_image(str(tmp_path / "absent.jpg"), 64, "jpeg")


def test_iau_name_format():
    assert iau_name(150.0, 2.5) == "J100000.00+023000.0"
    assert iau_name(10.6847, -41.26875) == "J004244.32-411607.5"
    assert IAU.match(iau_name(359.99999, -0.00001))


def test_images_are_rgb_of_the_configured_size(small_run: Path):
    df = pd.read_parquet(small_run / "cat" / "sdss.parquet")
    for loc in df["file_loc"]:
        with Image.open(small_run / loc) as im:
            assert im.size == (96, 96) and im.mode == "RGB"
    with Image.open(small_run / df["file_loc"].iloc[0]) as im:
        assert np.asarray(im).std() > 1  # not blank


def test_same_seed_same_catalog_and_images_whatever_the_threads(small_run: Path, tmp_path: Path):
    (tmp_path / "params.yaml").write_text((small_run / "params.yaml").read_text())
    (tmp_path / "sky.parquet").write_bytes((small_run / "sky.parquet").read_bytes())
    _survey(tmp_path, "sdss", str(tmp_path / "img"), str(tmp_path / "sdss.parquet"), threads=1)
    a = pd.read_parquet(small_run / "cat" / "sdss.parquet")
    b = pd.read_parquet(tmp_path / "sdss.parquet")
    pd.testing.assert_frame_equal(a.drop(columns="file_loc"), b.drop(columns="file_loc"))
    assert a["file_loc"].str.endswith(".jpg").all()
    for loc in a["file_loc"]:  # threads 2 (fixture) vs 1 (here): identical bytes
        name = os.path.basename(loc)
        assert (small_run / "img" / "sdss" / name).read_bytes() == (tmp_path / "img" / name).read_bytes()


@pytest.mark.parametrize(("survey", "ext"), [("decals", "png"), ("sdss", "jpg")])
def test_resume_rerenders_only_missing_and_broken_images(small_run: Path, tmp_path: Path, survey: str, ext: str):
    (tmp_path / "params.yaml").write_text((small_run / "params.yaml").read_text())
    (tmp_path / "sky.parquet").write_bytes((small_run / "sky.parquet").read_bytes())
    images = tmp_path / "img"
    first = _survey(tmp_path, survey, str(images), str(tmp_path / "d.parquet"))
    files = sorted(images.glob(f"*.{ext}"))
    assert first["rendered"] == len(files) and first["skipped"] == 0 and len(files) > 10
    originals = {p: p.read_bytes() for p in files}
    missing, half, no_end, garbage = files[3], files[5], files[6], files[8]
    missing.unlink()
    half.write_bytes(originals[half][: len(originals[half]) // 2])  # cut off mid-stream
    no_end.write_bytes(originals[no_end][:-2])  # all the pixels, but not the end marker (JPEG EOI, PNG IEND CRC)
    garbage.write_bytes(b"truncated")
    broken = (missing, half, no_end, garbage)
    before = {p: p.stat().st_mtime_ns for p in files if p not in broken}
    again = _survey(tmp_path, survey, str(images), str(tmp_path / "d.parquet"), threads=2)
    assert again == {"rendered": len(broken), "skipped": len(files) - len(broken)}
    assert all(p.read_bytes() == originals[p] for p in broken)
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())  # valid images are not rewritten
    assert not list(images.glob(".*"))  # no temporary files left behind


def test_figure(small_run: Path):
    out = small_run / "fig" / "examples.png"
    cwd = os.getcwd()
    os.chdir(small_run)
    try:
        _cli(["simulate", "figure", "--catalog", "cat/decals.parquet", "--out", str(out)])
    finally:
        os.chdir(cwd)
    with Image.open(out) as im:
        assert im.size[0] > 500 and im.size[1] > 500


def test_real_cli_dispatches_simulate(tmp_path: Path):
    from gzmorph import cli

    (tmp_path / "p.yaml").write_text(yaml.safe_dump(_small_params(n=20)))
    argv = ["simulate", "sky", "--params", str(tmp_path / "p.yaml"), "--out", str(tmp_path / "s.parquet")]
    assert cli.main(argv) == 0
    assert len(pd.read_parquet(tmp_path / "s.parquet")) == 20


# --------------------------------------------------------------------------------- vote statistics
def test_smooth_or_featured_has_about_40_votes(stats):
    for name in ("sdss", "decals"):
        n = stats[name][2]["smooth-or-featured_total-votes"]
        assert 38 <= np.median(n) <= 42
        assert np.mean(n >= 36) >= 0.8
        assert n.min() >= _default_params()["simulate"]["volunteers"]["fewer_min"]


def test_gz2_bar_votes_are_about_10_and_spread_from_0_to_40(stats):
    n_bar = stats["sdss"][2]["bar_total-votes"]
    assert 6 <= n_bar.mean() <= 14
    assert n_bar.max() >= 30
    # some galaxies were never asked (every volunteer said smooth or edge-on); few, as raw GZ2 smooth fractions
    # rarely reach 1 (only ~11 % exceed 0.9)
    assert np.mean(n_bar == 0) >= 0.01


def _fraction(c: dict, question: str, answer: str) -> np.ndarray:
    n = c[f"{question}_total-votes"]
    return np.where(n > 0, c[f"{question}_{answer}"] / np.maximum(n, 1), np.nan)


def test_votes_look_like_gz2(stats):
    """Raw GZ2 vote fractions (Hart et al. 2016 counts; issue #10): smooth peaks at 0.7-0.9 with ~11 % above
    0.9; among galaxies asked about bars (N >= 10) the bar fraction averages ~0.3 with ~23 % above 0.5;
    spiral "yes" ~0.6; something odd ~0.2."""
    _, _, c = stats["sdss"]
    smooth = _fraction(c, "smooth-or-featured", "smooth")
    h, _ = np.histogram(smooth, bins=10, range=(0, 1))
    pairs = h[:-1] + h[1:]
    assert int(np.argmax(pairs)) in (7, 8), h  # the 0.7-0.9 (or 0.8-1.0) window holds the most galaxies
    assert 0.06 <= np.mean(smooth > 0.9) <= 0.18
    asked = c["bar_total-votes"] >= 10
    bar = _fraction(c, "bar", "yes")[asked]
    assert 0.24 <= bar.mean() <= 0.38 and 0.17 <= np.mean(bar > 0.5) <= 0.30
    spiral = _fraction(c, "has-spiral-arms", "yes")[c["has-spiral-arms_total-votes"] >= 10]
    assert 0.5 <= spiral.mean() <= 0.7
    odd = _fraction(c, "something-odd", "yes")
    assert 0.14 <= np.nanmean(odd) <= 0.27


def test_smooth_rho_of_ellipticals_follows_what_is_visible(stats):
    """Not one constant: elongated ellipticals look more disk-like, poorly resolved ones more undecided."""
    pop = stats["pop"]
    rho_smooth = stats["sdss"][1]["smooth-or-featured"][:, 0]
    ell = (pop["morphology"] == "smooth").to_numpy() & (pop["artifact"] == "none").to_numpy()
    r = rho_smooth[ell]
    assert r.std() > 0.04 and 0.75 < r.mean() < 0.9
    q = pop["axis_ratio"].to_numpy()[ell]
    assert np.corrcoef(q, r)[0, 1] > 0.3  # rounder -> more smooth


def test_barred_galaxies_are_a_minority(stats):
    _, _, c = stats["sdss"]
    n = c["bar_total-votes"]
    well = n >= 10
    assert well.sum() > 500
    assert np.mean(c["bar_yes"][well] / n[well] > 0.5) < 0.5
    assert stats["pop"]["barred"].mean() < 0.5
    # ... but bars are seen: strongly barred face-on disks get more bar votes than unbarred ones
    pop = stats["pop"]
    frac = np.where(n > 0, c["bar_yes"] / np.maximum(n, 1), np.nan)
    face = pop["inclination_deg"] < 50
    strong = np.nanmean(frac[well & face & (pop["bar_strength"] > 0.6)])
    assert strong > np.nanmean(frac[well & face & ~pop["barred"]]) + 0.2


def test_deeper_sharper_decals_sees_more_featured_galaxies(stats):
    f = {}
    for name in ("sdss", "decals"):
        c = stats[name][2]
        f[name] = c["smooth-or-featured_featured-or-disk"] / c["smooth-or-featured_total-votes"]
        assert np.mean(stats[name][1]["smooth-or-featured"][:, 1]) > 0.2
    diff = f["decals"] - f["sdss"]  # paired: same galaxies
    assert diff.mean() > 3 * diff.std() / np.sqrt(len(diff))
    rho_featured = {s: stats[s][1]["smooth-or-featured"][:, 1].mean() for s in ("sdss", "decals")}
    assert rho_featured["decals"] > rho_featured["sdss"]


def test_truth_rho_is_a_distribution_per_question(stats):
    for name in ("sdss", "decals"):
        tree, probs, _ = stats[name]
        for q in tree.questions:
            p = probs[q.name]
            assert p.shape == (N_STATS, len(q.answers))
            assert ((p >= 0) & (p <= 1)).all()
            np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-9)


def test_tree_walk_asks_exactly_the_dependent_questions(stats):
    _, _, c = stats["sdss"]
    np.testing.assert_array_equal(c["disk-edge-on_total-votes"], c["smooth-or-featured_featured-or-disk"])
    np.testing.assert_array_equal(c["bar_total-votes"], c["disk-edge-on_no"])
    np.testing.assert_array_equal(c["how-rounded_total-votes"], c["smooth-or-featured_smooth"])
    np.testing.assert_array_equal(c["something-odd_total-votes"],
                                  c["smooth-or-featured_smooth"] + c["smooth-or-featured_featured-or-disk"])
    np.testing.assert_array_equal(c["odd-feature_total-votes"], c["something-odd_yes"])
    _, _, d = stats["decals"]
    # merging is always asked
    np.testing.assert_array_equal(d["merging_total-votes"], d["smooth-or-featured_total-votes"])
    np.testing.assert_array_equal(d["spiral-winding_total-votes"], d["has-spiral-arms_yes"])


def _dispersion(vol: dict, pop: pd.DataFrame, p: dict) -> float:
    """sum (k - N rho)^2 / sum N rho (1 - rho) for 'smooth': 1 for binomial counts."""
    tree = get_tree("gz2")
    probs = rho(pop, p["simulate"]["surveys"]["sdss"], tree)
    rng = rng_for(1, "dispersion")
    n = classifications_per_galaxy(len(pop), vol, rng)
    c = vote_counts(probs, tree, n, vol, rng)
    r = probs["smooth-or-featured"][:, 0]
    k = c["smooth-or-featured_smooth"]
    return float(np.sum((k - n * r) ** 2) / np.sum(n * r * (1 - r)))


def test_crowd_offset_overdisperses_counts_vs_binomial(stats):
    p = _default_params()
    vol = p["simulate"]["volunteers"]
    pure = _dispersion({**vol, "bias_sigma": 0.0, "crowd_sigma": 0.0}, stats["pop"], p)
    assert 0.9 < pure < 1.1
    # over-dispersed, but only as much as the independent classifications of GZ2 allow (see the next test)
    assert 1.1 < _dispersion(vol, stats["pop"], p) < 1.6


def test_a_true_rho_could_be_calibrated_as_well_as_the_papers_model(stats):
    """The oracle, Binomial(k | true rho, N), must be better calibrated than the paper's MC model (W+20 Tables 1-2):
    with votes over-dispersed beyond that, no rho-predictor could reach the paper's coverage errors."""
    from gzmorph.evaluate import TABLE_EPSILONS, coverage_counts
    from gzmorph.posterior import single_pass_pmf

    paper_mc = {"smooth-or-featured": (0.165, 0.134, 0.094, 0.054), "bar": (0.455, 0.424, 0.292, 0.118)}
    _, probs, c = stats["sdss"]
    for question, cut in (("smooth-or-featured", 1), ("bar", 10)):
        n = c[f"{question}_total-votes"]
        asked = n >= cut
        k, n = c[f"{question}_{'smooth' if question == 'smooth-or-featured' else 'yes'}"][asked], n[asked]
        truth = probs[question][:, 0][asked]
        err = coverage_counts(single_pass_pmf(truth, n, int(n.max())), k, n, TABLE_EPSILONS).coverage_error
        assert np.all(np.abs(err) < np.asarray(paper_mc[question])), (question, err)

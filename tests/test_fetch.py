"""The real-data fetch stage against loopback imitations of SkyServer, Zenodo and the Legacy Survey.

The galaxies are a tiny simulated run written in the published formats (tests/imitations/world.py).
No test here touches the real network.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from imitations.world import serve_world, simulate_surveys
from PIL import Image

from gzmorph import catalog, cli, config, fetch
from gzmorph.tree import DECALS_DR5

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "data" / "params_tiny.yaml"
SIZE = 96


@pytest.fixture(scope="module")
def simulated(tmp_path_factory) -> dict[str, pd.DataFrame]:
    """Tiny simulated SDSS and DECaLS catalogs with their PNGs (the truth the imitations serve)."""
    return simulate_surveys(tmp_path_factory.mktemp("simulated"), [ROOT / "params.yaml", TINY])


@pytest.fixture()
def world(simulated, tmp_path):
    with serve_world(simulated["sdss"], simulated["decals"], tmp_path / "published") as w:
        yield w


def write_params(workdir: Path, world, *, sdss: dict | None = None, **kw) -> list[str]:
    """Params files for the imitations; ``sdss`` overrides keys of real.surveys.sdss."""
    real = workdir / "real.yaml"
    section = world.real_params(**kw)
    section["surveys"]["sdss"].update(sdss or {})
    real.write_text(yaml.safe_dump({"data_source": "real", "real": section}))
    return ["--params", str(ROOT / "params.yaml"), "--params", str(TINY), "--params", str(real)]


def run_fetch(workdir: Path, params: list[str], survey: str, chunks: int, zips: bool | None = None) -> dict:
    """catalog -> (archives) -> images per chunk -> gather, as the Snakemake rules chain them.

    ``zips``: whether the survey's images come from Zenodo zips (default: only GZ DECaLS).
    """
    d = workdir / "data/real" / survey
    assert cli.main(["fetch", "catalog", *params, "--survey", survey, "--out", str(d / "catalog.parquet"),
                     "--report", str(workdir / f"results/fetch/{survey}_catalog.json"), "--no-progress"]) == 0
    archives = []
    if survey == "decals" if zips is None else zips:
        assert cli.main(["fetch", "archives", *params, "--survey", survey, "--out", str(d / "archives.json"),
                         "--no-progress"]) == 0
        archives = ["--archives", str(d / "archives.json")]
    for c in range(chunks):
        assert cli.main(["fetch", "images", *params, "--survey", survey, "--catalog", str(d / "catalog.parquet"),
                         "--chunk", str(c), *archives, "--out", str(d / f"chunks/{c}.parquet"),
                         "--quarantine", str(d / f"chunks/{c}_quarantine.parquet"),
                         "--report", str(workdir / f"results/fetch/{survey}/chunk_{c}.json"), "--no-progress"]) == 0
    ids = range(chunks)
    assert cli.main(["fetch", "gather", "--survey", survey,
                     "--chunks", *[str(d / f"chunks/{c}.parquet") for c in ids],
                     "--quarantines", *[str(d / f"chunks/{c}_quarantine.parquet") for c in ids],
                     "--reports", *[str(workdir / f"results/fetch/{survey}/chunk_{c}.json") for c in ids],
                     "--out", str(workdir / f"data/catalogs/{survey}.parquet"),
                     "--quarantine", str(d / "quarantine.parquet"),
                     "--report", str(workdir / f"results/fetch/{survey}.json")]) == 0
    return json.loads((workdir / f"results/fetch/{survey}.json").read_text())


def landed_images_are_sound(df: pd.DataFrame, size: int | None) -> None:
    """Every image the catalog points at decodes fully (and has the requested size)."""
    for loc in df["file_loc"]:
        with Image.open(loc) as img:
            img.load()
            if size is not None:
                assert img.size == (size, size), loc


def vote_columns_equal(fetched: pd.DataFrame, truth: pd.DataFrame) -> None:
    tree = catalog.validate(fetched)
    merged = fetched.merge(truth, on="id_str", suffixes=("", "_truth"))
    assert len(merged) == len(fetched)
    for col in tree.vote_columns:
        assert (merged[col] == merged[f"{col}_truth"]).all(), col


def test_fetch_both_surveys_through_the_imitations(world, simulated, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = write_params(tmp_path, world, chunks=2, size=SIZE)

    sdss = run_fetch(tmp_path, params, "sdss", 2)
    df = catalog.load(tmp_path / "data/catalogs/sdss.parquet")
    assert sdss["fetched"] == sdss["in_catalog"] == len(df) == len(simulated["sdss"]) and sdss["failed"] == 0
    vote_columns_equal(df, simulated["sdss"])
    landed_images_are_sound(df, SIZE)
    # GZ2 style: the cutout scale follows petroR90_r from the SQL query (0.02 x petroR90_r arcsec/px)
    cutouts = world.skyserver.requests_to("getjpeg")
    scales = {round(float(s.request.query["scale"]), 6) for s in cutouts}
    expected = {round(0.02 * r, 6) for r in simulated["sdss"]["truth_petro_r90_arcsec"]}
    assert scales == expected
    assert all(s.request.query["opt"] == "" and s.request.query["width"] == str(SIZE) for s in cutouts)

    decals = run_fetch(tmp_path, params, "decals", 2)
    df = catalog.load(tmp_path / "data/catalogs/decals.parquet")
    assert decals["in_catalog"] == len(simulated["decals"]) and decals["failed"] == 0
    assert decals["fallback"] == len(world.not_in_zips) > 0  # from the Legacy Survey
    assert len(world.legacysurvey.requests_to("cutout")) == len(world.not_in_zips)
    # as published: the merging totals that count retired answers are kept, not "fixed" to the answer sum
    vote_columns_equal(df, world.published["decals"])
    landed_images_are_sound(df, None)
    excess = world.published["decals"]["merging_total-votes"] - catalog.answer_sum(
        world.published["decals"], DECALS_DR5.question("merging"))
    expected = {"rows": int((excess > 0).sum()), "max_excess": int(excess.max())}
    assert expected["rows"] > 0 and expected["max_excess"] == 30
    catalog_report = json.loads((tmp_path / "results/fetch/decals_catalog.json").read_text())
    for report in (decals, catalog_report):
        assert report["total_above_answers"]["merging"] == expected
        assert report["total_above_answers"]["bar"] == {"rows": 0, "max_excess": 0}
    chunk_reports = [json.loads((tmp_path / f"results/fetch/decals/chunk_{c}.json").read_text()) for c in range(2)]
    assert sum(r["total_above_answers"]["merging"]["rows"] for r in chunk_reports) == expected["rows"]
    assert max(r["total_above_answers"]["merging"]["max_excess"] for r in chunk_reports) == 30
    assert all(e == {"rows": 0, "max_excess": 0} for e in sdss["total_above_answers"].values())  # GZ2: sums
    # PNGs from the zips are the published bytes
    truth = dict(zip(simulated["decals"]["id_str"], simulated["decals"]["file_loc"], strict=True))
    for id_str, loc in zip(df["id_str"], df["file_loc"], strict=True):
        if id_str not in world.not_in_zips:
            assert Path(loc).read_bytes() == Path(truth[id_str]).read_bytes()
    # the hostile members of part 1 were never written anywhere
    assert not list(tmp_path.rglob("outside.png")) and not list(tmp_path.rglob("absolute.png"))

    # a re-run fetches nothing twice: no new image or file-content requests
    before = {s: len(s.log) for s in world.services}
    again = run_fetch(tmp_path, params, "sdss", 2)
    assert again["skipped"] == again["galaxies"] and again["fetched"] == 0
    assert len(world.skyserver.requests_to("getjpeg")) == len(cutouts)
    again = run_fetch(tmp_path, params, "decals", 2)
    assert again["skipped"] == again["galaxies"]
    assert not [s for s in world.zenodo.log[before[world.zenodo]:] if s.request.path.endswith(".zip/content")]


def test_faults_never_land_corrupt_files_and_a_rerun_finishes(world, simulated, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = write_params(tmp_path, world, chunks=2, size=SIZE)
    sky, zen, legacy = world.skyserver, world.zenodo, world.legacysurvey
    sky.inject("status", match="getjpeg", code=503, times=3)
    sky.inject("status", match="getjpeg", code=429, retry_after=1)
    sky.inject("stall", match="getjpeg", seconds=3)
    sky.inject("truncate", match="getjpeg", times=2)
    sky.inject("body", match="getjpeg", times=3)    # HTML pages where images should be: these galaxies fail
    zen.inject("truncate", match="part1.zip")
    zen.inject("corrupt", match="part2.zip")         # wrong md5: discarded and downloaded again
    zen.inject("status", match="/api/records", code=502, times=2)
    legacy.inject("stall_body", match="cutout", seconds=3)
    legacy.inject("body", match="cutout", body=b"no such layer")
    injected = sum(s.pending_faults() for s in world.services)

    sdss = run_fetch(tmp_path, params, "sdss", 2)
    decals = run_fetch(tmp_path, params, "decals", 2)
    assert world.faults_taken() == injected
    # the HTML bodies were caught: those galaxies are quarantined with the reason, nothing else is lost
    quarantine = pd.read_parquet(tmp_path / "data/real/sdss/quarantine.parquet")
    assert sdss["failed"] == len(quarantine) == 3
    assert quarantine["reason"].str.contains("not an image").all()
    assert sdss["in_catalog"] + sdss["failed"] == len(simulated["sdss"])
    df = catalog.load(tmp_path / "data/catalogs/sdss.parquet")
    landed_images_are_sound(df, SIZE)
    # no corrupt file landed anywhere: every image decodes, the zips match their md5
    for path in (tmp_path / "data/real").rglob("*"):
        if path.suffix in (".jpg", ".png"):
            with Image.open(path) as img:
                img.load()
        if path.suffix == ".zip":
            assert hashlib.md5(path.read_bytes()).hexdigest() == zen.checksum(path.name).removeprefix("md5:")
    assert decals["failed"] == 1  # the fallback galaxy that got "no such layer" instead of an image

    # the faults are gone: the same commands fetch only what is missing and finish the job
    assert sum(s.pending_faults() for s in world.services) == 0
    n_cutouts = len(sky.requests_to("getjpeg"))
    again = run_fetch(tmp_path, params, "sdss", 2)
    assert again["failed"] == 0 and again["in_catalog"] == len(simulated["sdss"])
    assert again["fetched"] == sdss["failed"] and len(sky.requests_to("getjpeg")) == n_cutouts + sdss["failed"]
    again = run_fetch(tmp_path, params, "decals", 2)
    assert again["failed"] == 0 and again["in_catalog"] == len(simulated["decals"])


def gz2_content_requests(world) -> int:
    """Requests for the bytes of the GZ2 record's files (the zip and the mapping)."""
    return len(world.zenodo.requests_to(r"/files/(images_gz2\.zip|gz2_filename_mapping\.csv)/content$"))


def zip_served_images_are_the_published_jpegs(world, simulated, df: pd.DataFrame) -> None:
    """Every galaxy the zip serves has exactly the simulated JPEG (not a decoy, not a cutout)."""
    truth = dict(zip(simulated["sdss"]["id_str"], simulated["sdss"]["file_loc"], strict=True))
    locs = dict(zip(df["id_str"], df["file_loc"], strict=True))
    for objid in world.gz2_assets:
        assert Path(locs[objid]).read_bytes() == Path(truth[objid]).read_bytes(), objid


def test_gz2_images_from_the_zenodo_zip(world, simulated, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = write_params(tmp_path, world, chunks=2, size=SIZE, gz2_images="zenodo")
    report = run_fetch(tmp_path, params, "sdss", 2, zips=True)
    df = catalog.load(tmp_path / "data/catalogs/sdss.parquet")
    n = len(simulated["sdss"])
    fallback = world.gz2_fallback
    assert report["failed"] == 0 and report["in_catalog"] == len(df) == n
    assert report["fetched"] == len(world.gz2_assets) == n - len(fallback) and report["fallback"] == len(fallback)
    zip_served_images_are_the_published_jpegs(world, simulated, df)
    vote_columns_equal(df, simulated["sdss"])
    # the rest are SkyServer cutouts at GZ2's scale, one request each
    cutouts = world.skyserver.requests_to("getjpeg")
    assert len(cutouts) == len(fallback)
    radius = dict(zip(simulated["sdss"]["id_str"], simulated["sdss"]["truth_petro_r90_arcsec"], strict=True))
    assert {round(float(s.request.query["scale"]), 6) for s in cutouts} == {round(0.02 * radius[i], 6)
                                                                           for i in fallback}
    landed_images_are_sound(df[df["id_str"].isin(fallback)], SIZE)
    # the join, as the catalog report tells it
    mapping = json.loads((tmp_path / "results/fetch/sdss_catalog.json").read_text())["mapping"]
    cases = world.gz2_cases
    assert mapping["without_asset"] == len(cases["no_row"]) + len(cases["ambiguous_only"])
    assert mapping["galaxies_with_several_assets"] == 2  # other_sample_first and lower_asset_missing
    assert mapping["identical_rows_dropped"] == 1 and mapping["ambiguous_assets"] == 1
    assert mapping["galaxies_with_ambiguous_assets"] == 2 and mapping["rows_not_in_catalog"] == 3
    assert set(mapping["examples"]["several_assets"]) == {*cases["other_sample_first"], *cases["lower_asset_missing"]}
    # hostile and resource-fork members of the zip were never written anywhere
    assert not list(tmp_path.rglob("outside.jpg")) and not list(tmp_path.rglob("._*"))

    # a re-run downloads nothing twice and fetches no image again
    before_zenodo, before_sky = gz2_content_requests(world), len(world.skyserver.requests_to("getjpeg"))
    again = run_fetch(tmp_path, params, "sdss", 2, zips=True)
    assert again["skipped"] == again["galaxies"] == n and again["fetched"] == again["fallback"] == 0
    assert gz2_content_requests(world) == before_zenodo == 2  # the zip and the mapping, once each
    assert len(world.skyserver.requests_to("getjpeg")) == before_sky


def test_gz2_zenodo_without_fallback_quarantines_the_unmapped_with_a_reason(world, simulated, tmp_path,
                                                                             monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = write_params(tmp_path, world, chunks=1, size=SIZE, gz2_images="zenodo", sdss={"fallback": "none"})
    report = run_fetch(tmp_path, params, "sdss", 1, zips=True)
    quarantine = pd.read_parquet(tmp_path / "data/real/sdss/quarantine.parquet")
    reasons = dict(zip(quarantine["id_str"], quarantine["reason"], strict=True))
    assert sorted(reasons) == world.gz2_fallback and report["failed"] == len(world.gz2_fallback)
    cases = world.gz2_cases
    for objid in (*cases["no_row"], *cases["ambiguous_only"]):
        assert reasons[objid] == f"zenodo: no asset in gz2_filename_mapping.csv for objid {objid}"
    (missing,) = cases["missing_from_zip"]
    assert reasons[missing] == f"zenodo: asset {world.gz2_own_assets[missing]}.jpg not in the image archives"
    assert report["failure_reasons"] == {"no asset in the mapping": len(cases["no_row"]) + 1,
                                         "not in the image archives": 1}
    assert not world.skyserver.requests_to("getjpeg")  # no fallback, no cutouts
    zip_served_images_are_the_published_jpegs(world, simulated, catalog.load(tmp_path / "data/catalogs/sdss.parquet"))


def test_gz2_zenodo_faults_never_land_corrupt_files(world, simulated, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = write_params(tmp_path, world, chunks=2, size=SIZE, gz2_images="zenodo")
    zen, sky = world.zenodo, world.skyserver
    zen.inject("status", match="/api/records/3565489", code=502, times=2)
    zen.inject("status", match="images_gz2.zip", code=429, retry_after=1)
    zen.inject("truncate", match="images_gz2.zip")          # resumed with Range
    zen.inject("status", match="images_gz2.zip", code=503)
    zen.inject("corrupt", match="gz2_filename_mapping.csv")  # wrong md5: discarded and downloaded again
    sky.inject("status", match="getjpeg", code=503, times=2)
    sky.inject("truncate", match="getjpeg")
    sky.inject("body", match="getjpeg")                      # an HTML page: that fallback galaxy is quarantined
    injected = sum(s.pending_faults() for s in world.services)

    report = run_fetch(tmp_path, params, "sdss", 2, zips=True)
    assert world.faults_taken() == injected and sum(s.pending_faults() for s in world.services) == 0
    quarantine = pd.read_parquet(tmp_path / "data/real/sdss/quarantine.parquet")
    assert report["failed"] == len(quarantine) == 1 and quarantine["id_str"].iloc[0] in world.gz2_fallback
    reason = quarantine["reason"].iloc[0]  # both sources' reasons: the zip had none, the cutout was a page
    assert reason.startswith("zenodo: ") and "; skyserver: " in reason and "not an image" in reason
    df = catalog.load(tmp_path / "data/catalogs/sdss.parquet")
    assert report["fetched"] == len(world.gz2_assets) and len(df) == len(simulated["sdss"]) - 1
    zip_served_images_are_the_published_jpegs(world, simulated, df)
    for path in (tmp_path / "data/real").rglob("*"):  # no corrupt file landed anywhere
        if path.suffix == ".jpg":
            with Image.open(path) as img:
                img.load()
        if path.suffix in (".zip", ".csv"):
            assert hashlib.md5(path.read_bytes()).hexdigest() == zen.checksum(path.name).removeprefix("md5:")

    # the faults are gone: the re-run fetches only the quarantined galaxy and downloads nothing again
    n_content, n_cutouts = gz2_content_requests(world), len(sky.requests_to("getjpeg"))
    again = run_fetch(tmp_path, params, "sdss", 2, zips=True)
    assert again["failed"] == 0 and again["in_catalog"] == len(simulated["sdss"]) and again["fallback"] == 1
    assert gz2_content_requests(world) == n_content and len(sky.requests_to("getjpeg")) == n_cutouts + 1


def test_unreachable_service_fails_with_a_clear_message(world, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    params = write_params(tmp_path, world)
    world.zenodo.inject("status", match="/api/records", code=503, times=100)
    code = cli.main(["fetch", "catalog", *params, "--survey", "decals", "--out", "c.parquet", "--report", "r.json",
                     "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and not Path("c.parquet").exists()
    assert err[-1].startswith("gzmorph fetch: error: ") and "503" in err[-1] and world.zenodo.url in err[-1]


def test_estimate_lists_files_bytes_and_time(world, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    params = write_params(tmp_path, world)
    assert cli.main(["fetch", "estimate", *params]) == 0
    out = capsys.readouterr().out
    assert "gz_decals_dr5_png_part1.zip" in out and "gz_decals_volunteers_5.csv" in out
    loaded = config.load(params[1::2])
    e = fetch.estimate(loaded, "decals", None)
    assert e["bytes"] == sum(world.zenodo.size(k) for k in world.zenodo.files)
    e = fetch.estimate(loaded, "sdss", None)
    assert e["galaxies"] == 209_294 + 21_844  # published sizes of original + extra before the catalog is fetched
    assert e["requests"]["skyserver"] == e["galaxies"] + 1156  # cutouts and SQL searches of 200 objids
    # Zenodo unreachable: the estimate still answers, from the published total
    world.zenodo.inject("status", match="/api/records", code=503, times=10)
    e = fetch.estimate(loaded, "decals", None)
    assert e["bytes"] == fetch.PUBLISHED_DECALS_BYTES and "approximate" in e["files"][0]["key"]


def test_estimate_of_gz2_images_from_zenodo(world, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    loaded = config.load(write_params(tmp_path, world, gz2_images="zenodo")[1::2])
    e = fetch.estimate(loaded, "sdss", None)
    assert [f["key"] for f in e["files"]] == ["images_gz2.zip", "gz2_filename_mapping.csv"]
    assert e["bytes"] == world.zenodo.size("images_gz2.zip") + world.zenodo.size("gz2_filename_mapping.csv")
    assert e["bytes_basis"] == "Zenodo record 3565489 listing"
    assert e["requests"] == {"zenodo": 3, "skyserver": 1156}  # listing + 2 files; SQL radii for the fallback
    world.zenodo.inject("status", match="/api/records", code=503, times=10)
    e = fetch.estimate(loaded, "sdss", None)
    assert e["bytes"] == fetch.PUBLISHED_GZ2_BYTES and "published" in e["bytes_basis"]
    # the shipped defaults: GZ2 from record 3565489, ~3.4 GB instead of ~64 h of cutouts
    shipped = config.load([ROOT / "params.yaml", ROOT / "params" / "real.yaml"])["real"]["surveys"]["sdss"]
    assert shipped["images"] == "zenodo" and shipped["fallback"] == "skyserver"
    assert (shipped["zenodo_record"], shipped["image_files"], shipped["mapping_file"]) == (
        3565489, ["images_gz2.zip"], "gz2_filename_mapping.csv")


def test_deal_chunks_and_reason_classes():
    chunks = fetch.deal_chunks(10, 3)
    assert chunks.tolist() == [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]
    assert fetch.reason_class("skyserver: http://x/getjpeg: HTTP 503 (<html>)") == "HTTP 503"
    assert fetch.reason_class("zenodo: not in the image archives") == "not in the image archives"
    assert fetch.reason_class("skyserver: http://x: body failed 3 times (ConnectionError: Read timed out.)") == \
        "timed out"
    assert fetch.reason_class("skyserver: http://x: body failed 3 times (ChunkedEncodingError: IncompleteRead(5))") \
        == "truncated body"
    assert fetch.reason_class("legacysurvey: http://x: not an image: body starts with 'no such layer' (layer "
                              "'ls-dr99' is unknown to the viewer)") == "no such layer"


@pytest.mark.slow
def test_snakemake_runs_the_real_data_configuration(world, tmp_path):
    """The whole default target on the real-data configuration, served by the imitations.

    As shipped, GZ2 images come from the Zenodo zip (fetch_archives runs for both surveys) with SkyServer
    cutouts for the galaxies the zip lacks.
    """
    from test_pipeline_e2e import BIN, copy_project, run

    work = copy_project(tmp_path / "repo")
    shutil.copy2(TINY, work / "tiny.yaml")
    real = world.real_params(size=SIZE, gz2_images="zenodo")
    (work / "real.yaml").write_text(yaml.safe_dump({"data_source": "real", "real": real}))
    assert len(world.gz2_fallback) > 3
    world.skyserver.inject("status", match="getjpeg", code=503, times=2)
    world.skyserver.inject("body", match="getjpeg", times=3)  # three fallback galaxies fail and are quarantined
    args = [str(BIN / "snakemake"), "--cores", "2", "--resources", "gpu=1", "--configfile", "tiny.yaml", "real.yaml"]
    run(args, work)
    report = json.loads((work / "results/fetch/sdss.json").read_text())
    assert report["failed"] == 3 and report["quarantined"] == 3
    assert report["fallback"] == len(world.gz2_fallback) - 3 and report["fetched"] == len(world.gz2_assets)
    assert json.loads((work / "data/real/sdss/archives.json").read_text())["record"] == 3565489
    assert "3 galaxies quarantined" in (work / "logs/fetch_gather_sdss.log").read_text()
    for survey in ("sdss", "decals"):
        manifest = json.loads((work / f"data/shards/{survey}/manifest.json").read_text())
        assert manifest["n_galaxies"] == len(catalog.load(work / f"data/catalogs/{survey}.parquet"))
    metrics = json.loads((work / "results/metrics.json").read_text())
    assert set(metrics) == {"smooth-or-featured", "bar"}
    # running again fetches the three quarantined galaxies only if asked: nothing is out of date
    again = subprocess.run([*args, "-n"], cwd=work, capture_output=True, text=True, check=True)
    assert "Nothing to be done" in again.stdout + again.stderr


def test_simulation_refuses_to_run_on_the_real_source(tmp_path, capsys):
    real = tmp_path / "real.yaml"
    real.write_text("data_source: real\n")
    code = cli.main(["simulate", "sky", "--params", str(ROOT / "params.yaml"), "--params", str(real),
                     "--out", str(tmp_path / "sky.parquet")])
    assert code == 2 and "data_source is 'real'" in capsys.readouterr().err


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


def test_a_broken_png_in_the_zips_never_lands(tmp_path):
    from imitations.zenodo import make_png_zip

    params = config.load([ROOT / "params.yaml", ROOT / "params" / "real.yaml"])
    spec = dict(params["real"]["surveys"]["decals"], fallback="none")
    name = "J094632.40+005103.6"
    zip_path = make_png_zip(tmp_path / "part1.zip", {name: b"\x89PNG\r\n\x1a\n" + bytes(200)})
    sources = fetch.ImageSources(params, spec, [zip_path], pool_size=1)
    try:
        row = pd.Series({"id_str": name, "ra": 146.6, "dec": 0.85, "png_loc": f"dr5/J094/{name}.png"})
        outcome = fetch.fetch_one(sources, row, tmp_path / "images", ["zenodo"])
    finally:
        sources.close()
    assert outcome.status == "failed" and "undecodable PNG" in outcome.reason
    assert not list((tmp_path / "images").glob("*"))  # nothing landed, not even a temporary file


def test_images_need_a_chunked_catalog(simulated, tmp_path, capsys):
    plain = tmp_path / "plain.parquet"
    simulated["decals"].to_parquet(plain)
    real = tmp_path / "real.yaml"
    real.write_text("data_source: real\n")
    code = cli.main(["fetch", "images", "--params", str(ROOT / "params.yaml"), "--params", str(real), "--survey",
                     "decals", "--catalog", str(plain), "--chunk", "0", "--out", str(tmp_path / "c.parquet"),
                     "--quarantine", str(tmp_path / "q.parquet"), "--report", str(tmp_path / "r.json")])
    assert code == 2 and "column 'chunk' is missing" in capsys.readouterr().err
    assert not (tmp_path / "c.parquet").exists()

"""Benchmark ``gzmorph fetch images`` against the loopback imitations, with and without injected faults.

    .venv/bin/python bench/bench_fetch.py [--n 600] [--fault-rate 0.1] [--threads 4]

A simulated sky (``--n`` galaxies, 128 px images) is served in the published formats by the imitations of
SkyServer (SDSS cutouts), Zenodo (GZ DECaLS zips, 10 % of galaxies left out) and the Legacy Survey (the
fallback for those), as the tests do (tests/imitations/world.py).  Rate limits are lifted (60,000 requests
per minute), so the figures measure the client: requests, checks, writes.  Each survey is fetched as one
chunk, three ways, each into a fresh directory:

- clean: no faults;
- faults: about ``--fault-rate`` of requests meet a fault, drawn evenly from 503 bursts, 429 with
  Retry-After: 1, stalls past the 0.5 s time-out (before the headers and mid-body), truncated bodies, and HTML
  pages instead of images (those galaxies fail and are quarantined, as they should);
- re-run: the faulted run again with the faults gone (it must fetch only the failed galaxies).

``sdss_zenodo`` is Galaxy Zoo 2 with ``images: zenodo`` (record 3565489 imitated: ``images_gz2.zip`` and
``gz2_filename_mapping.csv``, SkyServer cutouts as the fallback for the galaxies without an asset).  Each of its
runs starts from an empty download directory and is timed end to end: list the record, download the mapping
and the zip, join, extract and check the JPEGs, fetch the fallback cutouts.  Its faults are one each of 502 on
the record listing, 429 with Retry-After: 1, a truncated body and a 503 on the zip, a corrupt (wrong-md5)
mapping download, plus ``--fault-rate`` of the fallback cutouts as above.  Its re-run must download nothing.

"Corrupt files landed" compares every image that landed with the clean run's bytes (the imitations are
deterministic), and checks that it decodes: it must be 0.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

FAULTS = [("status", {"code": 503, "times": 2}), ("status", {"code": 429, "retry_after": 1}),
          ("stall", {"seconds": 1.5}), ("stall_body", {"seconds": 1.5}), ("truncate", {}),
          ("body", {})]


def simulate(workdir: Path, n: int) -> dict:
    import yaml
    from imitations.world import simulate_surveys

    overrides = workdir / "sim.yaml"
    overrides.write_text(yaml.safe_dump({"simulate": {"n_galaxies": n, "image_size": 128,
                                                      "volunteers": {"pool": 500}}}))
    return simulate_surveys(workdir, [ROOT / "params.yaml", overrides], threads=2)


def run_survey(params: dict, survey: str, rows, directory: Path, archives: list[Path] | None) -> tuple[dict, float]:
    from gzmorph import fetch

    start = time.perf_counter()
    _, _, report = fetch.fetch_chunk(params, survey, rows, directory, archive_paths=archives, progress=False)
    return report, time.perf_counter() - start


def inject_faults(service, match: str, n_requests: int, rate: float, rng: random.Random) -> int:
    """Queue about rate x n_requests faults on an image endpoint; return how many requests they spoil."""
    spoiled = 0
    for _ in range(round(rate * n_requests)):
        kind, kw = rng.choice(FAULTS)
        service.inject(kind, match=match, **kw)
        spoiled += kw.get("times", 1)
    return spoiled


def corrupt_landed(directory: Path, clean_dir: Path) -> int:
    from PIL import Image

    bad = 0
    for path in directory.iterdir():
        if path.suffix not in (".jpg", ".png"):
            continue
        try:
            with Image.open(path) as img:
                img.load()
            ok = path.read_bytes() == (clean_dir / path.name).read_bytes()
        except Exception:
            ok = False
        bad += not ok
    return bad


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=600, help="galaxies in the simulated sky")
    ap.add_argument("--fault-rate", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=4, help="real.threads_per_chunk")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--surveys", default="sdss,decals,sdss_zenodo", help="comma-separated runs to make")
    args = ap.parse_args()
    runs = args.surveys.split(",")

    import json

    from imitations.world import serve_world

    from gzmorph import config

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        sim = simulate(tmp, args.n)
        print(f"simulated {len(sim['sdss'])} sdss + {len(sim['decals'])} decals galaxies "
              f"in {time.perf_counter() - t0:.1f} s")
        with serve_world(sim["sdss"], sim["decals"], tmp / "published", zip_parts=2) as world:
            params = config.load(ROOT / "params.yaml")
            params["data_source"] = "real"
            params["real"] = world.real_params(chunks=1, size=128)
            params["real"]["threads_per_chunk"] = args.threads
            params["real"]["http"].update(timeout_s=0.5, retries=4, backoff_s=0.05)
            import os
            os.chdir(tmp)  # the rate-limit state lives under data/real/ of the working directory
            from gzmorph import fetch
            from gzmorph.sources import zenodo

            session = fetch.session_for(params, "zenodo")
            files = zenodo.list_files(session, base_url=world.zenodo.url, record_id=4573248,
                                      settings=fetch.http_settings(params))
            zips = []
            for f in zenodo.select(files, ["gz_decals_dr5_png_part*.zip"]):
                zenodo.download_file(session, f, tmp / "zips", settings=fetch.http_settings(params), progress=False)
                zips.append(tmp / "zips" / f.key)

            rng = random.Random(args.seed)
            results = {}
            for survey, archives in (("sdss", None), ("decals", zips)):
                if survey not in runs:
                    continue
                rows = sim[survey].copy()
                rows["chunk"] = 0
                if survey == "sdss":
                    rows["petro_r90_arcsec"] = rows["truth_petro_r90_arcsec"]
                clean_dir = tmp / f"{survey}_clean"
                clean, t_clean = run_survey(params, survey, rows, clean_dir, archives)
                n_requests = clean["fetched"] if survey == "sdss" else clean["fallback"]
                taken_before = world.faults_taken()
                service, match = (world.skyserver, "getjpeg") if survey == "sdss" else (world.legacysurvey, "cutout")
                spoiled = inject_faults(service, match, n_requests, args.fault_rate, rng)
                fault_dir = tmp / f"{survey}_faults"
                faulty, t_faults = run_survey(params, survey, rows, fault_dir, archives)
                taken = world.faults_taken() - taken_before
                leftover = sum(s.pending_faults() for s in world.services)
                for s in world.services:  # faults a small run did not reach do not spill into the re-run
                    s._faults.clear()
                rerun, t_rerun = run_survey(params, survey, rows, fault_dir, archives)
                results[survey] = {
                    "galaxies": len(rows), "requests_clean": n_requests,
                    "clean_galaxies_per_s": round(len(rows) / t_clean, 1),
                    "faults_injected": taken, "requests_spoiled": spoiled, "faults_not_reached": leftover,
                    "faults_galaxies_per_s": round(len(rows) / t_faults, 1),
                    "ratio_faults_vs_clean": round(t_clean / t_faults, 2),
                    "failed_then_quarantined": faulty["failed"], "failure_reasons": faulty["failure_reasons"],
                    "rerun_fetched": rerun["fetched"] + rerun["fallback"], "rerun_failed": rerun["failed"],
                    "rerun_s": round(t_rerun, 2),
                    "corrupt_files_landed": corrupt_landed(fault_dir, clean_dir),
                }
            if "sdss_zenodo" in runs:
                results["sdss_zenodo"] = bench_gz2_zenodo(world, params, sim["sdss"], tmp, args.fault_rate, rng)
        print(json.dumps(results, indent=2))


def run_gz2_zenodo(params: dict, world, truth, workdir: Path) -> tuple[dict, float, float]:
    """Record listing, downloads, join, then the images of one chunk: (report, download s, total s)."""
    from gzmorph import fetch
    from gzmorph.sources import gz2images, zenodo

    spec = params["real"]["surveys"]["sdss"]
    settings = fetch.http_settings(params)
    start = time.perf_counter()
    session = fetch.session_for(params, "zenodo")
    files = zenodo.select(fetch.record_files(params, spec, session, settings),
                          [spec["mapping_file"], *spec["image_files"]])
    for f in files:
        zenodo.download_file(session, f, workdir / "downloads", settings=settings, progress=False)
    downloaded = time.perf_counter() - start
    rows = truth.copy()
    rows["chunk"] = 0
    rows["petro_r90_arcsec"] = rows["truth_petro_r90_arcsec"]
    rows[gz2images.ASSETS_COLUMN], _ = gz2images.assign_assets(
        rows, gz2images.read_mapping(workdir / "downloads" / spec["mapping_file"]))
    zips = [workdir / "downloads" / f.key for f in files if f.key != spec["mapping_file"]]
    _, _, report = fetch.fetch_chunk(params, "sdss", rows, workdir / "images", archive_paths=zips, progress=False)
    return report, downloaded, time.perf_counter() - start


def bench_gz2_zenodo(world, params: dict, truth, tmp: Path, fault_rate: float, rng: random.Random) -> dict:
    import copy
    import hashlib

    from imitations.world import GZ2_MAPPING, GZ2_ZIP

    params = copy.deepcopy(params)
    params["real"]["surveys"]["sdss"].update(
        {k: v for k, v in world.real_params(gz2_images="zenodo")["surveys"]["sdss"].items()
         if k in ("images", "zenodo_record", "image_files", "mapping_file", "fallback")})

    def content_requests() -> int:
        return len(world.zenodo.requests_to(r"/files/(images_gz2\.zip|gz2_filename_mapping\.csv)/content$"))

    clean, _, t_clean = run_gz2_zenodo(params, world, truth, tmp / "gz2_clean")
    zen = world.zenodo
    taken_before = world.faults_taken()
    zen.inject("status", match="/api/records/3565489", code=502)
    zen.inject("status", match=GZ2_ZIP, code=429, retry_after=1)
    zen.inject("truncate", match=GZ2_ZIP)
    zen.inject("status", match=GZ2_ZIP, code=503)
    zen.inject("corrupt", match=GZ2_MAPPING)
    spoiled = 5 + inject_faults(world.skyserver, "getjpeg", clean["fallback"], fault_rate, rng)
    faulty, t_download, t_faults = run_gz2_zenodo(params, world, truth, tmp / "gz2_faults")
    taken = world.faults_taken() - taken_before
    leftover = sum(s.pending_faults() for s in world.services)
    for s in world.services:
        s._faults.clear()
    n_content = content_requests()
    rerun, _, t_rerun = run_gz2_zenodo(params, world, truth, tmp / "gz2_faults")
    landed_md5_ok = all(
        hashlib.md5(p.read_bytes()).hexdigest() == zen.checksum(p.name).removeprefix("md5:")
        for p in (tmp / "gz2_faults" / "downloads").iterdir() if p.name in (GZ2_ZIP, GZ2_MAPPING))
    return {
        "galaxies": len(truth), "from_zip": clean["fetched"], "fallback_cutouts": clean["fallback"],
        "clean_galaxies_per_s": round(len(truth) / t_clean, 1), "clean_s": round(t_clean, 2),
        "faults_injected": taken, "requests_spoiled": spoiled, "faults_not_reached": leftover,
        "faults_galaxies_per_s": round(len(truth) / t_faults, 1), "faults_s": round(t_faults, 2),
        "faults_download_s": round(t_download, 2), "ratio_faults_vs_clean": round(t_clean / t_faults, 2),
        "failed_then_quarantined": faulty["failed"], "failure_reasons": faulty["failure_reasons"],
        "rerun_fetched": rerun["fetched"] + rerun["fallback"], "rerun_failed": rerun["failed"],
        "rerun_downloads": content_requests() - n_content, "rerun_s": round(t_rerun, 2),
        "downloads_match_md5": landed_md5_ok,
        "corrupt_files_landed": corrupt_landed(tmp / "gz2_faults" / "images", tmp / "gz2_clean" / "images"),
    }


if __name__ == "__main__":
    main()

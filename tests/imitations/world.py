"""The real-data world on loopback: simulated surveys served in the real formats by the service imitations.

:func:`serve_world` takes two canonical catalogs from the simulator (an SDSS-like one with integer ids and a
DECaLS-like one with IAU names), writes them in the published formats (Hart16 CSV, GZ DECaLS volunteers CSV,
PNG zips in the ``J###/<iauname>.png`` layout, and the GZ2 images record: ``images_gz2.zip`` of
``images/<asset_id>.jpg`` with ``gz2_filename_mapping.csv``) and serves them from imitations of SkyServer,
Zenodo (both records), the Legacy Survey viewer and a plain file host.  ``World.real_params()`` is the
``real:`` section pointing at them.

The GZ2 mapping holds the awkward cases (``World.gz2_cases``, see :func:`write_gz2_record`): galaxies with no
row, a row whose JPEG the zip lacks, an objid listed twice (once under another sample with a decoy JPEG,
once with a lower asset id the zip lacks), an identical repeated row, an asset named for two objids, and rows
for objids outside the catalog.

As in the real ``gz_decals_volunteers_5``, some published ``merging`` totals exceed the sum of the listed
answers (:func:`with_retired_answer_votes`); ``World.published`` holds the catalogs as served.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gzmorph.sources import gz2, gzdecals
from imitations.base import Imitation, Reply, Request
from imitations.legacysurvey import LegacySurveyImitation
from imitations.skyserver import SkyServerImitation
from imitations.zenodo import ZenodoImitation, make_jpg_zip, make_png_zip

RECORD = 4573248
CATALOG_FILE = "gz_decals_volunteers_5.csv"
GZ2_RECORD = 3565489
GZ2_ZIP = "images_gz2.zip"
GZ2_MAPPING = "gz2_filename_mapping.csv"


# Excesses cycled over every RETIRED_EVERY-th DECaLS galaxy; the real file has up to ~30.
RETIRED_EXCESS = (3, 30, 1, 12)
RETIRED_EVERY = 3


def with_retired_answer_votes(decals: pd.DataFrame, question: str = "merging") -> pd.DataFrame:
    """A copy whose ``question`` totals also count votes for answers no longer listed (real GZ DECaLS)."""
    out = decals.copy()
    col = f"{question}_total-votes"
    rows = np.arange(0, len(out), RETIRED_EVERY)
    excess = np.resize(np.array(RETIRED_EXCESS, dtype=np.int64), len(rows))
    values = out[col].to_numpy(np.int64).copy()
    values[rows] += excess
    out[col] = values
    return out


class FileHost(Imitation):
    """Static files by name, with Range (where a catalog URL such as gz2_hart16.csv.gz points)."""

    def __init__(self, files: dict[str, Path]) -> None:
        super().__init__()
        self.files = files

    def route(self, request: Request) -> Reply:
        path = self.files.get(request.path.lstrip("/"))
        if path is None:
            return Reply(404, b"<html><body>Not Found</body></html>", "text/html")
        return Reply(200, path.read_bytes(), ranges=True)


def simulate_surveys(workdir: Path, params_files: list[str | Path], threads: int = 1) -> dict[str, pd.DataFrame]:
    """Simulated SDSS and DECaLS catalogs with their PNGs, as ``gzmorph simulate`` writes them: the truth served."""
    from gzmorph import catalog, cli

    args = [a for p in params_files for a in ("--params", str(p))]
    sky = workdir / "sky.parquet"
    if cli.main(["simulate", "sky", *args, "--out", str(sky)]) != 0:
        raise RuntimeError("simulate sky failed")
    out = {}
    for survey in ("sdss", "decals"):
        cat = workdir / f"{survey}.parquet"
        if cli.main(["simulate", "survey", *args, "--survey", survey, "--sky", str(sky), "--images",
                     str(workdir / survey), "--catalog", str(cat), "--threads", str(threads), "--no-progress"]) != 0:
            raise RuntimeError(f"simulate survey {survey} failed")
        out[survey] = catalog.load(cat)
    return out


@dataclass
class World:
    skyserver: SkyServerImitation
    zenodo: ZenodoImitation
    legacysurvey: LegacySurveyImitation
    files: FileHost
    not_in_zips: list[str]        # DECaLS galaxies left out of the zips (the fallback must fetch them)
    published: dict[str, pd.DataFrame]  # the canonical catalogs as served (DECaLS with retired-answer votes)
    gz2_cases: dict[str, list[str]]  # GZ2 objids by mapping case (write_gz2_record)
    gz2_own_assets: dict[str, int]  # objid -> the asset id of its own JPEG (whether the mapping or zip has it)

    @property
    def gz2_fallback(self) -> list[str]:
        """GZ2 galaxies the zip cannot serve: no row, their JPEG missing, or only an ambiguous asset."""
        c = self.gz2_cases
        return sorted({*c["no_row"], *c["missing_from_zip"], *c["ambiguous_only"]})

    @property
    def gz2_assets(self) -> dict[str, int]:
        """objid -> asset, for the galaxies the zip serves (their image is that JPEG, byte for byte)."""
        fallback = set(self.gz2_fallback)
        return {objid: a for objid, a in self.gz2_own_assets.items() if objid not in fallback}

    @property
    def services(self) -> list[Imitation]:
        return [self.skyserver, self.zenodo, self.legacysurvey, self.files]

    def real_params(self, *, chunks: int = 2, size: int = 96, max_galaxies: int | None = None,
                    gz2_images: str = "skyserver") -> dict[str, Any]:
        """The ``real:`` section; ``gz2_images="zenodo"`` takes GZ2 images from the record, SkyServer as fallback."""
        gz2_zenodo = {"images": "zenodo", "zenodo_record": GZ2_RECORD, "image_files": [GZ2_ZIP],
                      "mapping_file": GZ2_MAPPING, "fallback": "skyserver"}
        return {
            "chunks": chunks, "max_galaxies": max_galaxies, "threads_per_chunk": 2,
            "http": {"timeout_s": 2.0, "retries": 4, "backoff_s": 0.05, "backoff_max_s": 1.0},
            "services": {
                "skyserver": {"base_url": self.skyserver.url, "data_release": 17, "requests_per_minute": 60000},
                "zenodo": {"base_url": self.zenodo.url, "requests_per_minute": 60000},
                "legacysurvey": {"base_url": self.legacysurvey.url, "requests_per_minute": 60000},
            },
            "surveys": {
                "sdss": {
                    "catalog": "gz2-hart16", "location": f"{self.files.url}/gz2_hart16.csv.gz",
                    "samples": ["original", "extra"], "min_total_votes": 0, "images": "skyserver", "fallback": "none",
                    "skyserver_cutout": {"size": size, "scale": "petrosian", "petrosian_factor": 0.02,
                                         "fixed_scale": 0.396},
                    **(gz2_zenodo if gz2_images == "zenodo" else {}),
                },
                "decals": {
                    "catalog": "gz-decals-dr5", "zenodo_record": RECORD, "catalog_file": CATALOG_FILE,
                    "min_total_votes": 0, "images": "zenodo", "image_files": ["gz_decals_dr5_png_part*.zip"],
                    "fallback": "legacysurvey",
                    "legacysurvey_cutout": {"layer": "ls-dr9", "pixscale": 0.262, "size": size},
                },
            },
        }

    def faults_taken(self) -> int:
        return sum(len(s.faults_taken) for s in self.services)


def _image_table(df: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"ra": df["ra"].to_numpy(float), "dec": df["dec"].to_numpy(float),
                         "file_loc": df["file_loc"].astype(str).to_numpy()})


def write_world_files(sdss: pd.DataFrame, decals: pd.DataFrame, directory: Path, *, zip_parts: int = 2,
                      left_out: float = 0.1) -> tuple[dict[str, Path], dict[str, Path], list[str]]:
    """The published files: (file-host files, Zenodo record files, iaunames left out of the zips)."""
    directory.mkdir(parents=True, exist_ok=True)
    hart16 = gz2.from_canonical(sdss)
    hart16_path = directory / "gz2_hart16.csv.gz"
    hart16.to_csv(hart16_path, index=False)

    volunteers_path = directory / CATALOG_FILE
    gzdecals.from_canonical(decals).to_csv(volunteers_path, index=False)
    names = decals["id_str"].astype(str).tolist()
    n_out = int(round(len(names) * left_out))
    not_in_zips = names[::max(1, len(names) // max(n_out, 1))][:n_out]
    zipped = [n for n in names if n not in set(not_in_zips)]
    record: dict[str, Path] = {CATALOG_FILE: volunteers_path}
    locs = dict(zip(names, decals["file_loc"].astype(str), strict=True))
    for part in range(zip_parts):
        members = {n: Path(locs[n]).read_bytes() for n in zipped[part::zip_parts]}
        extra = {"../outside.png": b"zip-slip", "/etc/absolute.png": b"absolute"} if part == 0 else {}
        key = f"gz_decals_dr5_png_part{part + 1}.zip"
        record[key] = make_png_zip(directory / key, members, extra)
    return {"gz2_hart16.csv.gz": hart16_path}, record, not_in_zips


def write_gz2_record(sdss: pd.DataFrame, directory: Path) -> tuple[dict[str, Path], dict[str, list[str]],
                                                                     dict[str, int]]:
    """``images_gz2.zip`` and ``gz2_filename_mapping.csv`` for the SDSS galaxies: (record files, cases, own assets).

    Galaxy i's asset is 101 + 3 i, its JPEG the simulated one, byte for byte.  Cases, by catalog position:
    every i % 10 == 2 has no row (``no_row``); 5's JPEG is not in the zip (``missing_from_zip``); 7 is listed
    first under sample stripe82 with a decoy JPEG, then under its own sample (``other_sample_first``: the own
    sample wins); 9 also has asset 50, lower than its own and not in the zip (``lower_asset_missing``: the next
    candidate serves); 11's row is repeated verbatim (``identical_rows``); 14's asset is also listed for 16
    (``ambiguous_only``: 14 falls back; 16 keeps its own asset).  Three rows name objids outside the catalog.
    """
    ids = sdss["id_str"].astype(str).tolist()
    if len(ids) < 20:
        raise ValueError(f"the GZ2 record needs at least 20 SDSS galaxies, got {len(ids)}")
    locs = sdss["file_loc"].astype(str).tolist()
    asset = {objid: 101 + 3 * i for i, objid in enumerate(ids)}
    cases = {"no_row": [ids[i] for i in range(len(ids)) if i % 10 == 2], "missing_from_zip": [ids[5]],
             "other_sample_first": [ids[7]], "lower_asset_missing": [ids[9]], "identical_rows": [ids[11]],
             "ambiguous_only": [ids[14]], "ambiguous_kept": [ids[16]]}
    rows: list[tuple[str, str, int]] = []
    for i, objid in enumerate(ids):
        if objid in cases["no_row"]:
            continue
        if i == 7:
            rows.append((objid, "stripe82", 90_007))  # a decoy: another galaxy's picture under another sample
        if i == 9:
            rows.append((objid, "original", 50))
        rows.append((objid, "original", asset[objid]))
        if i == 11:
            rows.append((objid, "original", asset[objid]))
        if i == 16:
            rows.append((objid, "original", asset[ids[14]]))
    rows += [(str(8_647_474_690_000_000_000 + k), "stripe82_coadd_1", 95_000 + k) for k in range(3)]
    mapping_path = directory / GZ2_MAPPING
    pd.DataFrame(rows, columns=["objid", "sample", "asset_id"]).to_csv(mapping_path, index=False)

    jpgs = {asset[objid]: Path(loc).read_bytes() for objid, loc in zip(ids, locs, strict=True)
            if objid not in cases["no_row"] and objid != ids[5]}
    jpgs[90_007] = Path(locs[0]).read_bytes()
    jpgs.update({95_000 + k: Path(locs[1]).read_bytes() for k in range(3)})
    extras = {f"__MACOSX/images/._{asset[ids[0]]}.jpg": b"\x00\x05\x16\x07 resource fork",
              "../outside.jpg": b"zip-slip"}
    zip_path = make_jpg_zip(directory / GZ2_ZIP, jpgs, extra_members=extras)
    return {GZ2_ZIP: zip_path, GZ2_MAPPING: mapping_path}, cases, asset


@contextlib.contextmanager
def serve_world(sdss: pd.DataFrame, decals: pd.DataFrame, directory: Path, **kw: Any) -> Iterator[World]:
    """Start the four imitations for the two catalogs; stop them on exit."""
    decals = with_retired_answer_votes(decals)
    host_files, record_files, not_in_zips = write_world_files(sdss, decals, directory, **kw)
    gz2_files, gz2_cases, gz2_own_assets = write_gz2_record(sdss, directory)
    sky = _image_table(sdss)
    sky["dr7objid"] = sdss["id_str"].astype("int64").to_numpy()
    sky["dr8objid"] = sky["dr7objid"] + 1
    sky["petroR90_r"] = sdss["truth_petro_r90_arcsec"].to_numpy(float)
    with contextlib.ExitStack() as stack:
        zenodo = ZenodoImitation(RECORD, record_files)
        zenodo.add_record(GZ2_RECORD, gz2_files, title="Galaxy Zoo 2: images (imitation)")
        world = World(
            skyserver=stack.enter_context(SkyServerImitation(sky)),
            zenodo=stack.enter_context(zenodo),
            legacysurvey=stack.enter_context(LegacySurveyImitation(_image_table(decals))),
            files=stack.enter_context(FileHost(host_files)),
            not_in_zips=not_in_zips,
            published={"sdss": sdss, "decals": decals},
            gz2_cases=gz2_cases,
            gz2_own_assets=gz2_own_assets,
        )
        yield world

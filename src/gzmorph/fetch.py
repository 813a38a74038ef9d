"""``gzmorph fetch``: real Galaxy Zoo catalogs and images (``data_source: real``).

Sub-commands, one per Snakemake rule (``workflow/rules/fetch.smk``):

- ``catalog``: read a published vote catalog (GZ2 Hart16 from a path or URL, GZ DECaLS volunteers from
  Zenodo), map it to the canonical catalog, apply the sample and vote filters, join GZ2 to the Zenodo image
  record's filename mapping (``asset_ids``, see :mod:`gzmorph.sources.gz2images`) when its images come from
  there, add Petrosian radii when cutouts are scaled by them, and deal the galaxies into ``real.chunks`` chunks.
- ``archives``: download the Zenodo image zips (md5-verified, resumable): GZ DECaLS PNGs or GZ2 JPEGs.
- ``images``: fetch one chunk's images (SkyServer or Legacy Survey cutouts, or members of the zips, with
  a fallback source), checking each one; failures go to the chunk's quarantine table, not to a crash.
- ``gather``: join the chunks into ``data/catalogs/<survey>.parquet`` and a fetch report.
- ``estimate``: print files, bytes and expected time before fetching anything big.

Published totals above the sum of their answers (GZ DECaLS ``merging``, see :mod:`gzmorph.catalog`) are kept;
the catalog, chunk and gather reports count them per question under ``total_above_answers``
(``{question: {"rows": ..., "max_excess": ...}}``, from :func:`gzmorph.catalog.total_excess`).

Images land in ``data/real/<survey>/images/<chunk>/`` one atomic write at a time and are never declared
as a rule's output, so an interrupted or failed job keeps them and its re-run fetches only what is missing.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gzmorph.config import UserError

log = logging.getLogger(__name__)

REAL_DIR = Path("data/real")
# Shared pacing state of each service, for every fetch job on this machine (see net.RateLimiter);
# real.rate_limit.dir moves it (e.g. onto a file system all cluster nodes share).
RATE_DIR = REAL_DIR / ".ratelimit"
QUARANTINE_COLUMNS = ("id_str", "ra", "dec", "chunk", "source", "reason")
# Rough body sizes for estimates only: a 424 px JPEG cutout (mostly dark sky) and a GZ DECaLS PNG.
TYPICAL_BYTES = {"skyserver": 30_000, "legacysurvey": 30_000, "zenodo": 250_000}
# Galaxies in the published catalogs, for estimates before the catalog is fetched.
PUBLISHED_ROWS = {"gz2-hart16": {"original": 209_294, "extra": 21_844, "stripe82": 8_557}, "gz-decals-dr5": 253_286}
PUBLISHED_DECALS_BYTES = 100 * 10**9  # the four GZ DECaLS DR5 PNG zips, ~100 GB together
# Zenodo record 3565489 as its landing page lists it: images_gz2.zip 3.4 GB, gz2_filename_mapping.csv 13 MB
# (243,434 JPEGs of ~14 kB). Only used when the record cannot be listed; the listing gives exact sizes.
PUBLISHED_GZ2_BYTES = 3_400_000_000 + 13_000_000
MAX_IMAGE_BYTES = 16 << 20
# objids per SkyServer SQL search: two IN-lists of 200 keep the GET under ~8 kB, within common URL limits.
SQL_BATCH = 200


# --------------------------------------------------------------------------- settings and sessions


def survey_spec(params: dict[str, Any], survey: str) -> dict[str, Any]:
    if params["data_source"] != "real":
        raise UserError(f"data_source is {params['data_source']!r}: set it to 'real' to fetch real data "
                        "(e.g. --params params/real.yaml)")
    surveys = params["real"]["surveys"]
    if survey not in surveys:
        raise UserError(f"real.surveys: no survey {survey!r}; surveys: {', '.join(surveys)}")
    return surveys[survey]


def http_settings(params: dict[str, Any]) -> Any:
    from gzmorph.net import HttpSettings

    return HttpSettings.from_params(params["real"]["http"])


def session_for(params: dict[str, Any], service: str | None, pool_size: int = 4) -> Any:
    """A session for ``service`` paced by its shared rate limit (no pacing for plain URLs)."""
    from gzmorph.net import make_session

    limiter = rate_limiter(params, service) if service is not None else None
    return make_session(http_settings(params), limiter, pool_size=pool_size)


def rate_limiter(params: dict[str, Any], service: str) -> Any:
    """The pace of ``service``: its requests_per_minute divided by ``real.rate_limit.nodes``, shared through
    ``<real.rate_limit.dir>/<service>`` by every fetch job that sees that file (see :class:`gzmorph.net.RateLimiter`).

    On one machine, or with ``dir`` on a file system all nodes share with working ``fcntl`` locks, leave
    ``nodes`` at 1.  With ``dir`` on node-local storage each node paces itself alone; set ``nodes`` to the
    number of nodes that fetch at once so that together they stay within the service's limit.
    """
    from gzmorph.net import RateLimiter

    limit = params["real"].get("rate_limit") or {}
    nodes = int(limit.get("nodes", 1))
    state_dir = Path(limit["dir"]) if limit.get("dir") else RATE_DIR
    return RateLimiter(params["real"]["services"][service]["requests_per_minute"] / nodes, state_dir / service)


def record_files(params: dict[str, Any], spec: dict[str, Any], session: Any, settings: Any) -> list[Any]:
    """The files of the survey's Zenodo record (real.surveys.<survey>.zenodo_record)."""
    from gzmorph.sources import zenodo

    return zenodo.list_files(session, base_url=params["real"]["services"]["zenodo"]["base_url"],
                             record_id=spec["zenodo_record"], settings=settings)


def record_dir(downloads: str | Path, spec: dict[str, Any]) -> Path:
    """Where the record's files are downloaded."""
    return Path(downloads) / "zenodo" / str(spec["zenodo_record"])


def is_url(location: str) -> bool:
    return location.startswith(("http://", "https://"))


# --------------------------------------------------------------------------- catalog


def read_catalog(params: dict[str, Any], survey: str, downloads: Path, progress: bool = True
                 ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The survey's canonical catalog after the filters, and what the filters removed."""
    from gzmorph import net
    from gzmorph.sources import gz2, gzdecals, zenodo

    spec = survey_spec(params, survey)
    settings = http_settings(params)
    if spec["catalog"] == "gz2-hart16":
        location = spec["location"]
        if is_url(location):
            path = downloads / Path(location.split("?")[0]).name
            net.download(session_for(params, None), location, path, settings=settings, progress=progress)
        else:
            path = Path(location)
            if not path.exists():
                raise UserError(f"real.surveys.{survey}.location: no such file {location}")
        canonical = gz2.to_canonical(gz2.read_hart16(path), survey=survey, path=str(path))
        kept, dropped = gz2.filter_catalog(canonical, samples=spec.get("samples"),
                                           min_total_votes=spec["min_total_votes"])
    else:
        session = session_for(params, "zenodo")
        (record_file,) = zenodo.select(record_files(params, spec, session, settings), [spec["catalog_file"]])
        directory = record_dir(downloads, spec)
        zenodo.download_file(session, record_file, directory, settings=settings, progress=progress)
        path = directory / record_file.key
        canonical = gzdecals.to_canonical(gzdecals.read_volunteers(path), survey=survey, path=str(path))
        kept, dropped = gzdecals.filter_catalog(canonical, min_total_votes=spec["min_total_votes"])
    stats = {"source": str(path), "rows": len(canonical), "dropped": dropped}
    limit = params["real"]["max_galaxies"]
    if limit is not None and len(kept) > limit:
        stats["dropped"] = {**dropped, "max_galaxies": len(kept) - limit}
        kept = kept.iloc[:limit].reset_index(drop=True)
    if spec["catalog"] == "gz2-hart16" and spec["images"] == "zenodo":
        kept, stats["mapping"] = add_gz2_assets(kept, params, spec, downloads, progress)
    return kept, stats


def add_gz2_assets(df: pd.DataFrame, params: dict[str, Any], spec: dict[str, Any], downloads: Path,
                   progress: bool) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Add the ``asset_ids`` column from the record's filename mapping (dr7objid = objid), and the join's counts."""
    from gzmorph.sources import gz2images, zenodo

    settings = http_settings(params)
    session = session_for(params, "zenodo")
    (record_file,) = zenodo.select(record_files(params, spec, session, settings), [spec["mapping_file"]])
    directory = record_dir(downloads, spec)
    zenodo.download_file(session, record_file, directory, settings=settings, progress=progress)
    path = directory / record_file.key
    assets, stats = gz2images.assign_assets(df, gz2images.read_mapping(path))
    return df.assign(**{gz2images.ASSETS_COLUMN: assets}), {"file": str(path), **stats}


def add_petrosian_radii(df: pd.DataFrame, params: dict[str, Any], spec: dict[str, Any]) -> pd.DataFrame:
    """Add ``petro_r90_arcsec`` where SkyServer cutouts are scaled by it (GZ2 style)."""
    uses = [s for s in (spec["images"], spec.get("fallback", "none")) if s == "skyserver"]
    if not uses or spec["skyserver_cutout"]["scale"] != "petrosian" or "petro_r90_arcsec" in df.columns:
        return df
    df = df.copy()
    if "petro_th90" in df.columns:  # GZ DECaLS carries its own Petrosian radius
        df["petro_r90_arcsec"] = pd.to_numeric(df["petro_th90"], errors="coerce")
        return df
    from gzmorph.sources import skyserver

    sky = params["real"]["services"]["skyserver"]
    # Exact int64 parsing: objids exceed 2**53, and one bad id must not push the column through float.
    objids = [int(i) for i in df["id_str"].astype(str) if i.isdigit()]
    radii = skyserver.petrosian_radii(
        objids, base_url=sky["base_url"], data_release=sky["data_release"], batch=SQL_BATCH,
        timeout=params["real"]["http"]["timeout_s"], settings=http_settings(params),
        limiter=rate_limiter(params, "skyserver"))
    lookup = dict(zip(radii["dr7objid"].astype(str), radii["petroR90_r"].astype(float), strict=True))
    df["petro_r90_arcsec"] = df["id_str"].map(lookup).astype(float)
    missing = int(df["petro_r90_arcsec"].isna().sum())
    if missing:
        log.warning("%d of %d galaxies have no petroR90_r from SkyServer; their cutouts use fixed_scale",
                    missing, len(df))
    return df


def deal_chunks(n: int, chunks: int) -> np.ndarray:
    """Chunk of each row: round-robin, so chunks are equal in size and in sky coverage."""
    return np.arange(n, dtype=np.int64) % chunks


def run_catalog(args: argparse.Namespace) -> None:
    from gzmorph import catalog, config
    from gzmorph.io import write_json, write_parquet

    params = config.load(args.params)
    spec = survey_spec(params, args.survey)
    df, stats = read_catalog(params, args.survey, Path(args.downloads), progress=not args.no_progress)
    df = add_petrosian_radii(df, params, spec)
    df["chunk"] = deal_chunks(len(df), params["real"]["chunks"])
    tree = catalog.validate(df, args.out)
    write_parquet(args.out, df)
    stats.update(galaxies=len(df), chunks=params["real"]["chunks"], total_above_answers=catalog.total_excess(df, tree))
    write_json(args.report, stats)
    log.info("%s: %d galaxies in %d chunks (read %d rows from %s; dropped %s)", args.survey, len(df),
             params["real"]["chunks"], stats["rows"], stats["source"], stats["dropped"])
    if "mapping" in stats:
        m = stats["mapping"]
        log.info("%s: %d galaxies have an asset in %s, %d have none (the fallback, %s, fetches those); "
                 "%d have several assets, %d ambiguous assets are unused", args.survey, m["with_asset"],
                 Path(m["file"]).name, m["without_asset"], spec.get("fallback", "none"),
                 m["galaxies_with_several_assets"], m["ambiguous_assets"])
    log_total_excess(args.survey, stats["total_above_answers"])


def log_total_excess(what: str, excess: dict[str, dict[str, int]]) -> None:
    """One info line naming the questions whose published totals exceed their answer sums, if any."""
    over = {q: e for q, e in excess.items() if e["rows"]}
    if over:
        log.info("%s: published totals above the answer sum (kept; N = the answer sum): %s", what,
                 ", ".join(f"{q} {e['rows']} rows (max +{e['max_excess']})" for q, e in over.items()))


# --------------------------------------------------------------------------- archives (Zenodo zips)


def run_archives(args: argparse.Namespace) -> None:
    from gzmorph import config
    from gzmorph.io import write_json
    from gzmorph.sources import zenodo

    params = config.load(args.params)
    spec = survey_spec(params, args.survey)
    if spec["images"] != "zenodo":
        raise UserError(f"real.surveys.{args.survey}.images is {spec['images']!r}: it has no Zenodo archives")
    settings = http_settings(params)
    session = session_for(params, "zenodo")
    chosen = zenodo.select(record_files(params, spec, session, settings), spec["image_files"])
    directory = record_dir(args.downloads, spec)
    outcomes = {}
    for f in chosen:
        outcomes[f.key] = zenodo.download_file(session, f, directory, settings=settings,
                                               progress=not args.no_progress)
        log.info("%s: %s (%.1f MB)", f.key, outcomes[f.key], f.size / 1e6)
    write_json(args.out, {"record": spec["zenodo_record"], "files": [
        {"key": f.key, "path": str(directory / f.key), "size": f.size, "md5": f.md5, "outcome": outcomes[f.key]}
        for f in chosen]})


# --------------------------------------------------------------------------- images


@dataclass(frozen=True)
class Outcome:
    id_str: str
    file_loc: str | None   # None when the galaxy is quarantined
    status: str            # skipped (already there), fetched, fallback, failed
    source: str
    reason: str | None = None


def image_name(id_str: str, ext: str) -> str:
    # ids are objids or IAU names; neither holds a path separator, but a catalog is input: be safe.
    return id_str.replace("/", "_").replace("\\", "_") + ext


EXTENSIONS = {"skyserver": ".jpg", "legacysurvey": ".jpg", "zenodo": ".png"}
ZIP_FORMATS = {"gz-decals-dr5": ("PNG", ".png"), "gz2-hart16": ("JPEG", ".jpg")}  # what each survey's zips hold


def extension(spec: dict[str, Any], source: str) -> str:
    """The file extension of a survey's images from ``source`` (the zips: PNGs for GZ DECaLS, JPEGs for GZ2)."""
    return ZIP_FORMATS[spec["catalog"]][1] if source == "zenodo" else EXTENSIONS[source]


class ImageSources:
    """Fetchers of one survey's images, by source name; each returns checked image bytes or raises."""

    def __init__(self, params: dict[str, Any], spec: dict[str, Any], archive_paths: Sequence[Path] | None,
                 pool_size: int) -> None:
        import threading

        from gzmorph import archives

        self.spec = spec
        self.settings = http_settings(params)
        self.services = params["real"]["services"]
        self.sessions = {s: session_for(params, s, pool_size) for s in ("skyserver", "legacysurvey")}
        # One reader keeps each zip open (its central directory parsed once, not once per galaxy); the lock
        # serialises extraction, which is disk-bound anyway.
        self.reader = archives.ZipReader()
        self.zip_lock = threading.Lock()
        self.archive_index: dict[str, tuple[Path, str]] = {}
        self.asset_index: dict[int, tuple[Path, str]] = {}  # GZ2: asset_id -> (zip, member)
        if archive_paths:
            found = archives.index(archive_paths, reader=self.reader)
            self.archive_index = found.members
            if spec["catalog"] == "gz2-hart16":
                from gzmorph.sources import gz2images

                assets, repeated = gz2images.member_assets(found.members)
                self.asset_index = {a: found.members[name] for a, name in assets.items()}
                if repeated:
                    log.warning("%d zip members name an asset already found (e.g. %s); the first is used",
                                len(repeated), repeated[0])

    def extension(self, source: str) -> str:
        return extension(self.spec, source)

    def close(self) -> None:
        self.reader.close()
        for session in self.sessions.values():
            session.close()

    def fetch(self, source: str, row: pd.Series, target: Path) -> None:
        from gzmorph.io import write_bytes

        if source == "zenodo":
            self._extract(row, target)
            return
        data = self._cutout(source, row)
        write_bytes(target, data)

    def _cutout(self, source: str, row: pd.Series) -> bytes:
        from gzmorph.sources import legacysurvey, skyserver

        if source == "skyserver":
            cut, sky = self.spec["skyserver_cutout"], self.services["skyserver"]
            r90 = row.get("petro_r90_arcsec")
            scale = skyserver.cutout_scale(cut["scale"], petro_r90=None if r90 is None or pd.isna(r90) else float(r90),
                                           petrosian_factor=cut["petrosian_factor"], fixed_scale=cut["fixed_scale"])
            return skyserver.fetch_cutout(self.sessions["skyserver"], base_url=sky["base_url"],
                                          data_release=sky["data_release"], ra=float(row["ra"]),
                                          dec=float(row["dec"]), scale=scale, size=cut["size"], settings=self.settings)
        cut = self.spec["legacysurvey_cutout"]
        base_url = self.services["legacysurvey"]["base_url"]
        return legacysurvey.fetch_cutout(self.sessions["legacysurvey"], base_url=base_url, ra=float(row["ra"]),
                                         dec=float(row["dec"]), layer=cut["layer"], pixscale=cut["pixscale"],
                                         size=cut["size"], settings=self.settings)

    def _extract(self, row: pd.Series, target: Path) -> None:
        from gzmorph import archives
        from gzmorph.io import atomic_path
        from gzmorph.net import FetchError
        from gzmorph.sources import gzdecals
        from gzmorph.sources.images import check_image

        if self.spec["catalog"] == "gz2-hart16":
            entry = self._gz2_entry(row)
        else:
            loc = row.get("png_loc")
            member = gzdecals.member_from_png_loc(str(loc)) if isinstance(loc, str) and loc else None
            entry = self.archive_index.get(member) if member else None
            if entry is None:
                entry = self.archive_index.get(gzdecals.zip_member(str(row["id_str"])))
            if entry is None:
                raise FetchError("not in the image archives")
        zip_path, name = entry
        image_format = ZIP_FORMATS[self.spec["catalog"]][0]
        try:
            # The image is checked under a temporary name: only a good one ever appears as ``target``, so a
            # re-run that finds the file can trust it.
            with atomic_path(target) as tmp:
                with self.zip_lock:
                    archives.extract(zip_path, name, tmp, max_bytes=MAX_IMAGE_BYTES, reader=self.reader)
                check_image(tmp.read_bytes(), size=None, formats=(image_format,))
        except archives.ArchiveError as exc:
            raise FetchError(str(exc)) from None

    def _gz2_entry(self, row: pd.Series) -> tuple[Path, str]:
        """The zip member of the galaxy's first candidate asset that the zips hold (see gz2images)."""
        from gzmorph.net import FetchError
        from gzmorph.sources import gz2images

        assets = gz2images.candidates(row.get(gz2images.ASSETS_COLUMN))
        if not assets:
            raise FetchError(f"no asset in {self.spec['mapping_file']} for objid {row['id_str']}")
        for asset in assets:
            entry = self.asset_index.get(asset)
            if entry is not None:
                return entry
        shown = ", ".join(f"{a}.jpg" for a in assets)
        raise FetchError(f"asset {shown} not in the image archives")


def fetch_one(sources: ImageSources, row: pd.Series, images_dir: Path, chain: Sequence[str]) -> Outcome:
    """The galaxy's image from the first source in ``chain`` that has it; never raises for a bad galaxy."""
    from gzmorph.net import FetchError

    id_str = str(row["id_str"])
    for source in chain:  # an image from an earlier run, whichever source gave it, is kept
        existing = images_dir / image_name(id_str, sources.extension(source))
        if existing.exists():
            return Outcome(id_str, str(existing), "skipped", source)
    reasons = []
    for i, source in enumerate(chain):
        target = images_dir / image_name(id_str, sources.extension(source))
        try:
            sources.fetch(source, row, target)
            return Outcome(id_str, str(target), "fetched" if i == 0 else "fallback", source)
        except FetchError as exc:
            reasons.append(f"{source}: {exc}")
        except Exception as exc:  # a bug or an odd response for one galaxy must not stop the chunk
            reasons.append(f"{source}: unexpected {type(exc).__name__}: {exc}")
    return Outcome(id_str, None, "failed", chain[-1], "; ".join(reasons))


# (text in a failure reason, its class in the fetch report), first match wins
REASON_CLASSES = (
    ("timed out", "timed out"), ("IncompleteRead", "truncated body"), ("truncated", "truncated body"),
    ("no such layer", "no such layer"), ("not an image", "not an image"), ("undecodable", "undecodable image"),
    ("not in the image archives", "not in the image archives"), ("no asset in", "no asset in the mapping"),
    ("md5", "md5 mismatch"),
    ("over the", "too large"), ("expected", "wrong image size"), ("retries exhausted", "retries exhausted"),
    ("Connection", "connection failed"),
)


def reason_class(reason: str) -> str:
    """A short class of a failure reason, for the report's tally (``HTTP 503``, ``timed out``, ...)."""
    http = re.search(r"HTTP (\d{3})", reason)
    if http:
        return f"HTTP {http.group(1)}"
    for needle, label in REASON_CLASSES:
        if needle in reason:
            return label
    return reason.rsplit(": ", 1)[-1][:40]


def fetch_chunk(params: dict[str, Any], survey: str, rows: pd.DataFrame, images_dir: Path, *,
                archive_paths: Sequence[Path] | None = None, progress: bool = True
                ) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Fetch the images of ``rows``; return (catalog rows with file_loc, quarantine rows, report)."""
    from tqdm import tqdm

    from gzmorph.sources import gz2images

    spec = survey_spec(params, survey)
    chain = [spec["images"]] + ([spec["fallback"]] if spec.get("fallback", "none") != "none" else [])
    if spec["images"] == "zenodo" and not archive_paths:  # else every galaxy would quietly take the fallback
        raise UserError(f"real.surveys.{survey}.images is zenodo: give the zips with --archives "
                        "(the manifest `gzmorph fetch archives` writes)")
    if spec["catalog"] == "gz2-hart16" and spec["images"] == "zenodo" and gz2images.ASSETS_COLUMN not in rows:
        raise UserError(f"the catalog has no {gz2images.ASSETS_COLUMN!r} column (the join with "
                        f"{spec['mapping_file']}): make it again with `gzmorph fetch catalog` for images: zenodo")
    threads = params["real"]["threads_per_chunk"]
    images_dir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    records = [row for _, row in rows.iterrows()]
    sources = ImageSources(params, spec, archive_paths, pool_size=threads)
    try:
        with ThreadPoolExecutor(threads) as pool, tqdm(total=len(records), unit="galaxy", desc=f"fetch {survey}",
                                                       file=sys.stderr, disable=not progress, mininterval=1.0) as bar:
            outcomes = []
            for outcome in pool.map(lambda r: fetch_one(sources, r, images_dir, chain), records):
                outcomes.append(outcome)
                bar.update(1)
    finally:
        sources.close()
    seconds = time.monotonic() - start

    by_id = {o.id_str: o for o in outcomes}
    ok = rows["id_str"].astype(str).map(lambda i: by_id[i].file_loc is not None).to_numpy(bool)
    fetched = rows.loc[ok].copy()
    fetched["file_loc"] = fetched["id_str"].astype(str).map(lambda i: by_id[i].file_loc)
    failed = [o for o in outcomes if o.file_loc is None]
    bad = rows.loc[~ok, ["id_str", "ra", "dec", "chunk"]].copy()
    bad["source"] = [by_id[str(i)].source for i in bad["id_str"]]
    bad["reason"] = [by_id[str(i)].reason for i in bad["id_str"]]
    status = Counter(o.status for o in outcomes)
    report = {
        "survey": survey, "galaxies": len(rows), "fetched": status["fetched"], "fallback": status["fallback"],
        "skipped": status["skipped"], "failed": status["failed"], "seconds": round(seconds, 2),
        "galaxies_per_s": round(len(rows) / seconds, 2) if seconds > 0 else None,
        "by_source": dict(Counter(o.source for o in outcomes if o.file_loc is not None)),
        "failure_reasons": dict(Counter(reason_class(o.reason or "") for o in failed).most_common()),
    }
    return fetched.reset_index(drop=True), bad.reset_index(drop=True)[list(QUARANTINE_COLUMNS)], report


def archive_paths(manifest_path: str | None) -> list[Path] | None:
    """The zips listed by ``fetch archives``; each was md5-checked when it was downloaded."""
    if manifest_path is None:
        return None
    manifest = json.loads(Path(manifest_path).read_text())
    return [Path(f["path"]) for f in manifest["files"]]


def run_images(args: argparse.Namespace) -> None:
    from gzmorph import catalog, config
    from gzmorph.io import write_json, write_parquet

    params = config.load(args.params)
    chunks = params["real"]["chunks"]
    if not 0 <= args.chunk < chunks:
        raise UserError(f"--chunk {args.chunk} is outside 0..{chunks - 1} (real.chunks is {chunks})")
    df = catalog.load(args.catalog)
    if "chunk" not in df.columns:
        raise UserError(f"{args.catalog}: column 'chunk' is missing; make the catalog with `gzmorph fetch catalog`")
    tree = catalog.validate(df.iloc[:1], args.catalog)  # load checked every row; this names the tree
    rows = df[df["chunk"] == args.chunk].reset_index(drop=True)
    images_dir = REAL_DIR / args.survey / "images" / f"{args.chunk:04d}" if args.images is None else Path(args.images)
    fetched, bad, report = fetch_chunk(params, args.survey, rows, images_dir,
                                       archive_paths=archive_paths(args.archives),
                                       progress=not args.no_progress)
    report["chunk"] = args.chunk
    report["total_above_answers"] = catalog.total_excess(rows, tree)
    write_parquet(args.quarantine, bad)
    write_parquet(args.out, fetched)
    write_json(args.report, report)
    log.info("chunk %d: %d fetched, %d from the fallback, %d already there, %d failed (%.1f galaxies/s)",
             args.chunk, report["fetched"], report["fallback"], report["skipped"], report["failed"],
             report["galaxies_per_s"] or 0.0)
    if report["failed"]:
        log.warning("chunk %d: %d galaxies quarantined in %s: %s", args.chunk, report["failed"], args.quarantine,
                    report["failure_reasons"])


# --------------------------------------------------------------------------- gather


def gather(chunk_paths: Sequence[str], quarantine_paths: Sequence[str], report_paths: Sequence[str]
           ) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    frames = [pd.read_parquet(p) for p in chunk_paths]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    bad = pd.concat([pd.read_parquet(p) for p in quarantine_paths], ignore_index=True)
    reports = [json.loads(Path(p).read_text()) for p in report_paths]
    reasons: Counter[str] = Counter()
    for r in reports:
        reasons.update(r["failure_reasons"])
    totals = {k: sum(r[k] for r in reports) for k in ("galaxies", "fetched", "fallback", "skipped", "failed")}
    summary = {**totals, "chunks": len(reports), "in_catalog": len(df), "quarantined": len(bad),
               "failure_reasons": dict(reasons.most_common()),
               "seconds_summed": round(sum(r["seconds"] for r in reports), 2)}
    return df.drop(columns=["chunk"], errors="ignore"), bad, summary


def run_gather(args: argparse.Namespace) -> None:
    from gzmorph import catalog
    from gzmorph.io import write_json, write_parquet

    df, bad, summary = gather(args.chunks, args.quarantines, args.reports)
    tree = catalog.validate(df, args.out)
    write_parquet(args.quarantine, bad)
    write_parquet(args.out, df)
    summary["survey"] = args.survey
    summary["total_above_answers"] = catalog.total_excess(df, tree)  # of the galaxies in the catalog
    write_json(args.report, summary)
    log.info("%s: %d of %d galaxies have images", args.survey, len(df), summary["galaxies"])
    log_total_excess(args.survey, summary["total_above_answers"])
    if len(bad):
        log.warning("%s: %d galaxies quarantined (%s); the pipeline continues without them, see %s",
                    args.survey, len(bad), summary["failure_reasons"], args.quarantine)


# --------------------------------------------------------------------------- estimate


def estimate(params: dict[str, Any], survey: str, catalog_path: Path | None) -> dict[str, Any]:
    """Files, bytes and time to fetch one survey, from its catalog if fetched, else the published sizes."""
    spec = survey_spec(params, survey)
    if catalog_path is not None and catalog_path.exists():
        galaxies, basis = len(pd.read_parquet(catalog_path, columns=["id_str"])), f"catalog {catalog_path}"
    elif spec["catalog"] == "gz2-hart16":
        rows = PUBLISHED_ROWS["gz2-hart16"]
        galaxies = sum(n for s, n in rows.items() if spec.get("samples") is None or s in spec["samples"])
        basis = "published Hart16 sample sizes (before the vote filter)"
    else:
        galaxies, basis = PUBLISHED_ROWS["gz-decals-dr5"], "published GZ DECaLS DR5 size (before filters)"
    limit = params["real"]["max_galaxies"]
    if limit is not None:
        galaxies = min(galaxies, limit)
    services = params["real"]["services"]
    result: dict[str, Any] = {"survey": survey, "galaxies": galaxies, "basis": basis, "files": [], "bytes": 0,
                              "requests": {}, "hours_at_rate_limit": 0.0}
    source = spec["images"]
    if source == "zenodo":
        from gzmorph.net import FetchError, HttpSettings, make_session
        from gzmorph.sources import zenodo

        # One quick try: an estimate should not sit through a fetch's minutes of back-off.
        quick = HttpSettings(timeout_s=min(10.0, params["real"]["http"]["timeout_s"]), retries=1, backoff_s=0.5)
        gz2 = spec["catalog"] == "gz2-hart16"
        try:
            files = record_files(params, spec, make_session(quick), quick)
            chosen = zenodo.select(files, [spec["mapping_file" if gz2 else "catalog_file"], *spec["image_files"]])
            result["files"] = [{"key": f.key, "bytes": f.size} for f in chosen]
            result["bytes_basis"] = f"Zenodo record {spec['zenodo_record']} listing"
        except FetchError as exc:
            log.warning("could not list Zenodo record %s (%s); using the published total", spec["zenodo_record"], exc)
            what = "image zip and filename mapping" if gz2 else "image zips and catalog"
            result["files"] = [{"key": f"{what} (published total, approximate)",
                                "bytes": PUBLISHED_GZ2_BYTES if gz2 else PUBLISHED_DECALS_BYTES}]
            result["bytes_basis"] = f"published sizes of Zenodo record {spec['zenodo_record']} (not listed)"
        result["bytes"] = sum(f["bytes"] for f in result["files"])
        result["requests"]["zenodo"] = len(result["files"]) + 1
        if gz2 and spec.get("fallback") == "skyserver" and spec["skyserver_cutout"]["scale"] == "petrosian":
            # the fallback's radii are looked up for every galaxy; its cutouts (a few) are not counted
            result["requests"]["skyserver"] = math.ceil(galaxies / SQL_BATCH)
    else:
        result["files"] = [{"key": f"{galaxies} cutouts", "bytes": galaxies * TYPICAL_BYTES[source]}]
        result["bytes"] = galaxies * TYPICAL_BYTES[source]
        result["requests"][source] = galaxies
        if spec["catalog"] == "gz2-hart16" and spec.get("skyserver_cutout", {}).get("scale") == "petrosian":
            result["requests"]["skyserver"] = galaxies + math.ceil(galaxies / SQL_BATCH)  # + SQL batches
    hours = sum(n / services[s]["requests_per_minute"] / 60 for s, n in result["requests"].items())
    result["hours_at_rate_limit"] = round(hours, 2)
    return result


def run_estimate(args: argparse.Namespace) -> None:
    from gzmorph import config

    params = config.load(args.params)
    surveys = args.survey or list(params["real"]["surveys"])
    total_bytes, total_hours = 0, 0.0
    for survey in surveys:
        catalog_path = REAL_DIR / survey / "catalog.parquet"
        e = estimate(params, survey, catalog_path)
        total_bytes += e["bytes"]
        total_hours += e["hours_at_rate_limit"]
        print(f"{survey}: {e['galaxies']:,} galaxies ({e['basis']})")
        if "bytes_basis" in e:
            print(f"  bytes from the {e['bytes_basis']}")
        for f in e["files"]:
            print(f"  {f['key']}: {f['bytes'] / 1e9:.2f} GB")
        for service, n in e["requests"].items():
            rate = params["real"]["services"][service]["requests_per_minute"]
            print(f"  {service}: {n:,} requests at {rate:g}/min = {n / rate / 60:.1f} h")
        mbps = args.bandwidth_mbps
        hours = e["bytes"] * 8 / (mbps * 1e6) / 3600
        print(f"  download: {e['bytes'] / 1e9:.2f} GB = {hours:.1f} h at {mbps:g} Mbit/s")
    print(f"total: {total_bytes / 1e9:.2f} GB; at least {total_hours:.1f} h of rate-limited requests "
          "(services run in parallel; cutouts of one service do not)")


# --------------------------------------------------------------------------- command line


def register(sub: argparse._SubParsersAction) -> None:
    from gzmorph import config

    p = sub.add_parser("fetch", help="real Galaxy Zoo catalogs and images (data_source: real)")
    steps = p.add_subparsers(dest="step", required=True, metavar="STEP")

    def step(name: str, help_text: str, func: Callable[[argparse.Namespace], None]) -> argparse.ArgumentParser:
        s = steps.add_parser(name, help=help_text)
        config.add_params_argument(s)
        s.add_argument("--no-progress", action="store_true", help="no progress bars")
        s.set_defaults(func=func)
        return s

    s = step("catalog", "read, map and filter a survey's vote catalog; deal it into chunks", run_catalog)
    s.add_argument("--survey", required=True)
    s.add_argument("--downloads", default=str(REAL_DIR / "downloads"), help="where downloaded files are kept")
    s.add_argument("--out", required=True, help="catalog parquet with a chunk column")
    s.add_argument("--report", required=True, help="JSON: rows read and dropped by each filter")

    s = step("archives", "download a survey's Zenodo image zips (md5-checked, resumable)", run_archives)
    s.add_argument("--survey", required=True)
    s.add_argument("--downloads", default=str(REAL_DIR / "downloads"))
    s.add_argument("--out", required=True, help="JSON manifest of the local zip files")

    s = step("images", "fetch one chunk's images", run_images)
    s.add_argument("--survey", required=True)
    s.add_argument("--catalog", required=True, help="the survey's chunked catalog (fetch catalog --out)")
    s.add_argument("--chunk", required=True, type=int)
    s.add_argument("--archives", help="archives manifest (fetch archives --out) when images come from zips")
    s.add_argument("--images", help="image directory (default data/real/<survey>/images/<chunk>)")
    s.add_argument("--out", required=True, help="parquet: the chunk's galaxies with images, file_loc set")
    s.add_argument("--quarantine", required=True, help="parquet: galaxies that failed, with the reason")
    s.add_argument("--report", required=True, help="JSON: fetched, fallback, skipped, failed and why")

    s = step("gather", "join a survey's chunks into its canonical catalog", run_gather)
    s.add_argument("--survey", required=True)
    s.add_argument("--chunks", nargs="+", required=True)
    s.add_argument("--quarantines", nargs="+", required=True)
    s.add_argument("--reports", nargs="+", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--quarantine", required=True)
    s.add_argument("--report", required=True)

    s = step("estimate", "print files, bytes and expected time of fetching (one Zenodo API request)", run_estimate)
    s.add_argument("--survey", action="append", help="survey to estimate (repeatable; default: all)")
    s.add_argument("--bandwidth-mbps", type=float, default=100.0, help="assumed download bandwidth")

"""Zenodo records: list a record's files through the REST API and download them, md5-verified.

Galaxy Zoo DECaLS (Walmsley et al. 2021) is record 4573248: the volunteer catalogs and the
``gz_decals_dr5_png_part<n>.zip`` image archives, laid out as ``J###/<iauname>.png``
(see :func:`gzmorph.sources.gzdecals.zip_member`); the Galaxy Zoo 2 images are record 3565489
(``images_gz2.zip`` and ``gz2_filename_mapping.csv``, see :mod:`gzmorph.sources.gz2images`).
``GET /api/records/<id>`` lists the files with an
``md5:`` checksum each;
:func:`download_file` resumes an interrupted download and lands a file only once its md5 matches.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from gzmorph import net
from gzmorph.net import FetchError, HttpSettings

DEFAULT_BASE_URL = "https://zenodo.org"
DECALS_RECORD = 4573248
MD5_RE = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class RecordFile:
    key: str    # file name in the record
    size: int   # bytes
    md5: str    # lower-case hex
    url: str    # the content URL


def record_url(base_url: str, record_id: int | str) -> str:
    return f"{base_url.rstrip('/')}/api/records/{record_id}"


def list_files(session: requests.Session, *, base_url: str, record_id: int | str,
               settings: HttpSettings) -> list[RecordFile]:
    """The files of a record, from its ``files`` list or, when that is absent, ``/files`` ``entries``."""
    url = record_url(base_url, record_id)
    record = _get_json(session, url, settings)
    entries = record.get("files") if isinstance(record, dict) else None
    if not entries:
        url = f"{url}/files"
        listing = _get_json(session, url, settings)
        entries = listing.get("entries") if isinstance(listing, dict) else None
        if not isinstance(entries, list) or not entries:
            raise FetchError(f"{url}: the record lists no files (no 'files' nor 'entries')")
    if not isinstance(entries, list):
        raise FetchError(f"{url}: 'files' is a {type(entries).__name__}, not a list")
    files = [_parse_entry(url, i, entry) for i, entry in enumerate(entries)]
    keys = [f.key for f in files]
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        raise FetchError(f"{url}: file keys listed more than once: {', '.join(duplicates)}")
    return files


def _get_json(session: requests.Session, url: str, settings: HttpSettings) -> Any:
    body = net.fetch_bytes(session, url, settings=settings, max_bytes=16 << 20)
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:  # an HTML error page answered with 200, a cut body
        start = body[:40].decode("utf-8", "replace").replace("\n", " ")
        raise FetchError(f"{url}: not JSON ({exc}); the body starts {start!r}") from None


def _parse_entry(url: str, i: int, entry: Any) -> RecordFile:
    def bad(what: str) -> FetchError:
        return FetchError(f"{url}: file entry {i}: {what}")

    if not isinstance(entry, dict):
        raise bad(f"expected an object, got {type(entry).__name__}")
    key, size, checksum, links = entry.get("key"), entry.get("size"), entry.get("checksum"), entry.get("links")
    if not isinstance(key, str) or not key:
        raise bad(f"'key' is {key!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise bad(f"{key}: 'size' is {size!r}, not a byte count")
    if not isinstance(checksum, str) or not checksum.startswith("md5:"):
        raise bad(f"{key}: checksum {checksum!r} is not 'md5:<hex>'; only md5 can be verified")
    md5 = checksum[4:].lower()
    if not MD5_RE.fullmatch(md5):
        raise bad(f"{key}: checksum {checksum!r} is not 32 hex digits")
    # In the record's 'files' list links.self is the content; in '/files' entries it is the metadata
    # and links.content the content.
    link = (links.get("content") or links.get("self")) if isinstance(links, dict) else None
    if not isinstance(link, str) or not link.startswith(("http://", "https://")):
        raise bad(f"{key}: no download link in 'links' ({links!r})")
    return RecordFile(key=key, size=size, md5=md5, url=link)


def select(files: Sequence[RecordFile], keys_or_patterns: Sequence[str]) -> list[RecordFile]:
    """The files named by exact keys or fnmatch patterns, in record order; each must match something."""
    chosen: set[str] = set()
    for wanted in keys_or_patterns:
        hits = [f.key for f in files if f.key == wanted or fnmatch.fnmatchcase(f.key, wanted)]
        if not hits:
            raise FetchError(f"no file of the record matches {wanted!r}; "
                             f"the record has: {', '.join(f.key for f in files) or '(no files)'}")
        chosen.update(hits)
    return [f for f in files if f.key in chosen]


def safe_key(key: str) -> bool:
    """A key that names a file directly inside the download directory."""
    return bool(key) and key not in (".", "..") and not any(c in key for c in "/\\\0")


def download_file(session: requests.Session, f: RecordFile, directory: Path, *, settings: HttpSettings,
                  progress: bool = True) -> str:
    """Download ``f`` into ``directory``; ``"skipped"`` (already there and right), ``"fetched"`` or ``"resumed"``."""
    if not safe_key(f.key):  # a hostile record must not write outside the directory
        raise FetchError(f"{f.url}: refusing file key {f.key!r}: it is not a plain file name")
    return net.download(session, f.url, Path(directory) / f.key, md5=f.md5, size=f.size, settings=settings,
                        progress=progress)

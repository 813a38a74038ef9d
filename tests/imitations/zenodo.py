"""A loopback imitation of the Zenodo records API, and zips in the Galaxy Zoo DECaLS and GZ2 image layouts.

Serves, for each of its records (the first given to the constructor, more with :meth:`add_record`):

- ``/api/records/<id>``: the record JSON, ``files`` as ``{"key", "size", "checksum": "md5:<hex>",
  "links": {"self": <content URL>}}`` (set ``files_in_record=False`` to leave the list out, as some
  records do, so a client must fall back on the next one);
- ``/api/records/<id>/files``: ``{"enabled": true, "entries": [...]}`` where ``links.self`` is the file's
  metadata and ``links.content`` its bytes;
- ``/api/records/<id>/files/<key>``: one entry's metadata; ``.../content``: the bytes, with Range;
- ``/records/<id>/files/<key>`` (the ``?download=1`` form): the bytes, with Range.

File contents are bytes, or a Path read when requested (the base server needs a whole body).
"""

from __future__ import annotations

import hashlib
import json
import re
import urllib.parse
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from gzmorph.sources.gzdecals import zip_member
from imitations.base import Imitation, Reply, Request


def _md5(content: bytes | Path) -> str:
    digest = hashlib.md5()
    if isinstance(content, bytes):
        digest.update(content)
    else:
        with open(content, "rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


class ZenodoImitation(Imitation):
    """``record_id``/``files`` are the first record; the key helpers (``checksum``, ``size``...) find a key in
    any record, so keys should differ between records (they do on Zenodo's Galaxy Zoo records)."""

    def __init__(self, record_id: int | str, files: Mapping[str, bytes | Path], *,
                 wrong_md5: Iterable[str] = (), files_in_record: bool = True,
                 title: str = "Galaxy Zoo DECaLS: imitation") -> None:
        super().__init__()
        self.record_id = str(record_id)
        self.files = dict(files)
        self.records: dict[str, dict[str, bytes | Path]] = {self.record_id: self.files}
        self.titles = {self.record_id: title}
        self.wrong_md5 = set(wrong_md5)      # keys whose listed checksum is not their content's
        self.files_in_record = files_in_record
        self._md5 = {key: _md5(content) for key, content in self.files.items()}

    def add_record(self, record_id: int | str, files: Mapping[str, bytes | Path], *, title: str) -> None:
        """Serve one more record from the same server (as zenodo.org serves them all)."""
        rid = str(record_id)
        clash = set(files) & {k for r in self.records.values() for k in r}
        if rid in self.records or clash:
            raise ValueError(f"record {rid} or keys {sorted(clash)} already served")
        self.records[rid] = dict(files)
        self.titles[rid] = title
        self._md5.update({key: _md5(content) for key, content in files.items()})

    def _record_of(self, key: str) -> str:
        return next(rid for rid, files in self.records.items() if key in files)

    # -- the shapes Zenodo answers with ------------------------------------------------------------
    def api_base(self, record_id: str | None = None) -> str:
        return f"{self.url}/api/records/{record_id or self.record_id}"

    def content_url(self, key: str) -> str:
        return f"{self.api_base(self._record_of(key))}/files/{urllib.parse.quote(key)}/content"

    def checksum(self, key: str) -> str:
        md5 = self._md5[key]
        return "md5:" + (hashlib.md5(md5.encode()).hexdigest() if key in self.wrong_md5 else md5)

    def size(self, key: str) -> int:
        content = self.records[self._record_of(key)][key]
        return len(content) if isinstance(content, bytes) else content.stat().st_size

    def record_entry(self, key: str) -> dict[str, Any]:
        return {"id": hashlib.md5(key.encode()).hexdigest(), "key": key, "size": self.size(key),
                "checksum": self.checksum(key), "links": {"self": self.content_url(key)}}

    def files_entry(self, key: str) -> dict[str, Any]:
        meta = f"{self.api_base(self._record_of(key))}/files/{urllib.parse.quote(key)}"
        return {"key": key, "size": self.size(key), "checksum": self.checksum(key), "mimetype": _mimetype(key),
                "status": "completed", "storage_class": "L", "metadata": None,
                "links": {"self": meta, "content": self.content_url(key)}}

    def record(self, record_id: str | None = None) -> dict[str, Any]:
        record_id = record_id or self.record_id
        rid = int(record_id) if record_id.isdigit() else record_id
        doi = f"10.5281/zenodo.{record_id}"
        title = self.titles[record_id]
        body: dict[str, Any] = {
            "id": rid, "recid": record_id, "doi": doi, "doi_url": f"https://doi.org/{doi}",
            "title": title, "metadata": {"title": title, "doi": doi, "license": {"id": "cc-by-4.0"}},
            "links": {"self": self.api_base(record_id), "files": f"{self.api_base(record_id)}/files"},
        }
        if self.files_in_record:
            body["files"] = [self.record_entry(k) for k in self.records[record_id]]
        return body

    # -- routing -----------------------------------------------------------------------------------
    def route(self, request: Request) -> Reply:
        path = request.path
        m = re.fullmatch(r"/api/records/([^/]+)(/files(?:/(.+?))?(/content)?)?/?", path)
        if m and m.group(1) in self.records:
            rid, files_part, key, content = m.group(1), m.group(2), m.group(3), m.group(4)
            files = self.records[rid]
            if files_part is None:
                return _json(self.record(rid))
            if key is None:
                return _json({"enabled": True, "entries": [self.files_entry(k) for k in files],
                              "links": {"self": f"{self.api_base(rid)}/files"}})
            if key not in files:
                return _not_found()
            return self._content(rid, key) if content else _json(self.files_entry(key))
        m = re.fullmatch(r"/records/([^/]+)/files/(.+)", path)
        if m and m.group(1) in self.records and m.group(2) in self.records[m.group(1)]:
            return self._content(m.group(1), m.group(2))
        return _not_found()

    def _content(self, record_id: str, key: str) -> Reply:
        content = self.records[record_id][key]
        body = content if isinstance(content, bytes) else content.read_bytes()
        return Reply(200, body, _mimetype(key), ranges=True)


def _mimetype(key: str) -> str:
    return {".zip": "application/zip", ".csv": "text/csv", ".md": "text/markdown",
            ".png": "image/png", ".jpg": "image/jpeg"}.get(Path(key).suffix, "application/octet-stream")


def _json(body: Any, status: int = 200) -> Reply:
    return Reply(status, json.dumps(body).encode(), "application/json")


def _not_found() -> Reply:
    return _json({"status": 404, "message": "The persistent identifier does not exist."}, 404)


def make_png_zip(path: Path, pngs: Mapping[str, bytes], extra_members: Mapping[str, bytes] | None = None, *,
                 compression: int = zipfile.ZIP_STORED) -> Path:
    """A zip of ``J###/<iauname>.png`` members (``pngs`` maps iauname to bytes) plus raw-named extras.

    Extras are written with their name exactly as given ("../evil.png", "/abs.png"), then read back
    to make sure zipfile did not tidy a hostile name on the way in.
    """
    return _write_zip(path, {zip_member(iauname): data for iauname, data in pngs.items()}, extra_members, compression)


def make_jpg_zip(path: Path, jpgs: Mapping[int, bytes], *, folder: str = "images/",
                 extra_members: Mapping[str, bytes] | None = None, compression: int = zipfile.ZIP_DEFLATED) -> Path:
    """A zip in the ``images_gz2.zip`` layout: ``<folder><asset_id>.jpg`` members (``jpgs`` maps asset_id to
    bytes), then raw-named extras (hostile names, macOS resource forks), as :func:`make_png_zip` writes them."""
    return _write_zip(path, {f"{folder}{asset}.jpg": data for asset, data in jpgs.items()}, extra_members,
                      compression)


def _write_zip(path: Path, members: Mapping[str, bytes], extra_members: Mapping[str, bytes] | None,
               compression: int) -> Path:
    """Write ``members``, then the extras with their name exactly as given, and check zipfile kept those names."""
    extras = dict(extra_members or {})
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for name, data in extras.items():
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            info.compress_type = compression
            zf.writestr(info, data)
    with zipfile.ZipFile(path) as zf:
        missing = set(extras) - set(zf.namelist())
    if missing:
        raise AssertionError(f"zipfile rewrote member names {sorted(missing)}")
    return path

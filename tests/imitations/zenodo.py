"""A loopback imitation of the Zenodo records API, and zips in the Galaxy Zoo DECaLS image layout.

Serves, for one record:

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
    def __init__(self, record_id: int | str, files: Mapping[str, bytes | Path], *,
                 wrong_md5: Iterable[str] = (), files_in_record: bool = True) -> None:
        super().__init__()
        self.record_id = str(record_id)
        self.files = dict(files)
        self.wrong_md5 = set(wrong_md5)      # keys whose listed checksum is not their content's
        self.files_in_record = files_in_record
        self._md5 = {key: _md5(content) for key, content in self.files.items()}

    # -- the shapes Zenodo answers with ------------------------------------------------------------
    def api_base(self) -> str:
        return f"{self.url}/api/records/{self.record_id}"

    def content_url(self, key: str) -> str:
        return f"{self.api_base()}/files/{urllib.parse.quote(key)}/content"

    def checksum(self, key: str) -> str:
        md5 = self._md5[key]
        return "md5:" + (hashlib.md5(md5.encode()).hexdigest() if key in self.wrong_md5 else md5)

    def size(self, key: str) -> int:
        content = self.files[key]
        return len(content) if isinstance(content, bytes) else content.stat().st_size

    def record_entry(self, key: str) -> dict[str, Any]:
        return {"id": hashlib.md5(key.encode()).hexdigest(), "key": key, "size": self.size(key),
                "checksum": self.checksum(key), "links": {"self": self.content_url(key)}}

    def files_entry(self, key: str) -> dict[str, Any]:
        meta = f"{self.api_base()}/files/{urllib.parse.quote(key)}"
        return {"key": key, "size": self.size(key), "checksum": self.checksum(key), "mimetype": _mimetype(key),
                "status": "completed", "storage_class": "L", "metadata": None,
                "links": {"self": meta, "content": self.content_url(key)}}

    def record(self) -> dict[str, Any]:
        rid = int(self.record_id) if self.record_id.isdigit() else self.record_id
        doi = f"10.5281/zenodo.{self.record_id}"
        body: dict[str, Any] = {
            "id": rid, "recid": self.record_id, "doi": doi, "doi_url": f"https://doi.org/{doi}",
            "title": "Galaxy Zoo DECaLS: imitation", "metadata": {"title": "Galaxy Zoo DECaLS: imitation",
                                                                  "doi": doi, "license": {"id": "cc-by-4.0"}},
            "links": {"self": self.api_base(), "files": f"{self.api_base()}/files"},
        }
        if self.files_in_record:
            body["files"] = [self.record_entry(k) for k in self.files]
        return body

    # -- routing -----------------------------------------------------------------------------------
    def route(self, request: Request) -> Reply:
        path = request.path
        m = re.fullmatch(r"/api/records/([^/]+)(/files(?:/(.+?))?(/content)?)?/?", path)
        if m and m.group(1) == self.record_id:
            files_part, key, content = m.group(2), m.group(3), m.group(4)
            if files_part is None:
                return _json(self.record())
            if key is None:
                return _json({"enabled": True, "entries": [self.files_entry(k) for k in self.files],
                              "links": {"self": f"{self.api_base()}/files"}})
            if key not in self.files:
                return _not_found()
            return self._content(key) if content else _json(self.files_entry(key))
        m = re.fullmatch(r"/records/([^/]+)/files/(.+)", path)
        if m and m.group(1) == self.record_id and m.group(2) in self.files:
            return self._content(m.group(2))
        return _not_found()

    def _content(self, key: str) -> Reply:
        content = self.files[key]
        body = content if isinstance(content, bytes) else content.read_bytes()
        return Reply(200, body, _mimetype(key), ranges=True)


def _mimetype(key: str) -> str:
    return {".zip": "application/zip", ".csv": "text/csv", ".md": "text/markdown",
            ".png": "image/png"}.get(Path(key).suffix, "application/octet-stream")


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
    extras = dict(extra_members or {})
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for iauname, data in pngs.items():
            zf.writestr(zip_member(iauname), data)
        for name, data in extras.items():
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            info.compress_type = compression
            zf.writestr(info, data)
    with zipfile.ZipFile(path) as zf:
        missing = set(extras) - set(zf.namelist())
    if missing:
        raise AssertionError(f"zipfile rewrote member names {sorted(missing)}")
    return path

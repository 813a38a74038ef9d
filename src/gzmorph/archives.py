"""Safe, bounded-memory extraction of selected members from (possibly multi-GB, ZIP64) zip files.

- :func:`index` maps each safe member name to its zip; hostile names (absolute, ``..``, drive
  letters, backslashes) are listed apart and never extracted.
- :func:`extract` streams one member, 1 MiB at a time, into a temporary file beside a target the
  caller chose, so a member name never decides where bytes land (zip-slip is impossible by
  construction).  Declared size, compression ratio and the real byte count are all bounded (zip
  bombs), the CRC is checked, and the target appears only when everything passed.

Memory: a zip's central directory is held while it is open (a few hundred bytes per member), never
a member's data.  Extracting many members: pass one :class:`ZipReader` so each zip is opened once.
"""

from __future__ import annotations

import logging
import os
import re
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import TracebackType

from gzmorph.config import UserError
from gzmorph.io import atomic_path

log = logging.getLogger(__name__)

BUFFER_BYTES = 1 << 20
DRIVE_RE = re.compile(r"^[A-Za-z]:")


class ArchiveError(UserError):
    """A zip or one of its members is unreadable or refused; the message names it and says why."""


def is_safe_member(name: str) -> bool:
    """A relative name that stays inside any directory it is joined to."""
    if not name or "\\" in name or "\0" in name or name.startswith("/") or DRIVE_RE.match(name):
        return False
    return ".." not in PurePosixPath(name).parts


@dataclass
class ArchiveIndex:
    members: dict[str, tuple[Path, str]] = field(default_factory=dict)  # name -> (zip, member name)
    unsafe: list[tuple[Path, str]] = field(default_factory=list)         # hostile names, never extracted
    duplicates: list[tuple[Path, str]] = field(default_factory=list)     # names already seen in an earlier zip


class ZipReader:
    """Keeps zip files open across :func:`index` and :func:`extract` calls; close it (or use ``with``)."""

    def __init__(self) -> None:
        self._open: dict[Path, zipfile.ZipFile] = {}

    def get(self, path: str | os.PathLike[str]) -> zipfile.ZipFile:
        path = Path(path)
        zf = self._open.get(path)
        if zf is None:
            zf = self._open[path] = _open_zip(path)
        return zf

    def close(self) -> None:
        for zf in self._open.values():
            zf.close()
        self._open.clear()

    def __enter__(self) -> ZipReader:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _open_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except FileNotFoundError:
        raise ArchiveError(f"{path}: no such file") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as exc:
        raise ArchiveError(f"{path}: not a readable zip file ({type(exc).__name__}: {exc})") from None


def index(zip_paths: Sequence[str | os.PathLike[str]], *, reader: ZipReader | None = None) -> ArchiveIndex:
    """Map each safe file member of ``zip_paths`` to its zip; the first zip wins a name found twice."""
    result = ArchiveIndex()
    for zip_path in map(Path, zip_paths):
        # Without a reader, hold one central directory at a time.
        zf = reader.get(zip_path) if reader is not None else _open_zip(zip_path)
        try:
            for info in zf.infolist():
                name = info.filename
                if not is_safe_member(name):
                    result.unsafe.append((zip_path, name))
                elif info.is_dir():
                    continue
                elif name in result.members:
                    result.duplicates.append((zip_path, name))
                else:
                    result.members[name] = (zip_path, name)
        finally:
            if reader is None:
                zf.close()
    if result.unsafe:
        shown = ", ".join(repr(n) for _, n in result.unsafe[:3])
        log.warning("%d unsafe zip member name(s) ignored (e.g. %s)", len(result.unsafe), shown)
    if result.duplicates:
        log.warning("%d zip member(s) found in more than one zip; the first zip's copy is used",
                    len(result.duplicates))
    return result


def extract(zip_path: str | os.PathLike[str], member: str, target: str | os.PathLike[str], *, max_bytes: int,
            max_ratio: float = 200.0, reader: ZipReader | None = None) -> None:
    """Write ``member`` of ``zip_path`` to ``target``, or raise :class:`ArchiveError` and write nothing."""
    zip_path = Path(zip_path)
    where = f"{zip_path}: member {member!r}"
    if not is_safe_member(member):
        raise ArchiveError(f"{where}: refused, the name is absolute or leaves its directory")
    own = reader is None
    reader = reader or ZipReader()
    try:
        zf = reader.get(zip_path)
        try:
            info = zf.getinfo(member)
        except KeyError:
            raise ArchiveError(f"{where}: no such member") from None
        _check(info, where, max_bytes, max_ratio)
        with atomic_path(target) as tmp:
            _copy(zf, info, tmp, where, max_bytes)
    finally:
        if own:
            reader.close()


def _check(info: zipfile.ZipInfo, where: str, max_bytes: int, max_ratio: float) -> None:
    if info.is_dir():
        raise ArchiveError(f"{where}: is a directory")
    if info.flag_bits & 0x1:
        raise ArchiveError(f"{where}: is encrypted")
    if info.file_size > max_bytes:
        raise ArchiveError(f"{where}: refused, it declares {info.file_size} bytes, over the {max_bytes}-byte limit")
    ratio = info.file_size / info.compress_size if info.compress_size else (float("inf") if info.file_size else 0.0)
    if ratio > max_ratio:
        raise ArchiveError(f"{where}: refused as a zip bomb, {info.compress_size} bytes expand to "
                           f"{info.file_size} (ratio {ratio:.0f} > {max_ratio:g})")


def _copy(zf: zipfile.ZipFile, info: zipfile.ZipInfo, tmp: Path, where: str, max_bytes: int) -> None:
    """Stream the member into ``tmp``; the size cap does not trust the declared size."""
    written = 0
    try:
        with zf.open(info) as src, open(tmp, "wb") as dst:
            while chunk := src.read(BUFFER_BYTES):  # read to EOF: zipfile checks the CRC there
                written += len(chunk)
                if written > max_bytes:
                    raise ArchiveError(f"{where}: refused, more than {max_bytes} bytes when decompressed")
                dst.write(chunk)
    except (zipfile.BadZipFile, EOFError, zlib.error) as exc:  # a CRC mismatch, a cut or garbled stream
        raise ArchiveError(f"{where}: corrupt ({type(exc).__name__}: {exc})") from None
    except NotImplementedError as exc:  # an unsupported compression method
        raise ArchiveError(f"{where}: cannot be read ({exc})") from None

"""A loopback imitation of SDSS SkyServer: ImgCutout JPEGs and the one SQL search gzmorph sends.

Built from a DataFrame of galaxies: ``ra``, ``dec`` (degrees) and the pixels, as ``image`` (PNG/JPEG
bytes) or ``file_loc`` (a path); for SQL also ``dr7objid``, ``petroR90_r`` and optionally ``dr8objid``
and ``sample`` (``original`` rows live in zoo2MainSpecz, ``extra`` rows in zoo2MainPhotoz, ``stripe82``
in neither; without ``sample`` every row is in zoo2MainSpecz).

- ``/dr<N>/SkyServerWS/ImgCutout/getjpeg?ra&dec&scale&width&height&opt``: a width x height JPEG of
  the nearest galaxy within ``match_arcsec``, resized (the imitation does not model the field of view:
  ``scale`` is validated, not applied), or of empty sky.  400 for a missing or bad ra/dec/scale or a
  width/height outside 64..2048 (missing width/height mean 64).
- ``/dr<N>/SkyServerWS/SearchTools/SqlSearch?cmd&format=csv`` and ``/dr<N>/en/tools/search/x_results.aspx``
  (astroquery's path for DR > 10; ``x_sql.aspx`` for DR10): the ONLY SQL understood is the GZ2
  Petrosian-radius query of :func:`gzmorph.sources.skyserver.petrosian_sql` (SELECT z.dr7objid,
  p.petroR90_r FROM zoo2Main{Specz,Photoz} AS z JOIN PhotoObj ... WHERE z.dr7objid IN (...), joined by
  UNION).  The answer is SkyServer's CSV: a ``#Table1`` line, the header, one row per known galaxy.
  Anything else gets SkyServer's HTML error page with HTTP 200, as the real service does (astroquery
  users see it parsed as a one-column table).  A missing petroR90_r is served as SDSS's -9999.
"""

from __future__ import annotations

import io
import math
import re
import threading
import zlib

import numpy as np
import pandas as pd
from PIL import Image

from .base import Imitation, Reply, Request

SKY_RGB = (6, 6, 10)  # dark sky, a little noise on top
JPEG_QUALITY = 90


class GalaxySky:
    """Galaxy images by position: the nearest within ``match_arcsec``, else empty sky."""

    def __init__(self, galaxies: pd.DataFrame, match_arcsec: float = 2.0) -> None:
        if "image" not in galaxies.columns and "file_loc" not in galaxies.columns:
            raise ValueError("galaxies need an 'image' (bytes) or 'file_loc' (path) column")
        self.galaxies = galaxies.reset_index(drop=True)
        self.ra = np.radians(self.galaxies["ra"].to_numpy(float))
        self.dec = np.radians(self.galaxies["dec"].to_numpy(float))
        self.match_rad = math.radians(match_arcsec / 3600)
        self._cache: dict[int, Image.Image] = {}
        self._lock = threading.Lock()

    def nearest(self, ra: float, dec: float) -> int | None:
        if len(self.galaxies) == 0:
            return None
        ra_r, dec_r = math.radians(ra), math.radians(dec)
        # haversine: accurate at arcsecond separations
        h = (np.sin((self.dec - dec_r) / 2) ** 2
             + np.cos(dec_r) * np.cos(self.dec) * np.sin((self.ra - ra_r) / 2) ** 2)
        sep = 2 * np.arcsin(np.sqrt(np.clip(h, 0, 1)))
        i = int(np.argmin(sep))
        return i if sep[i] <= self.match_rad else None

    def _source(self, i: int) -> Image.Image:
        with self._lock:
            if i not in self._cache:
                row = self.galaxies.iloc[i]
                image = row.get("image") if "image" in self.galaxies.columns else None
                src = io.BytesIO(image) if isinstance(image, (bytes, bytearray)) else row["file_loc"]
                with Image.open(src) as img:
                    self._cache[i] = img.convert("RGB")
            return self._cache[i]

    def render(self, ra: float, dec: float, width: int, height: int) -> Image.Image:
        i = self.nearest(ra, dec)
        if i is not None:
            return self._source(i).resize((width, height), Image.Resampling.BILINEAR)
        seed = zlib.crc32(f"{ra:.6f},{dec:.6f}".encode())
        noise = np.random.default_rng(seed).integers(0, 8, (height, width, 1), dtype=np.uint8)
        return Image.fromarray(np.asarray(SKY_RGB, np.uint8) + noise)


def jpeg_bytes(img: Image.Image, quality: int = JPEG_QUALITY) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def number(query: dict[str, str], name: str, default: float | None = None) -> float | None:
    """A finite float query parameter; None when missing (and no default) or unparseable."""
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def bad_request(message: str) -> Reply:
    return Reply(400, f"<html><body><h1>400 Bad Request</h1><p>{message}</p></body></html>".encode(),
                 "text/html")


def error_page(message: str) -> Reply:
    """SkyServer's SQL error page (served with HTTP 200)."""
    body = ("<html><head>\n<title>Skyserver Error</title>\n</head><body bgcolor=white>\n"
            f"<h2>An error occured</h2><H3 BGCOLOR=pink><font color=red><br>{message}</font></H3></BODY></HTML>")
    return Reply(200, body.encode(), "text/html")


_SELECT = re.compile(
    r"SELECT\s+z\.dr7objid\s*,\s*p\.petroR90_r\s+FROM\s+(?P<table>\w+)\s+AS\s+z\s+JOIN\s+PhotoObj\s+AS\s+p\s+"
    r"ON\s+p\.objid\s*=\s*z\.dr8objid\s+WHERE\s+z\.dr7objid\s+IN\s*\((?P<ids>[\d\s,]*)\)",
    re.IGNORECASE)
_CUTOUT = re.compile(r"^/dr(\d+)/SkyServerWS/ImgCutout/getjpeg$")
_SQL = re.compile(r"^/dr(\d+)/(?:SkyServerWS/SearchTools/SqlSearch|en/tools/search/x_(?:results|sql)\.aspx)$")
TABLE_OF_SAMPLE = {"original": "zoo2MainSpecz", "extra": "zoo2MainPhotoz"}


class SkyServerImitation(Imitation):
    """SkyServer's cutout and SQL endpoints over a DataFrame of galaxies (see the module docstring)."""

    def __init__(self, galaxies: pd.DataFrame, *, match_arcsec: float = 2.0) -> None:
        super().__init__()
        self.sky = GalaxySky(galaxies, match_arcsec)
        self.rows = self._sql_rows(galaxies)

    @staticmethod
    def _sql_rows(galaxies: pd.DataFrame) -> dict[str, dict[int, float]]:
        """table -> {dr7objid: petroR90_r} for the galaxies the GZ2 tables would hold."""
        tables: dict[str, dict[int, float]] = {"zoo2MainSpecz": {}, "zoo2MainPhotoz": {}}
        if "dr7objid" not in galaxies.columns:
            return tables
        for row in galaxies.itertuples(index=False):
            sample = getattr(row, "sample", "original")
            table = TABLE_OF_SAMPLE.get(str(sample))
            dr8 = getattr(row, "dr8objid", 1)
            if table is None or pd.isna(dr8) or int(dr8) <= 0:  # no PhotoObj row to join
                continue
            r90 = getattr(row, "petroR90_r", float("nan"))
            tables[table][int(row.dr7objid)] = -9999.0 if pd.isna(r90) else float(r90)
        return tables

    def route(self, request: Request) -> Reply:
        m = _CUTOUT.match(request.path)
        if m and int(m.group(1)) >= 8:
            return self._cutout(request)
        m = _SQL.match(request.path)
        if m and int(m.group(1)) >= 8:
            return self._sql(request)
        return Reply(404, b"<html><body><h1>404 Not Found</h1></body></html>", "text/html")

    def _cutout(self, request: Request) -> Reply:
        q = request.query
        ra, dec = number(q, "ra"), number(q, "dec")
        if ra is None or dec is None or not (-90 <= dec <= 90):
            return bad_request("ra and dec are required, in degrees")
        scale = number(q, "scale", 0.396127)
        if scale is None or scale <= 0:
            return bad_request("scale must be a positive number of arcsec/pixel")
        size = []
        for name in ("width", "height"):
            value = number(q, name, 64)
            if value is None or value != int(value) or not 64 <= value <= 2048:
                return bad_request(f"{name} must be an integer in 64..2048")
            size.append(int(value))
        img = self.sky.render(ra % 360, dec, size[0], size[1])
        return Reply(200, jpeg_bytes(img), "image/jpeg")

    def _sql(self, request: Request) -> Reply:
        cmd = request.query.get("cmd", "")
        if request.query.get("format", "html").lower() != "csv":
            return error_page("this imitation answers format=csv only")
        wanted: dict[int, float] = {}
        parts = re.split(r"\bUNION\b", cmd, flags=re.IGNORECASE) if cmd.strip() else []
        if not parts:
            return error_page("empty query")
        for part in parts:
            m = _SELECT.fullmatch(part.strip())
            if m is None or m.group("table") not in self.rows:
                return error_page(f"Incorrect syntax or unknown object in query: {part.strip()[:80]}")
            ids = [int(x) for x in re.findall(r"\d+", m.group("ids"))]
            known = self.rows[m.group("table")]
            wanted.update({i: known[i] for i in ids if i in known})
        lines = ["#Table1", "dr7objid,petroR90_r"] + [f"{i},{wanted[i]!r}" for i in sorted(wanted)]
        return Reply(200, ("\n".join(lines) + "\n").encode(), "text/plain")

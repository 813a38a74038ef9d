"""SDSS SkyServer: JPEG cutouts (ImgCutout) and Petrosian radii of Galaxy Zoo 2 galaxies (SQL search).

- :func:`fetch_cutout`: one JPEG from ``/dr{N}/SkyServerWS/ImgCutout/getjpeg``, checked with
  :func:`gzmorph.sources.images.check_image` (an HTML error page or a cut-off body never comes back as bytes).
- :func:`cutout_scale`: the arcsec/px of a cutout, fixed or tied to the galaxy's size as Galaxy Zoo 2 did.
- :func:`petrosian_radii`: ``petroR90_r`` for GZ2 ``dr7objid`` s, through astroquery's ``SDSS.query_sql``.

SkyServer asks for at most 60 requests per minute per client: pace sessions with a
:class:`gzmorph.net.RateLimiter`.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Sequence

import numpy as np
import pandas as pd
import requests

from gzmorph.config import UserError
from gzmorph.net import (
    FetchError,
    HttpSettings,
    RateLimiter,
    describe_error,  # the same one-line reasons as every other fetch
    fetch_bytes,
    make_session,
)
from gzmorph.sources.images import BadImage, check_image

MIN_DATA_RELEASE = 8        # ImgCutout's SkyServerWS path exists from DR8 on
MIN_GZ2_DATA_RELEASE = 10   # zoo2MainSpecz / zoo2MainPhotoz are in the DR10+ databases
MIN_SIZE, MAX_SIZE = 64, 2048
NATIVE_SCALE = 0.396127     # SDSS arcsec/px
GZ2_PETROSIAN_FACTOR = 0.02  # GZ2 images: arcsec/px = 0.02 x petroR90_r
SCALE_MODES = ("fixed", "petrosian")
MAX_CUTOUT_BYTES = 16 << 20  # a 2048 x 2048 JPEG is a few MB
GZ2_TABLES = ("zoo2MainSpecz", "zoo2MainPhotoz")


def _data_release(value: int, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise UserError(f"SkyServer data release must be an integer >= {minimum}, got {value!r}")
    return int(value)


def cutout_url(base_url: str, data_release: int) -> str:
    """``{base}/dr{N}/SkyServerWS/ImgCutout/getjpeg`` (DR >= 8)."""
    dr = _data_release(data_release, MIN_DATA_RELEASE)
    return f"{base_url.rstrip('/')}/dr{dr}/SkyServerWS/ImgCutout/getjpeg"


def cutout_scale(mode: str, *, petro_r90: float | None, petrosian_factor: float, fixed_scale: float) -> float:
    """Arcsec/px of a cutout.

    ``"petrosian"`` reproduces Galaxy Zoo 2: scale = ``petrosian_factor`` x petroR90_r (0.02 in GZ2), so a
    424 px frame spans ~8.5 petroR90 and every galaxy fills it the same way whatever its apparent size;
    a model trained on GZ2 images sees galaxies at that relative size.  A missing or non-positive radius
    (SDSS writes -9999 for a failed measurement) falls back to ``fixed_scale``, so the galaxy still gets
    an image, at the survey-wide scale.
    """
    if mode not in SCALE_MODES:
        raise UserError(f"cutout scale mode must be one of {SCALE_MODES}, got {mode!r}")
    for name, value in (("fixed_scale", fixed_scale), ("petrosian_factor", petrosian_factor)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise UserError(f"cutout {name} must be a positive number, got {value!r}")
    if mode == "fixed":
        return float(fixed_scale)
    if petro_r90 is None or not math.isfinite(float(petro_r90)) or float(petro_r90) <= 0:
        return float(fixed_scale)
    return float(petrosian_factor) * float(petro_r90)


def _check_position(ra: float, dec: float) -> None:
    if not (math.isfinite(ra) and 0 <= ra < 360 and math.isfinite(dec) and -90 <= dec <= 90):
        raise UserError(f"cutout position must have 0 <= ra < 360 and -90 <= dec <= 90, got ra={ra!r}, dec={dec!r}")


def display_url(url: str, params: dict[str, object]) -> str:
    """The URL with its query string, for messages."""
    return requests.Request("GET", url, params=params).prepare().url or url


def fetch_cutout(session: requests.Session, *, base_url: str, data_release: int, ra: float, dec: float,
                 scale: float, size: int, settings: HttpSettings) -> bytes:
    """A ``size`` x ``size`` JPEG centred on (ra, dec) at ``scale`` arcsec/px, without overlays.

    Raises :class:`FetchError` (HTTP failure) or :class:`BadImage` (the body is not that JPEG).
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not MIN_SIZE <= size <= MAX_SIZE:
        raise UserError(f"SkyServer cutout size must be an integer in {MIN_SIZE}..{MAX_SIZE} px, got {size!r}")
    if not (math.isfinite(scale) and scale > 0):
        raise UserError(f"SkyServer cutout scale must be a positive number of arcsec/px, got {scale!r}")
    _check_position(ra, dec)
    url = cutout_url(base_url, data_release)
    # opt="" asks for no overlays (grid, label, outlines...): clean images, as Galaxy Zoo showed.
    params: dict[str, object] = {"ra": float(ra), "dec": float(dec), "scale": float(scale),
                                 "width": int(size), "height": int(size), "opt": ""}
    data = fetch_bytes(session, url, settings=settings, params=params, max_bytes=MAX_CUTOUT_BYTES)
    try:
        check_image(data, size=int(size), formats=("JPEG",))
    except BadImage as exc:
        raise BadImage(f"{display_url(url, params)}: {exc}") from None
    return data


# ---------------------------------------------------------------------------------------------- SQL
def petrosian_sql(objids: Sequence[int]) -> str:
    """SQL for petroR90_r of GZ2 galaxies by dr7objid (main sample: spectroscopic and photometric-z tables)."""
    in_list = ",".join(str(int(i)) for i in objids)
    return " UNION ".join(
        f"SELECT z.dr7objid, p.petroR90_r FROM {table} AS z JOIN PhotoObj AS p ON p.objid = z.dr8objid "
        f"WHERE z.dr7objid IN ({in_list})" for table in GZ2_TABLES)


def _as_objids(objids: Sequence[int]) -> np.ndarray:
    arr = np.asarray(objids)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.dtype == object:  # Python ints (exact at any size)
        try:
            return np.array([int(i) for i in arr.ravel()], dtype=np.int64)
        except (TypeError, ValueError, OverflowError):
            raise UserError("dr7objids must be integers") from None
    if arr.dtype.kind not in "iu":
        # A float objid has already lost digits: they exceed 2**53.
        raise UserError(f"dr7objids must be integers (exact int64), got dtype {arr.dtype}")
    if arr.dtype.kind == "u" and arr.max() > np.iinfo(np.int64).max:
        raise UserError("dr7objids must fit in int64")
    return arr.astype(np.int64).ravel()


def _error_page_reason(text: str) -> str:
    """One line from a SkyServer HTML error page (its message sits in <font color=red>)."""
    m = re.search(r"<font[^>]*color=\"?red\"?[^>]*>(.*?)</font>", text, re.I | re.S)
    body = m.group(1) if m else text
    plain = " ".join(html.unescape(re.sub(r"<[^>]+>", " ", body)).split())
    return plain[:200] or "an error page"


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, requests.exceptions.HTTPError) and exc.response is not None:
        return f"HTTP {exc.response.status_code} {exc.response.reason or ''}".rstrip()
    if isinstance(exc, requests.exceptions.RequestException):
        return describe_error(exc)
    text = " ".join(str(exc).split())
    if "<html" in text.lower():
        text = _error_page_reason(text)
    return f"{type(exc).__name__}: {text[:200]}"


def _client(settings: HttpSettings | None, limiter: RateLimiter | None):
    from astroquery.sdss import SDSSClass

    client = SDSSClass()
    if settings is not None:
        # astroquery's session has no retries; give it ours (retries, back-off, pacing).  BaseQuery keeps
        # its requests.Session in _session: the only hook astroquery offers.
        paced = make_session(settings, limiter)
        for prefix in ("http://", "https://"):
            client._session.mount(prefix, paced.get_adapter(prefix))
    return client


def _table_frame(table, where: str) -> pd.DataFrame:
    """An astropy table from the SQL answer as (dr7objid int64, petroR90_r float64)."""
    names = list(table.colnames)
    if names and names[0].lstrip().lower().startswith("<"):
        text = " ".join([names[0], *(str(row[0]) for row in table)])
        raise FetchError(f"{where}: SkyServer answered with an error page ({_error_page_reason(text)})")
    if "dr7objid" not in names or "petroR90_r" not in names:
        raise FetchError(f"{where}: unexpected SkyServer answer with columns {names[:5]}")
    ids = np.asarray(table["dr7objid"])
    if ids.dtype.kind in "US":
        ids = np.array([int(v) for v in ids], dtype=np.int64)
    elif ids.dtype.kind not in "iu":
        raise FetchError(f"{where}: dr7objid came back as {ids.dtype}, not exact integers")
    radius = np.ma.filled(np.ma.asarray(table["petroR90_r"]).astype(np.float64), np.nan)
    return pd.DataFrame({"dr7objid": ids.astype(np.int64), "petroR90_r": radius})


def petrosian_radii(objids: Sequence[int], *, base_url: str, data_release: int, batch: int = 500,
                    timeout: float = 60, settings: HttpSettings | None = None,
                    limiter: RateLimiter | None = None) -> pd.DataFrame:
    """``petroR90_r`` (arcsec) of GZ2 galaxies by ``dr7objid``: columns ``dr7objid`` (int64), ``petroR90_r``.

    One SQL search per ``batch`` objids, through astroquery pointed at ``base_url``.  Objids that the GZ2
    main tables do not hold (stripe82, unknown) are absent from the result; SDSS's -9999 (failed
    measurement) is passed through for :func:`cutout_scale` to fall back on.  ``settings``/``limiter``
    add retries and pacing to astroquery's session.  Not thread-safe: astroquery's base URL is a
    process-wide setting, changed for the duration of the call.
    """
    from astroquery.exceptions import RemoteServiceError
    from astroquery.sdss import conf

    dr = _data_release(data_release, MIN_GZ2_DATA_RELEASE)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise UserError(f"SQL batch size must be a positive integer, got {batch!r}")
    ids = pd.unique(_as_objids(objids))
    frames = [pd.DataFrame({"dr7objid": np.zeros(0, np.int64), "petroR90_r": np.zeros(0, np.float64)})]
    client = _client(settings, limiter)
    n_batches = math.ceil(len(ids) / batch)
    base = base_url.rstrip("/")
    for k in range(n_batches):
        where = f"SkyServer SQL search at {base} (DR{dr}), batch {k + 1}/{n_batches}"
        sql = petrosian_sql(ids[k * batch:(k + 1) * batch])
        try:
            with conf.set_temp("skyserver_baseurl", base):
                table = client.query_sql(sql, timeout=timeout, data_release=dr, cache=False)
        except (requests.exceptions.RequestException, RemoteServiceError) as exc:
            raise FetchError(f"{where}: {_one_line(exc)}") from None
        except Exception as exc:  # astropy could not parse the answer as CSV (e.g. an HTML page)
            raise FetchError(f"{where}: unreadable answer ({_one_line(exc)})") from None
        if table is not None:  # astroquery returns None for zero rows
            frames.append(_table_frame(table, where))
    out = pd.concat(frames, ignore_index=True)
    out = out.drop_duplicates("dr7objid", keep="first").reset_index(drop=True)
    return out.astype({"dr7objid": np.int64, "petroR90_r": np.float64})

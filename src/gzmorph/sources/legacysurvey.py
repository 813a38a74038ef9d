"""Legacy Survey (DECaLS) viewer: JPEG cutouts from ``/viewer/cutout.jpg``.

The viewer answers an unknown ``layer`` with HTTP 200 and the text "no such layer"; that body, and any
HTML page, is rejected by :func:`gzmorph.sources.images.check_image` and never returned as an image.
"""

from __future__ import annotations

import math

import numpy as np
import requests

from gzmorph.config import UserError
from gzmorph.net import HttpSettings, fetch_bytes
from gzmorph.sources.images import BadImage, check_image
from gzmorph.sources.skyserver import display_url

MAX_SIZE = 3000             # the viewer's largest cutout side
NATIVE_PIXSCALE = 0.262     # DECaLS arcsec/px
DEFAULT_LAYER = "ls-dr9"
MAX_CUTOUT_BYTES = 32 << 20


def cutout_url(base_url: str) -> str:
    """``{base}/viewer/cutout.jpg``."""
    return f"{base_url.rstrip('/')}/viewer/cutout.jpg"


def fetch_cutout(session: requests.Session, *, base_url: str, ra: float, dec: float, layer: str, pixscale: float,
                 size: int, settings: HttpSettings) -> bytes:
    """A ``size`` x ``size`` JPEG of ``layer`` centred on (ra, dec) at ``pixscale`` arcsec/px.

    Raises :class:`gzmorph.net.FetchError` (HTTP failure, e.g. 400 for a bad position) or
    :class:`BadImage` (the body is not that JPEG, e.g. "no such layer").
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 1 <= size <= MAX_SIZE:
        raise UserError(f"Legacy Survey cutout size must be an integer in 1..{MAX_SIZE} px, got {size!r}")
    if not (math.isfinite(pixscale) and pixscale > 0):
        raise UserError(f"Legacy Survey pixscale must be a positive number of arcsec/px, got {pixscale!r}")
    if not layer or not isinstance(layer, str):
        raise UserError(f"Legacy Survey layer must be a non-empty name (e.g. {DEFAULT_LAYER!r}), got {layer!r}")
    if not (math.isfinite(ra) and 0 <= ra < 360 and math.isfinite(dec) and -90 <= dec <= 90):
        raise UserError(f"cutout position must have 0 <= ra < 360 and -90 <= dec <= 90, got ra={ra!r}, dec={dec!r}")
    url = cutout_url(base_url)
    params: dict[str, object] = {"ra": float(ra), "dec": float(dec), "layer": layer, "pixscale": float(pixscale),
                                 "size": int(size)}
    data = fetch_bytes(session, url, settings=settings, params=params, max_bytes=MAX_CUTOUT_BYTES)
    try:
        check_image(data, size=int(size), formats=("JPEG",))
    except BadImage as exc:
        hint = f" (layer {layer!r} is unknown to the viewer)" if data.strip() == b"no such layer" else ""
        raise BadImage(f"{display_url(url, params)}: {exc}{hint}") from None
    return data

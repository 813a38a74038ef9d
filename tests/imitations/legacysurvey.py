"""A loopback imitation of the Legacy Survey viewer's JPEG cutouts.

``/viewer/cutout.jpg`` and its alias ``/viewer/jpeg-cutout`` take ra, dec, layer (default ``ls-dr9``),
pixscale (default 0.262) and size (default 256, at most 3000): a size x size JPEG of the nearest galaxy
of the DataFrame (columns as for :class:`imitations.skyserver.SkyServerImitation`), resized, or empty sky.
Missing ra/dec answer 400, as the real viewer does; an unknown layer answers 200 with the text body
"no such layer", as the real viewer does.  A size over 3000 answers 400 (the imitation's choice).
"""

from __future__ import annotations

import pandas as pd

from .base import Imitation, Reply, Request
from .skyserver import GalaxySky, bad_request, jpeg_bytes, number

LAYERS = frozenset({"ls-dr9", "ls-dr10", "decals-dr5", "sdss"})
PATHS = ("/viewer/cutout.jpg", "/viewer/jpeg-cutout")


class LegacySurveyImitation(Imitation):
    """The viewer's JPEG cutout endpoint over a DataFrame of galaxies."""

    def __init__(self, galaxies: pd.DataFrame, *, match_arcsec: float = 2.0, layers: frozenset[str] = LAYERS) -> None:
        super().__init__()
        self.sky = GalaxySky(galaxies, match_arcsec)
        self.layers = layers

    def route(self, request: Request) -> Reply:
        if request.path not in PATHS:
            return Reply(404, b"<html><body><h1>Not Found</h1></body></html>", "text/html")
        q = request.query
        ra, dec = number(q, "ra"), number(q, "dec")
        if ra is None or dec is None or not (-90 <= dec <= 90):
            return bad_request("ra and dec are required, in degrees")
        if q.get("layer", "ls-dr9") not in self.layers:
            return Reply(200, b"no such layer", "text/html")
        pixscale = number(q, "pixscale", 0.262)
        size = number(q, "size", 256)
        if pixscale is None or pixscale <= 0:
            return bad_request("pixscale must be a positive number")
        if size is None or size != int(size) or not 1 <= size <= 3000:
            return bad_request("size must be an integer in 1..3000")
        img = self.sky.render(ra % 360, dec, int(size), int(size))
        return Reply(200, jpeg_bytes(img), "image/jpeg")

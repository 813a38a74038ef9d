"""Checks that a downloaded body is the image it claims to be, before anything stores it.

Cutout services answer mistakes with HTTP 200: an HTML error page, Legacy Survey's "no such layer",
a body cut short by a proxy.  :func:`check_image` turns each into a :class:`BadImage` with a one-line
reason.  Everything that can be judged from the header (format, size, decompression bomb) is judged
before a single pixel is decoded (PIL opens lazily), then every pixel is decoded, so a truncated body
fails here.

Not caught: bytes flipped inside a JPEG's entropy-coded data (libjpeg only warns and Pillow drops the
warning).  Over HTTPS, TLS already rejects a body altered in flight, and a cut-short body is caught by
its Content-Length and by the decoder, so we rely on those rather than re-implement a JPEG decoder.
"""

from __future__ import annotations

import io
import numbers
import re
from collections.abc import Sequence

from PIL import Image

from gzmorph.net import FetchError

SUPPORTED_FORMATS = ("JPEG", "PNG")
MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
    (b"SIMPLE  =", "FITS"),  # Legacy Survey's cutout.fits, asked for by mistake
)
SNIPPET_CHARS = 40


class BadImage(FetchError):
    """A body that is not the expected image; the message says why, in one line."""


def check_image(data: bytes, *, size: tuple[int, int] | int | None, formats: Sequence[str] = ("JPEG", "PNG"),
                max_pixels: int = 4096 * 4096) -> tuple[int, int]:
    """Check that ``data`` is a complete, decodable image of ``size`` in one of ``formats``; its (width, height).

    ``size`` is (width, height), an int for a square, or None for any size.  Raises :class:`BadImage`.
    """
    unknown = [f for f in formats if f not in SUPPORTED_FORMATS]
    if unknown:
        raise ValueError(f"check_image supports {SUPPORTED_FORMATS}, not {unknown}")
    if size is None:
        expected = None
    elif isinstance(size, numbers.Integral):
        expected = (int(size), int(size))
    else:
        expected = (int(size[0]), int(size[1]))
    if not data:
        raise BadImage("empty body, expected an image")
    kind = _sniff(data)
    if kind is None:
        raise BadImage(_not_an_image(data))
    if kind not in formats:
        raise BadImage(f"a {kind} image, expected {' or '.join(formats)}")
    # No warnings.catch_warnings here: it swaps process-wide state and images are checked from many threads.
    try:
        with Image.open(io.BytesIO(data), formats=(kind,)) as img:  # reads the header only
            width, height = img.size
            if width * height > max_pixels:
                raise BadImage(f"image header declares {width}x{height}, over the {max_pixels}-pixel limit "
                               "(decompression bomb guard)")
            if expected is not None and (width, height) != expected:
                raise BadImage(f"image is {width}x{height}, expected {expected[0]}x{expected[1]}")
            img.load()  # decode every pixel: truncation and broken streams surface here
    except BadImage:
        raise
    except Image.DecompressionBombError as exc:  # PIL's own guard, at open, for absurd headers
        raise BadImage(f"decompression bomb guard: {str(exc).splitlines()[0]}") from None
    except Exception as exc:  # truncation and corruption surface as OSError, SyntaxError, ValueError...
        reason = str(exc).splitlines()[0] if str(exc) else ""
        raise BadImage(f"undecodable {kind} ({type(exc).__name__}: {reason})") from None
    return width, height


# ------------------------------------------------------------------------------------ what is it
def _sniff(data: bytes) -> str | None:
    for magic, name in MAGIC:
        if data.startswith(magic):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def _not_an_image(data: bytes) -> str:
    head = data[:512]
    text = head.decode("utf-8", errors="replace")
    printable = sum(ch.isprintable() or ch in "\r\n\t" for ch in text)
    if printable >= 0.9 * len(text):
        flat = re.sub(r"\s+", " ", "".join(ch for ch in text if ch.isprintable() or ch.isspace())).strip()
        snippet = flat[:SNIPPET_CHARS].rstrip() + ("…" if len(flat) > SNIPPET_CHARS or len(data) > len(head) else "")
        return f"not an image: body starts with '{snippet}'"
    return f"not an image: unrecognised data starting {data[:8].hex(' ')} ({len(data)} bytes)"

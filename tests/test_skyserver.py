"""SkyServer client (cutouts, Petrosian radii through astroquery) and image checks, against a loopback imitation."""

from __future__ import annotations

import io
import re
import struct
import time
import zlib

import numpy as np
import pandas as pd
import pytest
import requests
from imitations.skyserver import SkyServerImitation, error_page
from PIL import Image, ImageFile

from gzmorph import config, net
from gzmorph.config import UserError
from gzmorph.sources import skyserver
from gzmorph.sources.images import BadImage, check_image

SETTINGS = net.HttpSettings(timeout_s=0.5, retries=3, backoff_s=0.01)
BASE_OBJID = 587722981741363294  # a real-looking dr7objid: well past 2**53


def simulated_galaxies(n: int = 3, size: int = 96) -> pd.DataFrame:
    """Simulated SDSS-like galaxies with PNG images and GZ2 ids (samples original, extra, stripe82...)."""
    from gzmorph.sim.population import sample_population
    from gzmorph.sim.render import png_bytes, render_galaxy

    sim = config.load("params.yaml")["simulate"]
    pop = sample_population(n, sim["sky"], 11)
    images = [png_bytes(render_galaxy(g, "sdss", sim["surveys"]["sdss"], size, 11)) for g in pop.to_dict("records")]
    samples = ["original", "extra", "stripe82"]
    return pd.DataFrame({
        "ra": pop["ra"], "dec": pop["dec"], "image": images,
        "dr7objid": np.arange(n, dtype=np.int64) * 7 + BASE_OBJID,
        "dr8objid": np.arange(n, dtype=np.int64) + 1237648702966988820,
        "petroR90_r": pop["petro_r90_arcsec"], "sample": [samples[i % 3] for i in range(n)],
    })


@pytest.fixture(scope="module")
def galaxies() -> pd.DataFrame:
    return simulated_galaxies()


@pytest.fixture
def service(galaxies: pd.DataFrame):
    with SkyServerImitation(galaxies) as svc:
        yield svc


@pytest.fixture
def session():
    with net.make_session(SETTINGS) as s:
        yield s


def fetch(session: requests.Session, svc: SkyServerImitation, galaxies: pd.DataFrame, size: int = 128,
          scale: float = 0.25, i: int = 0) -> bytes:
    return skyserver.fetch_cutout(session, base_url=svc.url, data_release=17, ra=float(galaxies.ra[i]),
                                  dec=float(galaxies.dec[i]), scale=scale, size=size, settings=SETTINGS)


def served(svc, pattern: str = "", expect: int = 1) -> list:
    """Requests served to paths matching ``pattern``, once ``expect`` of them are logged (2 s at most).

    The imitation logs a request after its reply is written, so a client can finish before the entry exists;
    a stalled request is logged only when its stall ends.
    """
    deadline = time.monotonic() + 2
    while len(svc.requests_to(pattern)) < expect and time.monotonic() < deadline:
        time.sleep(0.01)
    return svc.requests_to(pattern)


def cutouts(svc: SkyServerImitation, expect: int = 1) -> list:
    return served(svc, r"/ImgCutout/getjpeg$", expect)


# ------------------------------------------------------------------------------------- URLs, scale
def test_cutout_url_and_data_release() -> None:
    assert skyserver.cutout_url("https://skyserver.sdss.org/", 17) == \
        "https://skyserver.sdss.org/dr17/SkyServerWS/ImgCutout/getjpeg"
    for bad in (7, 0, "17", True):
        with pytest.raises(UserError, match="data release"):
            skyserver.cutout_url("https://x", bad)


def test_cutout_scale_fixed_and_petrosian() -> None:
    kw = {"petrosian_factor": 0.02, "fixed_scale": 0.396}
    assert skyserver.cutout_scale("fixed", petro_r90=12.0, **kw) == 0.396
    assert skyserver.cutout_scale("petrosian", petro_r90=12.0, **kw) == pytest.approx(0.24)
    for missing in (None, float("nan"), 0.0, -9999.0):  # SDSS writes -9999 for a failed measurement
        assert skyserver.cutout_scale("petrosian", petro_r90=missing, **kw) == 0.396
    with pytest.raises(UserError, match="mode"):
        skyserver.cutout_scale("zoom", petro_r90=1.0, **kw)
    with pytest.raises(UserError, match="fixed_scale"):
        skyserver.cutout_scale("fixed", petro_r90=1.0, petrosian_factor=0.02, fixed_scale=0)


# ---------------------------------------------------------------------------------------- cutouts
def test_fetch_cutout_sends_clean_request_and_returns_the_galaxy(service, session, galaxies) -> None:
    data = fetch(session, service, galaxies, size=128, scale=0.25)
    (hit,) = cutouts(service)
    q = hit.request.query
    assert "opt" in q and q["opt"] == ""  # no overlays
    assert float(q["scale"]) == 0.25 and q["width"] == q["height"] == "128"
    assert float(q["ra"]) == float(galaxies.ra[0]) and float(q["dec"]) == float(galaxies.dec[0])
    assert hit.request.path == "/dr17/SkyServerWS/ImgCutout/getjpeg"
    with Image.open(io.BytesIO(data)) as img:
        assert img.format == "JPEG" and img.size == (128, 128)
        got = np.asarray(img.convert("RGB"), float)
    with Image.open(io.BytesIO(galaxies.image[0])) as src:
        want = np.asarray(src.convert("RGB").resize((128, 128), Image.Resampling.BILINEAR), float)
    assert np.abs(got - want).mean() < 4  # the galaxy, up to JPEG loss
    far = skyserver.fetch_cutout(session, base_url=service.url, data_release=17, ra=10.0, dec=-80.0, scale=0.4,
                                 size=64, settings=SETTINGS)
    with Image.open(io.BytesIO(far)) as img:
        assert np.asarray(img).mean() < 20  # empty sky


@pytest.mark.parametrize("size", [63, 2049, 100.0])
def test_fetch_cutout_size_limits(service, session, galaxies, size) -> None:
    with pytest.raises(UserError, match="64..2048"):
        fetch(session, service, galaxies, size=size)
    assert service.log == []


def test_imitation_rejects_bad_requests_like_a_service(service, session) -> None:
    url = skyserver.cutout_url(service.url, 17)
    assert session.get(url, params={"dec": 1, "width": 64, "height": 64, "opt": ""}, timeout=5).status_code == 400
    assert session.get(url, params={"ra": "x", "dec": 1}, timeout=5).status_code == 400
    assert session.get(url, params={"ra": 1, "dec": 1, "width": 32, "height": 64}, timeout=5).status_code == 400
    assert session.get(f"{service.url}/dr7/SkyServerWS/ImgCutout/getjpeg", params={"ra": 1, "dec": 1},
                       timeout=5).status_code == 404


# ------------------------------------------------------------------------------------ image checks
def jpeg(size: tuple[int, int] = (64, 64), seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = (rng.random((size[1], size[0], 3)) * 80).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def png(size: tuple[int, int] = (8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (40, 20, 10)).save(buf, format="PNG")
    return buf.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A tiny valid PNG whose IHDR is patched to claim width x height (CRC fixed): a decompression bomb."""
    data = bytearray(png((1, 1)))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def imitation_corrupt(data: bytes) -> bytes:
    """Flip bytes the way the imitation's ``corrupt`` fault does."""
    body = bytearray(data)
    for i in range(len(body) // 3, len(body), max(1, len(body) // 50)):
        body[i] ^= 0xFF
    return bytes(body)


def test_check_image_accepts_good_images() -> None:
    assert check_image(jpeg((80, 64)), size=(80, 64)) == (80, 64)
    assert check_image(jpeg(), size=64, formats=("JPEG",)) == (64, 64)
    assert check_image(png((10, 12)), size=None) == (10, 12)


@pytest.mark.parametrize(("body", "reason"), [
    (b"", "empty body"),
    (b"<html><head><title>Skyserver Error</title></head><body>An error occured while processing</body></html>",
     "not an image: body starts with '<html><head><title>Skyserver Error</titl…'"),
    (b"no such layer", "not an image: body starts with 'no such layer'"),
    (b"\x00\x01\x02\x03\x9c\x80" * 10, "unrecognised data"),
    (jpeg()[:-400], "truncated|undecodable|premature"),
    (jpeg((64, 80)), "image is 64x80, expected 64x64"),
    (png((64, 64)), "a PNG image, expected JPEG"),
    (imitation_corrupt(png((64, 64))), "undecodable PNG"),
])
def test_check_image_rejects(body: bytes, reason: str) -> None:
    formats = ("JPEG",) if body.startswith(b"\x89PNG") and "expected JPEG" in reason else ("JPEG", "PNG")
    with pytest.raises(BadImage, match=reason if "|" in reason else re.escape(reason)) as err:
        check_image(body, size=64, formats=formats)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("declared", [(30000, 30000), (5000, 5000)])
def test_check_image_rejects_bomb_without_decoding(monkeypatch, declared) -> None:
    def refuse(*args: object, **kw: object) -> None:
        raise AssertionError("decoded a decompression bomb")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)
    with pytest.raises(BadImage, match="decompression bomb") as err:
        check_image(png_declaring(*declared), size=None)
    assert f"{declared[0]}x{declared[1]}" in str(err.value) or f"{declared[0] * declared[1]} pixels" in str(err.value)


def test_check_image_max_pixels_is_configurable() -> None:
    with pytest.raises(BadImage, match="over the 1000-pixel limit"):
        check_image(jpeg((64, 64)), size=None, max_pixels=1000)


def test_check_image_accepts_jpeg_variants() -> None:
    """Restart markers, grey scale, chroma subsampling, optimised tables and progressive all pass when intact."""
    rng = np.random.default_rng(3)
    pixels = (rng.random((100, 124, 3)) * 90).astype(np.uint8)
    variants = [{"subsampling": 0}, {"subsampling": 2, "optimize": True}, {"progressive": True},
                {"restart_marker_blocks": 5}, {"grey": True}]
    for kw in variants:
        buf = io.BytesIO()
        img = Image.fromarray(pixels[:, :, 0] if kw.pop("grey", False) else pixels)
        img.save(buf, format="JPEG", quality=85, **kw)
        assert check_image(buf.getvalue(), size=(124, 100)) == (124, 100)


# ------------------------------------------------------------------------------ faults, real session
def test_503_burst_is_retried(service, session, galaxies) -> None:
    service.inject("status", match="getjpeg", code=503, times=3)
    data = fetch(session, service, galaxies)
    assert check_image(data, size=128) == (128, 128)
    assert [s.status for s in cutouts(service, expect=4)] == [503, 503, 503, 200]


def test_429_retry_after_is_honoured(service, session, galaxies) -> None:
    service.inject("status", match="getjpeg", code=429, retry_after=1)
    t0 = time.monotonic()
    fetch(session, service, galaxies)
    assert time.monotonic() - t0 >= 1.0
    assert [s.status for s in cutouts(service, expect=2)] == [429, 200]


@pytest.mark.parametrize("kind", ["stall", "stall_body", "truncate"])
def test_stalls_and_truncation_are_retried(service, session, galaxies, kind) -> None:
    clean = fetch(session, service, galaxies)
    service.inject(kind, match="getjpeg", seconds=1.0)
    assert fetch(session, service, galaxies) == clean
    assert sorted(str(s.fault) for s in cutouts(service, expect=3)) == sorted(["None", kind, "None"])


def test_body_cut_short_without_content_length_is_rejected(service, session, galaxies) -> None:
    # a proxy that drops the length and the tail: only the decoder can tell
    clean = fetch(session, service, galaxies)
    service.inject("body", match="getjpeg", body=clean[: len(clean) // 2])
    with pytest.raises(BadImage, match=r"getjpeg\?ra=.*undecodable JPEG"):
        fetch(session, service, galaxies)


def test_html_body_and_persistent_errors(service, session, galaxies) -> None:
    service.inject("body", match="getjpeg", body=b"<html><body>Service temporarily unavailable</body></html>")
    with pytest.raises(BadImage, match="not an image: body starts with '<html><body>Service"):
        fetch(session, service, galaxies)
    service.inject("status", match="getjpeg", code=500, times=4)
    with pytest.raises(net.FetchError, match="HTTP 500"):
        fetch(session, service, galaxies)


# ------------------------------------------------------------------------ Petrosian radii (SQL)
def sql_requests(svc: SkyServerImitation, expect: int = 1) -> list:
    return served(svc, r"/en/tools/search/x_(results|sql)\.aspx$", expect)


@pytest.mark.parametrize("dr", [17, 10])
def test_petrosian_radii_through_astroquery(service, galaxies, dr) -> None:
    unknown = BASE_OBJID + 1  # differs from a known id only below float precision
    ids = [*galaxies.dr7objid.tolist(), unknown]
    out = skyserver.petrosian_radii(ids, base_url=service.url, data_release=dr)
    assert list(out.columns) == ["dr7objid", "petroR90_r"]
    assert out.dr7objid.dtype == np.int64 and out.petroR90_r.dtype == np.float64
    in_gz2 = galaxies[galaxies["sample"] != "stripe82"]  # stripe82 is in neither main table
    got = dict(zip(out.dr7objid.tolist(), out.petroR90_r.tolist(), strict=True))
    assert got == pytest.approx(dict(zip(in_gz2.dr7objid.tolist(), in_gz2.petroR90_r.tolist(), strict=True)))
    assert set(got) == set(in_gz2.dr7objid.tolist())  # exact int64 keys
    (hit,) = sql_requests(service)
    assert hit.request.path == f"/dr{dr}/en/tools/search/x_{'results' if dr > 10 else 'sql'}.aspx"
    assert hit.request.query["format"] == "csv"
    from astroquery.sdss import conf

    assert conf.skyserver_baseurl == "https://skyserver.sdss.org"  # astroquery's setting is restored


def test_petrosian_radii_batches_exact_ids(galaxies) -> None:
    many = pd.DataFrame({"ra": 180.0, "dec": 0.0, "image": [galaxies.image[0]] * 1001,
                         "dr7objid": BASE_OBJID + np.arange(1001, dtype=np.int64) * 3,
                         "petroR90_r": np.linspace(3, 30, 1001), "sample": "original"})
    many.loc[5, "petroR90_r"] = np.nan  # served as SDSS's -9999
    with SkyServerImitation(many) as svc:
        out = skyserver.petrosian_radii(many.dr7objid.to_numpy(), base_url=svc.url, data_release=17, batch=500)
        batches = sql_requests(svc, expect=3)
    assert len(batches) == 3
    sizes = [len(re.search(r"IN \(([^)]*)\)", s.request.query["cmd"]).group(1).split(",")) for s in batches]
    assert sizes == [500, 500, 1]
    assert all(s.request.query["searchtool"] == "SQL" for s in batches)
    assert np.array_equal(np.sort(out.dr7objid.to_numpy()), many.dr7objid.to_numpy())
    assert out.set_index("dr7objid").loc[int(many.dr7objid[5]), "petroR90_r"] == -9999.0


def test_petrosian_radii_server_errors(service, galaxies) -> None:
    ids = galaxies.dr7objid.to_numpy()
    service.inject("status", match="x_results", code=500)
    with pytest.raises(net.FetchError, match=r"batch 1/1: HTTP 500 Internal Server Error$"):
        skyserver.petrosian_radii(ids, base_url=service.url, data_release=17)
    page = error_page("Invalid object name 'zoo2MainSpecz'.").body
    service.inject("body", match="x_results", body=page)
    with pytest.raises(net.FetchError, match=r"error page \(.*Invalid object name 'zoo2MainSpecz'"):
        skyserver.petrosian_radii(ids, base_url=service.url, data_release=17)
    # with our settings astroquery's session retries a 503 burst
    service.inject("status", match="x_results", code=503, times=2)
    out = skyserver.petrosian_radii(ids, base_url=service.url, data_release=17, settings=SETTINGS)
    assert len(out) == 2


def test_petrosian_radii_input_checks(service) -> None:
    with pytest.raises(UserError, match="exact int64"):
        skyserver.petrosian_radii(np.array([5.877e17]), base_url=service.url, data_release=17)
    with pytest.raises(UserError, match=">= 10"):
        skyserver.petrosian_radii([BASE_OBJID], base_url=service.url, data_release=9)
    empty = skyserver.petrosian_radii([], base_url=service.url, data_release=17)
    assert empty.empty and empty.dr7objid.dtype == np.int64
    assert service.log == []


def test_imitation_sql_search_endpoint(service, session, galaxies) -> None:
    url = f"{service.url}/dr17/SkyServerWS/SearchTools/SqlSearch"
    sql = skyserver.petrosian_sql(galaxies.dr7objid.tolist())
    text = session.get(url, params={"cmd": sql, "format": "csv"}, timeout=5).text
    assert text.splitlines()[:2] == ["#Table1", "dr7objid,petroR90_r"]
    assert len(text.splitlines()) == 4
    other = session.get(url, params={"cmd": "SELECT TOP 1 objid FROM PhotoObj", "format": "csv"}, timeout=5)
    assert other.status_code == 200 and "Skyserver Error" in other.text

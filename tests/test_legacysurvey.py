"""Legacy Survey viewer client against a loopback imitation: parameters, "no such layer", faults."""

from __future__ import annotations

import io
import time

import pandas as pd
import pytest
import requests
from imitations.legacysurvey import LegacySurveyImitation
from PIL import Image
from test_skyserver import SETTINGS, served, simulated_galaxies

from gzmorph import net
from gzmorph.config import UserError
from gzmorph.sources import legacysurvey
from gzmorph.sources.images import BadImage, check_image


@pytest.fixture(scope="module")
def galaxies() -> pd.DataFrame:
    return simulated_galaxies(n=2)


@pytest.fixture
def service(galaxies: pd.DataFrame):
    with LegacySurveyImitation(galaxies) as svc:
        yield svc


@pytest.fixture
def session():
    with net.make_session(SETTINGS) as s:
        yield s


def fetch(session: requests.Session, svc: LegacySurveyImitation, galaxies: pd.DataFrame, *, layer: str = "ls-dr9",
          size: int = 96, pixscale: float = 0.262) -> bytes:
    return legacysurvey.fetch_cutout(session, base_url=svc.url, ra=float(galaxies.ra[0]), dec=float(galaxies.dec[0]),
                                     layer=layer, pixscale=pixscale, size=size, settings=SETTINGS)


def test_cutout_url() -> None:
    assert legacysurvey.cutout_url("https://www.legacysurvey.org/") == "https://www.legacysurvey.org/viewer/cutout.jpg"


@pytest.mark.parametrize("layer", ["ls-dr9", "ls-dr10", "decals-dr5", "sdss"])
def test_fetch_cutout_parameters(service, session, galaxies, layer) -> None:
    data = fetch(session, service, galaxies, layer=layer, size=100, pixscale=0.3)
    (request,) = [s.request for s in served(service)]
    q = request.query
    assert request.path == "/viewer/cutout.jpg"
    assert q["layer"] == layer and float(q["pixscale"]) == 0.3 and q["size"] == "100"
    assert float(q["ra"]) == float(galaxies.ra[0]) and float(q["dec"]) == float(galaxies.dec[0])
    with Image.open(io.BytesIO(data)) as img:
        assert img.format == "JPEG" and img.size == (100, 100)


def test_unknown_layer_is_rejected_with_the_reason(service, session, galaxies) -> None:
    with pytest.raises(BadImage, match=r"layer=ls-dr99.*body starts with 'no such layer'.*unknown to the viewer"):
        fetch(session, service, galaxies, layer="ls-dr99")
    assert [s.status for s in served(service)] == [200]  # a 200 answer, and not retried


def test_html_body_is_rejected(service, session, galaxies) -> None:
    service.inject("body", match="cutout", body=b"<!DOCTYPE html><html><head><title>Legacy Survey</title>")
    with pytest.raises(BadImage, match="not an image: body starts with '<!DOCTYPE html>"):
        fetch(session, service, galaxies)


def test_http_400_is_a_fetch_error(service, session, galaxies) -> None:
    url = legacysurvey.cutout_url(service.url)
    assert session.get(url, params={"dec": 1.0, "layer": "ls-dr9"}, timeout=5).status_code == 400  # no ra
    served(service)
    service.log.clear()
    service.inject("status", match="cutout", code=400)
    with pytest.raises(net.FetchError, match="HTTP 400"):
        fetch(session, service, galaxies)
    time.sleep(0.1)
    assert len(served(service)) == 1  # a client error is not retried


def test_size_limit(service, session, galaxies) -> None:
    with pytest.raises(UserError, match="3000"):
        fetch(session, service, galaxies, size=3001)
    assert service.log == []


def test_alias_path_serves_the_same_image(service, session, galaxies) -> None:
    data = fetch(session, service, galaxies)
    params = {"ra": float(galaxies.ra[0]), "dec": float(galaxies.dec[0]), "layer": "ls-dr9", "pixscale": 0.262,
              "size": 96}
    alias = session.get(f"{service.url}/viewer/jpeg-cutout", params=params, timeout=5).content
    assert alias == data


def test_faults_are_retried_or_rejected(service, session, galaxies) -> None:
    clean = fetch(session, service, galaxies)
    service.inject("status", match="cutout", code=503, times=2)
    assert fetch(session, service, galaxies) == clean
    service.inject("truncate", match="cutout")
    assert fetch(session, service, galaxies) == clean
    service.inject("body", match="cutout", body=clean[: len(clean) // 2])
    with pytest.raises(BadImage, match="undecodable JPEG"):
        fetch(session, service, galaxies)
    assert check_image(clean, size=96, formats=("JPEG",)) == (96, 96)

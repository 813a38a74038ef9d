"""gzmorph.net against a loopback server: resume, retries, time-outs, md5, limits, pacing."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import time
from pathlib import Path

import pytest
import requests
from imitations.base import Imitation, Reply, Request

from gzmorph import net
from gzmorph.net import FetchError, HttpSettings, RateLimiter

CONTENT = os.urandom(300_000)
MD5 = hashlib.md5(CONTENT).hexdigest()
BIG = os.urandom(3 * net.CHUNK_BYTES + 12345)  # resume keeps whole chunks: a cut chunk is fetched again
FAST = HttpSettings(timeout_s=5.0, retries=5, backoff_s=0.01, backoff_max_s=0.05)


class Files(Imitation):
    """``/file`` honours Range, ``/noranges`` does not, ``/small`` is a short body, else 404."""

    def route(self, request: Request) -> Reply:
        if request.path == "/file":
            return Reply(200, CONTENT, ranges=True)
        if request.path == "/big":
            return Reply(200, BIG, ranges=True)
        if request.path == "/noranges":
            return Reply(200, CONTENT)
        if request.path == "/small":
            return Reply(200, b"0123456789", "text/plain")
        return Reply(404, b"not here", "text/plain")


def settle(svc: Imitation, n: int, timeout: float = 3.0) -> list:
    """The server logs a request after answering it: wait until ``n`` entries are there."""
    deadline = time.monotonic() + timeout
    while len(svc.log) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    return svc.log


@pytest.fixture()
def svc():
    with Files() as server:
        yield server


def get(svc: Files, tmp_path: Path, path: str = "/file", settings: HttpSettings = FAST, **kw) -> tuple[str, Path]:
    target = tmp_path / "out.bin"
    with net.make_session(settings) as session:
        outcome = net.download(session, svc.url + path, target, settings=settings, md5=MD5, size=len(CONTENT),
                               progress=False, **kw)
    return outcome, target


def test_download_fresh_then_skipped(svc, tmp_path):
    assert get(svc, tmp_path)[0] == "fetched"
    outcome, target = get(svc, tmp_path)
    assert outcome == "skipped" and target.read_bytes() == CONTENT
    assert len(settle(svc, 1)) == 1  # the re-run asked for nothing


def test_resumes_part_of_an_earlier_process(svc, tmp_path):
    net.part_path(tmp_path / "out.bin").write_bytes(CONTENT[:120_000])
    outcome, target = get(svc, tmp_path)
    assert outcome == "resumed" and target.read_bytes() == CONTENT
    (served,) = settle(svc, 1)
    assert served.request.headers["Range"] == "bytes=120000-" and served.status == 206
    assert not net.part_path(target).exists()


def test_server_ignoring_range_restarts_from_zero(svc, tmp_path):
    net.part_path(tmp_path / "out.bin").write_bytes(CONTENT[:120_000])
    outcome, target = get(svc, tmp_path, "/noranges")
    assert target.read_bytes() == CONTENT
    (served,) = settle(svc, 1)
    assert served.request.headers.get("Range") == "bytes=120000-" and served.status == 200


def test_wrong_bytes_in_part_are_caught_by_md5(svc, tmp_path):
    net.part_path(tmp_path / "out.bin").write_bytes(b"\0" * 120_000)  # a part left by another file
    outcome, target = get(svc, tmp_path)
    assert target.read_bytes() == CONTENT  # resumed, md5 failed, discarded and fetched whole


def test_truncated_body_is_resumed(svc, tmp_path):
    svc.inject("truncate", match="/big")
    target = tmp_path / "big.bin"
    with net.make_session(FAST) as session:
        outcome = net.download(session, svc.url + "/big", target, settings=FAST, size=len(BIG),
                               md5=hashlib.md5(BIG).hexdigest(), progress=False)
    assert outcome == "resumed" and target.read_bytes() == BIG
    first, second = settle(svc, 2)
    assert first.fault == "truncate" and second.status == 206
    offset = int(second.request.headers["Range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < offset <= len(BIG) // 2  # continued from what the cut answer had delivered


def test_stall_past_the_timeout_is_retried(svc, tmp_path):
    svc.inject("stall", match="/file", seconds=2.0)
    outcome, target = get(svc, tmp_path, settings=HttpSettings(timeout_s=0.5, retries=3, backoff_s=0.01))
    assert target.read_bytes() == CONTENT and svc.pending_faults() == 0


def test_stall_in_the_body_is_resumed(svc, tmp_path):
    svc.inject("stall_body", match="/file", seconds=2.0)
    outcome, target = get(svc, tmp_path, settings=HttpSettings(timeout_s=0.5, retries=3, backoff_s=0.01))
    assert outcome == "resumed" and target.read_bytes() == CONTENT


def test_503_burst_then_success(svc, tmp_path):
    svc.inject("status", match="/file", times=3, code=503)
    outcome, target = get(svc, tmp_path)
    assert target.read_bytes() == CONTENT
    assert [s.status for s in settle(svc, 4)] == [503, 503, 503, 200]


def test_5xx_for_good_is_a_clear_error(svc, tmp_path):
    svc.inject("status", match="/file", times=50, code=502)
    with pytest.raises(FetchError, match=r"/file: HTTP 502"):
        get(svc, tmp_path, settings=HttpSettings(timeout_s=5.0, retries=2, backoff_s=0.01))
    assert not (tmp_path / "out.bin").exists()


def test_429_retry_after_is_respected(svc, tmp_path):
    svc.inject("status", match="/file", code=429, retry_after=1)
    outcome, target = get(svc, tmp_path)
    assert target.read_bytes() == CONTENT
    first, second = settle(svc, 2)[:2]
    assert first.status == 429 and second.request.time - first.request.time >= 1.0


def test_wrong_md5_every_time_fails_and_lands_nothing(svc, tmp_path):
    target = tmp_path / "out.bin"
    with net.make_session(FAST) as session, pytest.raises(FetchError, match="md5") as err:
        net.download(session, svc.url + "/file", target, settings=FAST, md5="0" * 32, size=len(CONTENT),
                     attempts=3, progress=False)
    assert str(target) in str(err.value) and "\n" not in str(err.value)
    assert not target.exists() and not net.part_path(target).exists()
    assert list(tmp_path.iterdir()) == []


def test_existing_wrong_target_is_replaced(svc, tmp_path):
    (tmp_path / "out.bin").write_bytes(b"stale")
    outcome, target = get(svc, tmp_path)
    assert outcome == "fetched" and target.read_bytes() == CONTENT


def test_fetch_bytes_limit(svc):
    with net.make_session(FAST) as session:
        assert net.fetch_bytes(session, svc.url + "/small", settings=FAST) == b"0123456789"
        with pytest.raises(FetchError, match="over the 1000-byte limit"):
            net.fetch_bytes(session, svc.url + "/file", settings=FAST, max_bytes=1000)


def test_fetch_bytes_retries_a_truncated_body(svc):
    svc.inject("truncate", match="/file")
    with net.make_session(FAST) as session:
        assert net.fetch_bytes(session, svc.url + "/file", settings=FAST) == CONTENT


def test_404_fails_at_once_naming_url_and_status(svc, tmp_path):
    url = svc.url + "/nothing"
    with net.make_session(FAST) as session, pytest.raises(FetchError) as err:
        net.fetch_bytes(session, url, settings=FAST)
    assert url in str(err.value) and "HTTP 404" in str(err.value)
    time.sleep(0.1)
    assert len(settle(svc, 1)) == 1  # not retried
    with net.make_session(FAST) as session, pytest.raises(FetchError, match="HTTP 404"):
        net.download(session, url, tmp_path / "x", settings=FAST, progress=False)
    assert not (tmp_path / "x").exists()


def test_connection_reuse(svc, tmp_path):
    with net.make_session(FAST) as session:
        for _ in range(3):
            net.fetch_bytes(session, svc.url + "/small", settings=FAST)
        for name in ("a", "b"):
            net.download(session, svc.url + "/file", tmp_path / name, settings=FAST, md5=MD5, progress=False)
    ports = {s.request.client[1] for s in settle(svc, 5)}
    assert len(svc.log) == 5 and len(ports) == 1


def test_rate_limiter_in_one_process_spaces_requests(svc):
    limiter = RateLimiter(per_minute=600)  # 0.1 s apart
    with net.make_session(FAST, limiter) as session:
        for _ in range(4):
            net.fetch_bytes(session, svc.url + "/small", settings=FAST)
    times = sorted(s.request.time for s in settle(svc, 4))
    assert min(b - a for a, b in zip(times, times[1:], strict=False)) >= 0.09


def _paced_worker(url: str, state_file: str, per_minute: float, n: int, barrier) -> None:
    limiter = RateLimiter(per_minute, state_file)
    with net.make_session(FAST, limiter) as session:
        barrier.wait()  # both processes compete for the same slots
        for _ in range(n):
            net.fetch_bytes(session, url, settings=FAST)


def test_rate_limiter_shared_across_processes(svc, tmp_path):
    per_minute, n = 200.0, 4  # 0.3 s apart
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_paced_worker, args=(svc.url + "/small", str(tmp_path / "pace"), per_minute, n,
                                                     barrier)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    log = settle(svc, 2 * n)
    assert len({s.request.client[1] for s in log}) == 2  # two processes, one connection each
    times = sorted(s.request.time for s in log)
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert min(gaps) >= 0.9 * 60.0 / per_minute, gaps


def test_rerun_trusts_the_md5_stamp_until_the_file_changes(svc, tmp_path, monkeypatch):
    assert get(svc, tmp_path)[0] == "fetched"
    hashed = []
    real_md5 = net.file_md5
    monkeypatch.setattr(net, "file_md5", lambda p: hashed.append(p) or real_md5(p))
    outcome, target = get(svc, tmp_path)
    assert outcome == "skipped" and hashed == []  # the stamp answered: a 25 GB zip is not read again
    target.write_bytes(bytes(len(CONTENT)))  # same size, other bytes and mtime: the stamp no longer applies
    outcome, target = get(svc, tmp_path)
    assert outcome == "fetched" and hashed and target.read_bytes() == CONTENT


def test_download_asks_for_identity_encoding(svc, tmp_path):
    get(svc, tmp_path)
    assert settle(svc, 1)[0].request.headers["Accept-Encoding"] == "identity"


def test_no_test_can_reach_the_real_network():
    # conftest's guard: a test that forgot to point a client at an imitation fails instead of going online
    with pytest.raises(requests.exceptions.ConnectionError, match="loopback imitations"):
        requests.get("https://zenodo.org/api/records/4573248", timeout=1)

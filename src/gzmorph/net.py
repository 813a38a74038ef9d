"""HTTP for the real data sources: retries, rate limits, bounded and verified, resumable downloads.

- :func:`make_session`: one ``requests.Session`` per service, with connection reuse and urllib3
  ``Retry`` (exponential back-off, ``Retry-After`` on 429/503) for connect errors, read time-outs and
  429/5xx answers.  A :class:`RateLimiter` paces every request, retries included; it is shared through a
  lock file, so by every job on one machine, or on all nodes only when the file is on a shared file system
  with working locks (otherwise per node: see :class:`RateLimiter` and ``real.rate_limit``).
- :func:`fetch_bytes`: a small body (an image cutout, a JSON record) with a size limit.
- :func:`download`: a large file into ``<target>.part``, resumed with HTTP Range after an
  interruption, checked against size and md5, renamed onto ``target`` only when it is right.

urllib3 retries a request until its headers arrive; a body that stalls or is cut short afterwards is
outside its reach, so the two functions retry (or resume) that case themselves, a bounded number of times.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from gzmorph import __version__
from gzmorph.config import UserError

log = logging.getLogger(__name__)

RETRY_STATUSES = (429, 500, 502, 503, 504)
# Errors raised while a response body is read, after urllib3 has handed the response over.
BODY_ERRORS = (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError,
               requests.exceptions.Timeout)
CHUNK_BYTES = 1 << 20


class FetchError(UserError):
    """A request failed for good; the message says which URL and why, in one line."""


@dataclass(frozen=True)
class HttpSettings:
    timeout_s: float = 30.0      # connect and read time-out (a read stalling this long is retried)
    retries: int = 5             # urllib3 retries per request
    backoff_s: float = 1.0       # back-off factor: waits of backoff_s * 2**n, capped at backoff_max_s
    backoff_max_s: float = 60.0
    user_agent: str = f"gzmorph/{__version__} (Galaxy Zoo morphology pipeline)"

    @classmethod
    def from_params(cls, http: dict[str, Any]) -> HttpSettings:
        return cls(timeout_s=float(http["timeout_s"]), retries=int(http["retries"]),
                   backoff_s=float(http["backoff_s"]), backoff_max_s=float(http.get("backoff_max_s", 60.0)))


class RateLimiter:
    """At most ``per_minute`` requests per minute, evenly spaced.

    With ``state_file`` the pace is shared by every process (and thread) using that file, through an
    ``fcntl`` lock: the parallel fetch jobs of one service on one machine stay within its limit together.

    Across cluster nodes the sharing holds only where the file is on a file system every node mounts and
    whose locks work across nodes (NFSv4, Lustre and GPFS with locking on; not NFS mounted ``nolock``).
    Where the file is on node-local storage (a node's /tmp, a per-job scratch directory), each node has its
    own file: each node paces itself to ``per_minute`` alone, and N nodes fetching at once send up to
    N x ``per_minute``.  The fetch stage configures this with ``real.rate_limit`` (see
    :func:`gzmorph.fetch.rate_limiter`): ``dir``, where the files live (point it at a shared path), and
    ``nodes``, which divides each service's limit so that N node-local limiters add up to it.
    """

    def __init__(self, per_minute: float, state_file: str | os.PathLike[str] | None = None) -> None:
        if per_minute <= 0:
            raise ValueError("per_minute must be positive")
        self.interval = 60.0 / per_minute
        self.state_file = Path(state_file) if state_file is not None else None
        self._lock = threading.Lock()
        self._next = 0.0

    def _claim(self) -> float:
        """Reserve the next free slot; return when it starts (time.time())."""
        now = time.time()
        if self.state_file is None:
            start = max(now, self._next)
            self._next = start + self.interval
            return start
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.state_file, "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                fh.seek(0)
                text = fh.read().strip()
                try:
                    next_free = float(text) if text else 0.0
                except ValueError:  # a torn or foreign file: start afresh rather than fail a fetch
                    next_free = 0.0
                start = max(now, next_free)
                fh.seek(0)
                fh.truncate()
                fh.write(f"{start + self.interval:.6f}")
                fh.flush()
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
        return start

    def wait(self) -> float:
        """Block until this request may go; return the seconds waited."""
        with self._lock:
            start = self._claim()
        delay = max(0.0, start - time.time())
        if delay:
            time.sleep(delay)
        return delay


class _PacedRetry(Retry):
    """urllib3 Retry that also waits for the rate limiter before each retry."""

    limiter: RateLimiter | None = None

    def new(self, **kw: Any) -> _PacedRetry:
        retry = super().new(**kw)
        retry.limiter = self.limiter
        return retry

    def sleep(self, response: Any = None) -> None:
        super().sleep(response)
        if self.limiter is not None:
            self.limiter.wait()


class _PacedAdapter(HTTPAdapter):
    """Waits for the rate limiter before a request's first attempt."""

    def __init__(self, limiter: RateLimiter | None, **kw: Any) -> None:
        self.limiter = limiter
        super().__init__(**kw)

    def send(self, request: requests.PreparedRequest, **kw: Any) -> requests.Response:
        if self.limiter is not None:
            self.limiter.wait()
        return super().send(request, **kw)


def make_session(settings: HttpSettings, limiter: RateLimiter | None = None, pool_size: int = 4) -> requests.Session:
    """A session for one service: pooled connections, retries with back-off, paced by ``limiter``."""
    retry = _PacedRetry(
        total=settings.retries, connect=settings.retries, read=settings.retries, status=settings.retries,
        backoff_factor=settings.backoff_s, backoff_max=settings.backoff_max_s,
        status_forcelist=RETRY_STATUSES, allowed_methods=frozenset({"GET", "HEAD"}),
        respect_retry_after_header=True, raise_on_status=False,  # we report the last status ourselves
    )
    retry.limiter = limiter
    adapter = _PacedAdapter(limiter, max_retries=retry, pool_connections=pool_size, pool_maxsize=pool_size)
    session = requests.Session()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = settings.user_agent
    return session


def _timeout(settings: HttpSettings) -> tuple[float, float]:
    return (settings.timeout_s, settings.timeout_s)


def _pause(settings: HttpSettings, attempt: int) -> None:
    time.sleep(min(settings.backoff_max_s, settings.backoff_s * 2**attempt))


def _status_error(url: str, response: requests.Response) -> FetchError:
    body = response.text[:80].replace("\n", " ") if response.content else ""
    return FetchError(f"{url}: HTTP {response.status_code}" + (f" ({body})" if body else ""))


def fetch_bytes(session: requests.Session, url: str, *, settings: HttpSettings, params: dict[str, Any] | None = None,
                max_bytes: int = 32 << 20, attempts: int = 3) -> bytes:
    """GET a body of at most ``max_bytes``; raise :class:`FetchError` with the reason."""
    last: Exception | None = None
    for attempt in range(attempts):
        try:
            response = session.get(url, params=params, stream=True, timeout=_timeout(settings))
        except requests.exceptions.RequestException as exc:  # urllib3 has already retried
            raise FetchError(f"{url}: {describe_error(exc)}") from None
        with response:
            if response.status_code != 200:
                raise _status_error(response.url or url, response)
            declared = response.headers.get("Content-Length")
            if declared is not None and declared.isdigit() and int(declared) > max_bytes:
                raise FetchError(f"{response.url}: response of {int(declared)} bytes is over the "
                                 f"{max_bytes}-byte limit")
            try:
                body = bytearray()
                for chunk in response.iter_content(64 << 10):
                    body += chunk
                    if len(body) > max_bytes:
                        raise FetchError(f"{response.url}: response is over the {max_bytes}-byte limit")
                return bytes(body)
            except BODY_ERRORS as exc:  # stalled or cut short after the headers: try again
                last = exc
        _pause(settings, attempt)
    raise FetchError(f"{url}: body failed {attempts} times ({describe_error(last)})")


def describe_error(exc: BaseException | None) -> str:
    """One line about a requests/urllib3 failure, for reports and error messages."""
    if exc is None:
        return "unknown error"
    if isinstance(exc, requests.exceptions.Timeout):
        return f"timed out ({type(exc).__name__})"
    text = str(exc)
    if "Max retries exceeded" in text:
        cause = text.rsplit("(Caused by ", 1)[-1].rstrip(")")
        return f"retries exhausted: {cause[:160]}"
    return f"{type(exc).__name__}: {text[:160]}"


def file_md5(path: str | os.PathLike[str]) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def part_path(target: str | os.PathLike[str]) -> Path:
    target = Path(target)
    return target.with_name(target.name + ".part")


def download(session: requests.Session, url: str, target: str | os.PathLike[str], *, settings: HttpSettings,
             md5: str | None = None, size: int | None = None, attempts: int = 5, progress: bool = True) -> str:
    """Download ``url`` to ``target``; return ``"skipped"``, ``"fetched"`` or ``"resumed"``.

    Bytes go to ``<target>.part``; an interrupted download (this call's or an earlier process's) continues
    from where it stopped when the server honours Range, and starts over when it does not.  The file is
    renamed onto ``target`` only once its size and md5 match; a wrong md5 discards it and starts over.
    """
    from tqdm import tqdm

    target = Path(target)
    if target.exists():
        if (size is None or target.stat().st_size == size) and (md5 is None or _verified_md5(target) == md5):
            return "skipped"
        log.warning("%s: existing file does not match the expected size/md5; downloading it again", target)
    target.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(target)
    resumed = part.exists() and part.stat().st_size > 0
    last = "no attempt made"
    for attempt in range(attempts):
        offset = part.stat().st_size if part.exists() else 0
        if size is not None and offset > size:
            part.unlink()
            offset = 0
        if size is not None and offset == size:
            outcome = _finish(part, target, md5, url)
            if outcome is None:
                return "resumed" if resumed else "fetched"
            last = outcome
            continue
        # identity: a Range offset counts the bytes as sent, which must be the file's own bytes
        headers = {"Accept-Encoding": "identity", **({"Range": f"bytes={offset}-"} if offset else {})}
        try:
            response = session.get(url, stream=True, timeout=_timeout(settings), headers=headers)
        except requests.exceptions.RequestException as exc:
            raise FetchError(f"{url}: {describe_error(exc)}") from None
        with response:
            if response.status_code == 206 and offset and _range_start(response) == offset:
                mode = "ab"
            elif response.status_code == 200:
                mode, offset = "wb", 0  # Range not honoured: start over
            elif response.status_code == 416:
                part.unlink(missing_ok=True)  # our part is longer than the file: start over
                last = "range not satisfiable"
                continue
            else:
                raise _status_error(url, response)
            total = size if size is not None else _content_total(response, offset)
            try:
                with open(part, mode) as fh, tqdm(total=total, initial=offset, unit="B", unit_scale=True,
                                                  unit_divisor=1024, desc=target.name, file=sys.stderr,
                                                  disable=not progress, mininterval=1.0) as bar:
                    for chunk in response.iter_content(CHUNK_BYTES):
                        fh.write(chunk)
                        bar.update(len(chunk))
                    fh.flush()
                    os.fsync(fh.fileno())
            except BODY_ERRORS as exc:
                last = describe_error(exc)
                log.info("%s: interrupted at %d bytes (%s); resuming", target.name, _size(part), last)
                resumed = True
                _pause(settings, attempt)
                continue
        if size is not None and _size(part) != size:
            last = f"got {_size(part)} of {size} bytes"
            resumed = True
            _pause(settings, attempt)
            continue
        outcome = _finish(part, target, md5, url)
        if outcome is None:
            return "resumed" if resumed else "fetched"
        last = outcome
    raise FetchError(f"{url}: download failed after {attempts} attempts ({last}); {target} not written")


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _range_start(response: requests.Response) -> int | None:
    """First byte of a 206 answer, from ``Content-Range: bytes a-b/total``."""
    value = response.headers.get("Content-Range", "")
    try:
        return int(value.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


def _content_total(response: requests.Response, offset: int) -> int | None:
    length = response.headers.get("Content-Length")
    return offset + int(length) if length and length.isdigit() else None


def _finish(part: Path, target: Path, md5: str | None, url: str) -> str | None:
    """Check the md5 and rename the part onto the target; the reason it failed, or None."""
    if md5 is None:  # nothing to verify, so nothing to stamp: no need to read the file again
        os.replace(part, target)
        return None
    got = file_md5(part)
    if got != md5:
        part.unlink()
        log.warning("%s: md5 %s, expected %s; discarded, downloading again", target.name, got, md5)
        return f"md5 {got} differs from the expected {md5}"
    os.replace(part, target)
    _write_stamp(target, got)
    return None


def _stamp_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.md5")


def _write_stamp(target: Path, md5: str) -> None:
    from gzmorph.io import write_text

    st = target.stat()
    write_text(_stamp_path(target), f"{md5} {st.st_size} {st.st_mtime_ns}\n")


def _verified_md5(target: Path) -> str:
    """The md5 of ``target``, from its stamp when size and mtime still match (re-hashing 25 GB zips on every
    re-run would read them all again), else computed."""
    try:
        md5, size, mtime = _stamp_path(target).read_text().split()
        st = target.stat()
        if int(size) == st.st_size and int(mtime) == st.st_mtime_ns:
            return md5
    except (OSError, ValueError):
        pass
    return file_md5(target)

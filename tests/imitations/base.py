"""A loopback HTTP server with fault injection, the base of every service imitation.

A service imitation subclasses :class:`Imitation` and implements ``route(request) -> Reply``.  The base
serves it on 127.0.0.1 (an ephemeral port), answers HTTP Range requests for replies that allow it,
keeps a log of every request, and applies faults queued with :meth:`Imitation.inject`:

- ``status``: answer ``code`` (e.g. 503, or 429 with ``retry_after`` seconds) instead of the real reply;
- ``stall``: wait ``seconds`` before the headers (a client time-out fires first);
- ``stall_body``: send the headers and half the body, then wait ``seconds``;
- ``truncate``: declare the full Content-Length, send half the body and close the connection;
- ``corrupt``: flip bytes in the body (a wrong md5, a broken image);
- ``body``: replace the body with ``body`` bytes (an HTML error page, "no such layer").

Faults are consumed in order by the requests whose path contains ``match``; ``times`` repeats one.
"""

from __future__ import annotations

import re
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FAULT_KINDS = ("status", "stall", "stall_body", "truncate", "corrupt", "body")


@dataclass
class Request:
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    client: tuple[str, int]
    time: float


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/octet-stream"
    headers: dict[str, str] = field(default_factory=dict)
    ranges: bool = False  # honour Range requests (206 partial content)


@dataclass
class Fault:
    kind: str
    match: str = ""
    times: int = 1
    code: int = 503
    retry_after: int | None = None  # seconds (HTTP allows only whole seconds)
    seconds: float = 5.0
    body: bytes = b"<html><body>Service temporarily unavailable</body></html>"


@dataclass
class Served:
    request: Request
    status: int          # 0 while the reply is being sent, -1 when the client hung up first
    fault: str | None


class Imitation(ThreadingHTTPServer):
    """Subclass and implement :meth:`route`.  Use as a context manager: ``with Service() as svc: svc.url``."""

    daemon_threads = True
    block_on_close = False

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self.log: list[Served] = []
        self.faults_taken: list[Fault] = []  # recorded when a request picks the fault up (before any stall)
        self._thread: threading.Thread | None = None

    # -- to implement ------------------------------------------------------------------------------
    def route(self, request: Request) -> Reply:
        raise NotImplementedError

    # -- control -----------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def inject(self, kind: str, *, match: str = "", times: int = 1, **kw: Any) -> None:
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; known: {FAULT_KINDS}")
        with self._lock:
            self._faults.append(Fault(kind, match=match, times=times, **kw))

    def pending_faults(self) -> int:
        with self._lock:
            return sum(f.times for f in self._faults)

    def faults_served(self) -> list[Served]:
        return [s for s in self.log if s.fault is not None]

    def requests_to(self, pattern: str) -> list[Served]:
        return [s for s in self.log if re.search(pattern, s.request.path)]

    def _take_fault(self, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.match in path:
                    fault.times -= 1
                    if fault.times <= 0:
                        self._faults.remove(fault)
                    self.faults_taken.append(fault)
                    return fault
        return None

    def __enter__(self) -> Imitation:
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so clients can reuse connections
    server: Imitation

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  (quiet test output)
        pass

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_GET(self) -> None:
        self._serve(head=False)

    def _serve(self, head: bool) -> None:
        parsed = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(parsed.query, keep_blank_values=True))
        request = Request(urllib.parse.unquote(parsed.path), query, dict(self.headers.items()),
                          self.client_address, time.time())
        fault = self.server._take_fault(request.path)
        try:
            reply = self.server.route(request)
        except Exception as exc:  # an imitation bug shows up as a 500 with the reason, never a hang
            reply = Reply(500, f"imitation error: {type(exc).__name__}: {exc}".encode(), "text/plain")
        # Logged before the reply goes out, so a client that returns (or times out) always finds its request.
        served = Served(request, 0, fault.kind if fault else None)
        self.server.log.append(served)
        try:
            self._send(request, reply, fault, head, served)
        except (BrokenPipeError, ConnectionResetError):
            served.status = -1  # the client gave up (time-out): that is the point of a stall

    def _send(self, request: Request, reply: Reply, fault: Fault | None, head: bool, served: Served) -> None:
        kind = fault.kind if fault else None
        if kind == "stall":
            time.sleep(fault.seconds)
        if kind == "status":
            headers = {"Retry-After": str(int(fault.retry_after))} if fault.retry_after is not None else {}
            reply = Reply(fault.code, b"<html><body>error</body></html>", "text/html", headers)
        elif kind == "body":
            reply = Reply(200, fault.body, "text/html")
        elif kind == "corrupt" and reply.body:
            body = bytearray(reply.body)
            for i in range(len(body) // 3, len(body), max(1, len(body) // 50)):
                body[i] ^= 0xFF
            reply = Reply(reply.status, bytes(body), reply.content_type, reply.headers, reply.ranges)

        status, body, headers = reply.status, reply.body, dict(reply.headers)
        if reply.ranges and status == 200:
            headers["Accept-Ranges"] = "bytes"
            spec = request.headers.get("Range", "")
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", spec.strip())
            if m:
                start = int(m.group(1))
                end = int(m.group(2)) if m.group(2) else len(body) - 1
                if start >= len(body):
                    status, headers["Content-Range"], body = 416, f"bytes */{len(body)}", b""
                else:
                    end = min(end, len(body) - 1)
                    headers["Content-Range"] = f"bytes {start}-{end}/{len(body)}"
                    status, body = 206, body[start:end + 1]

        served.status = status
        self.send_response(status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key, value)
        if kind == "truncate":
            self.send_header("Connection", "close")
        self.end_headers()
        if head:
            return
        if kind in ("truncate", "stall_body"):
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            if kind == "stall_body":
                time.sleep(fault.seconds)
            self.close_connection = True
            return
        self.wfile.write(body)

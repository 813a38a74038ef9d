import os
import socket
import sys
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

ROOT = Path(__file__).resolve().parents[1]
# tests import shared helpers (test_catalog.make_catalog) and run CLIs from the repo root
sys.path.insert(0, str(Path(__file__).parent))
os.chdir(ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

LOOPBACK = (None, "", "127.0.0.1", "::1", "localhost")


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """No test reaches the network: resolving or connecting to any host but this machine fails loudly.

    (Subprocesses such as the Snakemake end-to-end runs are pointed at loopback imitations by their config.)
    """
    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def connect(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if self.family in (socket.AF_INET, socket.AF_INET6) and host not in LOOPBACK:
            raise OSError(f"test tried to reach {address!r}; tests must use the loopback imitations")
        return real_connect(self, address)

    def getaddrinfo(host, *args, **kw):
        if host not in LOOPBACK:
            raise OSError(f"test tried to resolve {host!r}; tests must use the loopback imitations")
        return real_getaddrinfo(host, *args, **kw)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)

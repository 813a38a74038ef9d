"""Rate limits across cluster nodes: a lock file shares one pace; separate (node-local) files pace separately.

Two limiters on different lock files stand for two nodes whose ``real.rate_limit.dir`` is node-local; two on
the same file, for nodes sharing it.  Slots are claimed without sleeping (``_claim`` returns when each
request may start), so the tests take no time.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gzmorph import config, fetch
from gzmorph.net import RateLimiter

ROOT = Path(__file__).resolve().parents[1]
N = 5  # requests per limiter


def _slots(a: RateLimiter, b: RateLimiter) -> tuple[list[float], list[float]]:
    sa, sb = [], []
    for _ in range(N):  # interleaved, as two nodes' jobs would be
        sa.append(a._claim())
        sb.append(b._claim())
    return sa, sb


def _span(slots: list[float]) -> float:
    return max(slots) - min(slots)


def test_separate_lock_files_each_allow_the_full_rate(tmp_path):
    a = RateLimiter(60, tmp_path / "node1" / "svc")  # 1 s apart
    b = RateLimiter(60, tmp_path / "node2" / "svc")
    sa, sb = _slots(a, b)
    # each node alone: N requests N - 1 seconds apart, and both start at once: the cluster sends 2 x the limit
    assert _span(sa) == pytest.approx(N - 1, abs=0.2)
    assert _span(sb) == pytest.approx(N - 1, abs=0.2)
    assert abs(sa[0] - sb[0]) < 0.2


def test_one_lock_file_shares_the_rate(tmp_path):
    a = RateLimiter(60, tmp_path / "shared" / "svc")
    b = RateLimiter(60, tmp_path / "shared" / "svc")
    sa, sb = _slots(a, b)
    slots = sorted(sa + sb)
    assert _span(slots) == pytest.approx(2 * N - 1, abs=0.2)  # 2N requests, one a second between them
    assert min(y - x for x, y in zip(slots, slots[1:], strict=False)) == pytest.approx(1.0, abs=0.05)


def _params(tmp_path, **rate_limit):
    params = config.load([ROOT / "params.yaml"])
    params["real"]["rate_limit"] = {"dir": str(tmp_path / "locks"), **rate_limit}
    return params


def test_nodes_setting_divides_each_service_limit(tmp_path):
    params = _params(tmp_path, nodes=4)
    rpm = params["real"]["services"]["skyserver"]["requests_per_minute"]
    limiter = fetch.rate_limiter(params, "skyserver")
    assert limiter.interval == pytest.approx(4 * 60.0 / rpm)
    assert limiter.state_file == tmp_path / "locks" / "skyserver"
    # four node-local limiters at limit/4 add up to the service's limit
    nodes = [RateLimiter(rpm / 4, tmp_path / f"node{i}" / "svc") for i in range(4)]
    assert sum(60.0 / n.interval for n in nodes) == pytest.approx(rpm)

    default = fetch.rate_limiter(_params(tmp_path), "zenodo")  # nodes defaults to 1
    assert default.interval == pytest.approx(60.0 / params["real"]["services"]["zenodo"]["requests_per_minute"])
    params["real"].pop("rate_limit")  # configurations from before the setting: the old directory and full rate
    assert fetch.rate_limiter(params, "zenodo").state_file == fetch.RATE_DIR / "zenodo"


def test_rate_limit_settings_are_validated(tmp_path):
    params = _params(tmp_path, nodes=0)
    with pytest.raises(config.ConfigError, match="nodes"):
        config.validate(params)

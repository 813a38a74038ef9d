"""Mixture-of-binomials posterior (eq. 10) against brute-force loops."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binom

from gzmorph import posterior
from gzmorph.posterior import (
    credible_interval,
    mixture_pmf,
    most_likely_k,
    posterior_mean,
    single_pass_pmf,
)


def _brute_force_pmf(rho: np.ndarray, n: np.ndarray) -> np.ndarray:
    out = np.zeros((rho.shape[0], int(n.max()) + 1))
    for i in range(rho.shape[0]):
        for t in range(rho.shape[1]):
            for k in range(int(n[i]) + 1):
                out[i, k] += binom.pmf(k, n[i], rho[i, t]) / rho.shape[1]
    return out


@pytest.fixture
def case() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(42)
    g, t = 25, 7
    rho = rng.uniform(0, 1, size=(g, t))
    rho[0] = 0.0  # edge values of rho
    rho[1] = 1.0
    rho[2, :3] = [0.0, 1.0, 0.5]
    n = rng.integers(0, 41, size=g)
    n[[3, 4]] = 0  # question never asked
    n[2] = 40
    return rho, n


def test_matches_brute_force(case):
    rho, n = case
    np.testing.assert_allclose(mixture_pmf(rho, n), _brute_force_pmf(rho, n), atol=1e-12)


def test_rows_sum_to_one_and_zero_beyond_n(case):
    rho, n = case
    pmf = mixture_pmf(rho, n, n_max=50)
    assert pmf.shape == (len(n), 51)
    np.testing.assert_allclose(pmf.sum(axis=1), 1.0, atol=1e-12)
    k = np.arange(51)
    assert np.all(pmf[k[None, :] > n[:, None]] == 0.0)
    assert np.all(pmf[n == 0, 0] == 1.0)


def test_hand_case():
    np.testing.assert_array_equal(mixture_pmf(np.array([[0.0, 1.0]]), np.array([2])), [[0.5, 0.0, 0.5]])


def test_single_pass_is_binomial(case):
    rho, n = case
    expected = binom.pmf(np.arange(n.max() + 1)[None, :], n[:, None], rho[:, :1])
    np.testing.assert_allclose(single_pass_pmf(rho[:, 0], n), expected, atol=1e-12)


def test_chunking_is_invisible(case, monkeypatch):
    rho, n = case
    full = mixture_pmf(rho, n)
    monkeypatch.setattr(posterior, "_CHUNK_ELEMENTS", 1)  # one galaxy per chunk
    np.testing.assert_array_equal(mixture_pmf(rho, n), full)


def test_summaries_match_brute_force(case):
    rho, n = case
    pmf = _brute_force_pmf(rho, n)
    k = np.arange(pmf.shape[1])
    np.testing.assert_allclose(posterior_mean(rho, n), pmf @ k, atol=1e-9)
    np.testing.assert_array_equal(most_likely_k(rho, n), pmf.argmax(axis=1))
    lo, hi = credible_interval(rho, n, mass=0.8)
    cdf = np.cumsum(pmf, axis=1)
    for i in range(len(n)):
        lo_i = next(j for j in k if cdf[i, j] >= 0.1 - 1e-12)
        hi_i = next(j for j in k if cdf[i, j] >= 0.9 - 1e-12)
        assert (lo[i], hi[i]) == (lo_i, hi_i)
        assert pmf[i, lo[i] : hi[i] + 1].sum() >= 0.8 - 1e-12
        assert 0 <= lo[i] <= hi[i] <= n[i]


def test_mixture_is_broader_than_single_pass():
    # eq. 10: spread-out passes give a wider posterior than any one of them
    rho = np.array([[0.3, 0.5, 0.7]])
    n = np.array([40])
    lo_m, hi_m = credible_interval(rho, n)
    lo_s, hi_s = credible_interval(rho[:, 1:2], n)
    assert hi_m - lo_m > hi_s - lo_s


def test_rejects_bad_input():
    with pytest.raises(ValueError):
        mixture_pmf(np.array([[1.2]]), np.array([3]))
    with pytest.raises(ValueError):
        mixture_pmf(np.array([0.5]), np.array([3]))
    with pytest.raises(ValueError):
        mixture_pmf(np.array([[0.5]]), np.array([-1]))
    with pytest.raises(ValueError):
        mixture_pmf(np.array([[0.5]]), np.array([3]), n_max=2)

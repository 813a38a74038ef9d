"""Posteriors over vote counts k from MC-dropout predictions (Walmsley et al. 2020, §2.2-2.3).

A single network predicts the typical vote fraction rho, giving the binomial
posterior p(k | rho, N) = Bin(k | rho, N) for N volunteers (eq. 3).  MC dropout
(with test-time augmentation) gives T predictions rho_t per galaxy; the
marginalised posterior is their equal-weight mixture (eq. 10):

    p(k | x, D) ~= (1/T) sum_t Bin(k | rho_t, N)

Everything here is numpy, vectorised over galaxies (rows) and passes
(columns of ``rho``), chunked over galaxies to bound memory; there is no
per-galaxy Python loop.  Output pmfs are [G, n_max + 1] with zeros for k > N_i,
so galaxies with different N share one array.
"""

from __future__ import annotations

import numpy as np
from scipy.special import gammaln

# Elements per [chunk, T, K] temporary (float64): 2**21 -> 16 MiB each, a handful alive.
_CHUNK_ELEMENTS = 2**21


def validate_passes(rho: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Check rho [galaxies, passes] in [0, 1] and n [galaxies] non-negative integers; return float64, int64."""
    rho = np.asarray(rho, dtype=np.float64)
    n = np.asarray(n)
    if rho.ndim != 2:
        raise ValueError(f"rho must be [galaxies, passes], got shape {rho.shape}")
    if n.shape != (rho.shape[0],):
        raise ValueError(f"n must be [galaxies] = [{rho.shape[0]}], got shape {n.shape}")
    if not np.all(np.isfinite(rho)) or rho.min(initial=0.0) < 0 or rho.max(initial=0.0) > 1:
        raise ValueError("rho must be finite and in [0, 1]")
    if np.any(n < 0) or np.any(n != np.round(n)):
        raise ValueError("n must be non-negative integers")
    return rho, n.astype(np.int64)


def _mixture_pmf_chunk(rho: np.ndarray, n: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Mixture pmf for one chunk: rho [g, T], n [g], k [K] -> [g, K]."""
    n_ = n[:, None].astype(np.float64)  # [g, 1]
    kk = k[None, :].astype(np.float64)  # [1, K]
    valid = kk <= n_  # [g, K]
    n_minus_k = np.where(valid, n_ - kk, 0.0)
    log_comb = np.where(
        valid, gammaln(n_ + 1.0) - gammaln(kk + 1.0) - gammaln(n_minus_k + 1.0), -np.inf
    )  # [g, K]
    with np.errstate(divide="ignore"):  # log(0) = -inf is intended for rho in {0, 1}
        log_rho = np.log(rho)[:, :, None]  # [g, T, 1]
        log_1m_rho = np.log1p(-rho)[:, :, None]
    with np.errstate(invalid="ignore"):
        # 0 * log(0) must be 0 (e.g. rho = 0, k = 0 has probability 1), not NaN.
        a = np.where(kk[:, None, :] == 0, 0.0, kk[:, None, :] * log_rho)
        b = np.where(n_minus_k[:, None, :] == 0, 0.0, n_minus_k[:, None, :] * log_1m_rho)
    log_pmf = log_comb[:, None, :] + a + b  # [g, T, K]
    return np.exp(log_pmf).mean(axis=1)


def mixture_pmf(rho: np.ndarray, n: np.ndarray, n_max: int | None = None) -> np.ndarray:
    """Eq. 10: p(k | N_i) = mean_t Bin(k | rho[i, t], N_i) for k = 0..n_max.

    rho: [G, T] predicted typical vote fractions (T forward passes; T = 1 is a
    single network), n: [G] integer volunteers asked.  Returns [G, n_max + 1]
    float64 with zeros for k > N_i; n_max defaults to max(n).  Each row sums to 1.
    """
    rho, n = validate_passes(rho, n)
    n_max = int(n.max(initial=0)) if n_max is None else int(n_max)
    if n.size and n.max() > n_max:
        raise ValueError(f"n_max={n_max} is smaller than max(n)={n.max()}")
    k = np.arange(n_max + 1)
    out = np.empty((rho.shape[0], n_max + 1))
    step = max(1, _CHUNK_ELEMENTS // max(1, rho.shape[1] * (n_max + 1)))
    for start in range(0, rho.shape[0], step):
        sl = slice(start, start + step)
        out[sl] = _mixture_pmf_chunk(rho[sl], n[sl], k)
    return out


def single_pass_pmf(rho_point: np.ndarray, n: np.ndarray, n_max: int | None = None) -> np.ndarray:
    """Eq. 3: Bin(k | rho_i, N_i) for one prediction per galaxy; rho_point [G] -> [G, n_max + 1]."""
    return mixture_pmf(np.asarray(rho_point, dtype=np.float64)[:, None], n, n_max)


def posterior_mean(rho: np.ndarray, n: np.ndarray) -> np.ndarray:
    """E[k] under the mixture: N_i * mean_t rho[i, t] (exact; no pmf needed)."""
    rho, n = validate_passes(rho, n)
    return n * rho.mean(axis=1)


def most_likely_k(rho: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Mode of the mixture pmf per galaxy (smallest k on ties); [G] int."""
    return np.argmax(mixture_pmf(rho, n), axis=1)


def credible_interval(
    rho: np.ndarray, n: np.ndarray, mass: float = 0.9
) -> tuple[np.ndarray, np.ndarray]:
    """Equal-tailed credible interval [lo, hi] for k, each [G] int, inclusive.

    lo = smallest k with CDF(k) >= (1 - mass)/2; hi = smallest k with
    CDF(k) >= 1 - (1 - mass)/2.  Equal-tailed (not highest-density) because an
    MC-dropout mixture can be multimodal, where the HPD set need not be one
    interval.  Discreteness makes it conservative: P(lo <= k <= hi) >= mass.
    """
    if not 0.0 < mass < 1.0:
        raise ValueError(f"mass must be in (0, 1), got {mass}")
    rho, n = validate_passes(rho, n)
    cdf = np.cumsum(mixture_pmf(rho, n), axis=1)
    tail = (1.0 - mass) / 2.0
    tol = 1e-12  # cumsum round-off must not push the upper quantile past N
    lo = np.sum(cdf < tail - tol, axis=1)
    hi = np.sum(cdf < 1.0 - tail - tol, axis=1)
    return np.minimum(lo, n), np.minimum(hi, n)

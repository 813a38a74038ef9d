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

A whole-tree model gives Dirichlet concentrations per question instead (the Dirichlet section below:
Dirichlet-multinomial pmf, the exact beta-binomial marginal of one answer, expected fractions and the
expected proportion of volunteers asked each question).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy.special import gammaln

if TYPE_CHECKING:
    from gzmorph.tree import DecisionTree

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
    return equal_tailed_interval(mixture_pmf(rho, n), n, mass)


def equal_tailed_interval(pmf: np.ndarray, n: np.ndarray, mass: float) -> tuple[np.ndarray, np.ndarray]:
    """[lo, hi] (each [G] int, inclusive) of posteriors ``pmf`` [G, K] over k: see :func:`credible_interval`."""
    if not 0.0 < mass < 1.0:
        raise ValueError(f"mass must be in (0, 1), got {mass}")
    cdf = np.cumsum(pmf, axis=1)
    tail = (1.0 - mass) / 2.0
    tol = 1e-12  # cumsum round-off must not push the upper quantile past N
    lo = np.sum(cdf < tail - tol, axis=1)
    hi = np.sum(cdf < 1.0 - tail - tol, axis=1)
    return np.minimum(lo, n), np.minimum(hi, n)


# ---------------------------------------------------------------------------------------------- Dirichlet
# A whole-tree model (Walmsley et al. 2021) predicts, per question, Dirichlet concentrations alpha over
# its answers; the votes k (a count vector summing to N) then follow the Dirichlet-multinomial
#
#     DM(k | alpha, N) = N! Gamma(A) / Gamma(N + A) * prod_a Gamma(k_a + alpha_a) / (k_a! Gamma(alpha_a)),
#
# with A = sum_a alpha_a.  MC dropout gives T concentration vectors per galaxy and the posterior is again
# their equal-weight mixture.  The count of ONE answer a is exactly beta-binomial under one DM (aggregation
# property of the Dirichlet): k_a ~ BetaBin(N, alpha_a, A - alpha_a), so the per-answer calibration and
# intervals use the T-mixture of beta-binomials, with no sum over the other answers.


def validate_concentrations(alpha: np.ndarray) -> np.ndarray:
    """Check alpha [galaxies, passes, answers] finite and > 0; return float64."""
    alpha = np.asarray(alpha, dtype=np.float64)
    if alpha.ndim != 3 or alpha.shape[1] == 0 or alpha.shape[2] == 0:
        raise ValueError(f"alpha must be [galaxies, passes >= 1, answers >= 1], got shape {alpha.shape}")
    if not np.all(np.isfinite(alpha)) or alpha.min(initial=1.0) <= 0:
        raise ValueError("Dirichlet concentrations alpha must be finite and > 0")
    return alpha


def dirichlet_multinomial_logpmf(counts: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """log DM(k | alpha, N = sum_a k_a), broadcasting counts [..., A] against alpha [..., A] -> [...].

    Counts must be non-negative integers (unchecked: this is the inner loop of tree BALD).
    """
    k = np.asarray(counts, dtype=np.float64)
    alpha = np.asarray(alpha, dtype=np.float64)
    n = k.sum(axis=-1)
    a0 = alpha.sum(axis=-1)
    return (gammaln(n + 1.0) + gammaln(a0) - gammaln(n + a0)
            + np.sum(gammaln(k + alpha) - gammaln(alpha) - gammaln(k + 1.0), axis=-1))


def _beta_binomial_mixture_chunk(a: np.ndarray, b: np.ndarray, n: np.ndarray, k: np.ndarray) -> np.ndarray:
    """(1/T) sum_t BetaBin(k | N_i, a[i, t], b[i, t]) for one chunk: a, b [g, T], n [g], k [K] -> [g, K]."""
    n_ = n[:, None].astype(np.float64)
    kk = k[None, :].astype(np.float64)
    valid = kk <= n_
    n_minus_k = np.where(valid, n_ - kk, 0.0)
    log_comb = gammaln(n_ + 1.0) - gammaln(kk + 1.0) - gammaln(n_minus_k + 1.0)  # [g, K]
    a3, b3 = a[:, :, None], b[:, :, None]
    # log B(k + a, N - k + b) - log B(a, b); B(x, y) = Gamma(x) Gamma(y) / Gamma(x + y)
    k3, rest3 = kk[:, None, :], n_minus_k[:, None, :]
    log_beta_ratio = (gammaln(k3 + a3) + gammaln(rest3 + b3) - gammaln(n_[:, None] + a3 + b3)
                      - gammaln(a3) - gammaln(b3) + gammaln(a3 + b3))  # [g, T, K]
    pmf = np.exp(log_comb[:, None, :] + log_beta_ratio).mean(axis=1)
    return np.where(valid, pmf, 0.0)


def answer_mixture_pmf(alpha: np.ndarray, n: np.ndarray, answer: int, n_max: int | None = None) -> np.ndarray:
    """Posterior over k_a, the votes for answer index ``answer``: (1/T) sum_t BetaBin(k | N, alpha_a, A - alpha_a).

    alpha: [G, T, answers] one question's concentrations (T passes; T = 1 is one pass), n: [G] volunteers
    asked that question.  Exact (the marginal of each pass's DM is beta-binomial).  Returns [G, n_max + 1]
    float64, zeros for k > N_i, rows summing to 1; chunked over galaxies to bound memory.
    """
    alpha = validate_concentrations(alpha)
    n = np.asarray(n)
    if n.shape != alpha.shape[:1] or np.any(n < 0) or np.any(n != np.round(n)):
        raise ValueError(f"n must be [galaxies] = [{alpha.shape[0]}] non-negative integers, got shape {n.shape}")
    n = n.astype(np.int64)
    if not -alpha.shape[2] <= answer < alpha.shape[2]:
        raise ValueError(f"answer index {answer} out of range for {alpha.shape[2]} answers")
    n_max = int(n.max(initial=0)) if n_max is None else int(n_max)
    if n.size and n.max() > n_max:
        raise ValueError(f"n_max={n_max} is smaller than max(n)={n.max()}")
    k = np.arange(n_max + 1)
    out = np.empty((alpha.shape[0], n_max + 1))
    step = max(1, _CHUNK_ELEMENTS // max(1, alpha.shape[1] * (n_max + 1)))
    for start in range(0, alpha.shape[0], step):
        sl = slice(start, start + step)
        a = alpha[sl, :, answer]
        out[sl] = _beta_binomial_mixture_chunk(a, alpha[sl].sum(axis=2) - a, n[sl], k)
    return out


def expected_fractions(alpha: np.ndarray) -> np.ndarray:
    """Expected vote fraction of each answer, mean_t alpha_a / A (the Dirichlet mean): [G, T, A] -> [G, A]."""
    alpha = validate_concentrations(alpha)
    return (alpha / alpha.sum(axis=2, keepdims=True)).mean(axis=1)


def tree_expected_fractions(alpha: np.ndarray, tree: DecisionTree) -> np.ndarray:
    """:func:`expected_fractions` of every question: alpha [G, T, answers of the tree] -> [G, answers]."""
    alpha = validate_concentrations(alpha)
    if alpha.shape[2] != tree.n_answers():
        raise ValueError(f"alpha has {alpha.shape[2]} answers, tree {tree.name!r} has {tree.n_answers()}")
    out = np.empty((alpha.shape[0], alpha.shape[2]))
    for sl in tree.answer_slices.values():
        out[:, sl] = expected_fractions(alpha[:, :, sl])
    return out


def fraction_std(alpha: np.ndarray) -> np.ndarray:
    """Posterior std of each answer's vote fraction rho_a under the T-mixture of Dirichlets: [G, T, A] -> [G, A].

    Exact: E[rho_a^2] = mean_t alpha_a (alpha_a + 1) / (A (A + 1)); it holds both the Dirichlet's own
    spread (volunteers disagree) and the spread between passes (the network is unsure).
    """
    alpha = validate_concentrations(alpha)
    a0 = alpha.sum(axis=2, keepdims=True)
    second = (alpha * (alpha + 1.0) / (a0 * (a0 + 1.0))).mean(axis=1)
    mean = (alpha / a0).mean(axis=1)
    return np.sqrt(np.maximum(second - mean**2, 0.0))


def answer_credible_interval(alpha: np.ndarray, n: np.ndarray, answer: int, mass: float = 0.9
                             ) -> tuple[np.ndarray, np.ndarray]:
    """Equal-tailed credible interval [lo, hi] for k_a (inclusive, each [G] int) under :func:`answer_mixture_pmf`."""
    if not 0.0 < mass < 1.0:
        raise ValueError(f"mass must be in (0, 1), got {mass}")
    n = np.asarray(n, dtype=np.int64)
    return equal_tailed_interval(answer_mixture_pmf(alpha, n, answer), n, mass)


def proportion_asked(fractions: np.ndarray, tree: DecisionTree) -> np.ndarray:
    """Expected proportion of volunteers asked each question: [G, answers of the tree] -> [G, questions].

    ``fractions`` are the expected vote fractions on the tree's flat answer axis (``tree.answer_columns``).
    A first question is asked of everyone (1); one asked after (q, a) gets proportion(q) * fraction(q, a),
    and one asked after ANY of several pairs the sum over them (the paths are disjoint: a volunteer gives one
    answer per question).  Questions come in topological order, so one pass suffices.
    """
    fractions = np.asarray(fractions, dtype=np.float64)
    if fractions.ndim != 2 or fractions.shape[1] != tree.n_answers():
        raise ValueError(f"fractions must be [galaxies, {tree.n_answers()}] for tree {tree.name!r}, "
                         f"got shape {fractions.shape}")
    index = {q.name: i for i, q in enumerate(tree.questions)}
    column = {c: j for j, c in enumerate(tree.answer_columns)}
    out = np.ones((fractions.shape[0], len(tree.questions)))
    for i, q in enumerate(tree.questions):
        if q.asked_after:
            out[:, i] = sum(out[:, index[dq]] * fractions[:, column[f"{dq}_{da}"]] for dq, da in q.asked_after)
    return out

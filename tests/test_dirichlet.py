"""Dirichlet-multinomial posteriors of a whole-tree model against scipy and hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import betabinom, dirichlet_multinomial

from gzmorph import posterior as post
from gzmorph.tree import DECALS_DR5, GZ2


def _alpha(g: int, t: int, a: int, seed: int = 0) -> np.ndarray:
    """Concentrations in (1, 101), the model head's range."""
    return 1.0 + 100.0 / (1.0 + np.exp(-np.random.default_rng(seed).normal(0, 2, size=(g, t, a))))


def test_dm_logpmf_matches_scipy():
    rng = np.random.default_rng(1)
    alpha = _alpha(20, 1, 4)[:, 0]
    counts = rng.multinomial(37, [0.1, 0.2, 0.3, 0.4], size=20)
    counts[0] = [0, 0, 0, 37]
    want = np.array([dirichlet_multinomial.logpmf(c, a, c.sum()) for c, a in zip(counts, alpha, strict=True)])
    np.testing.assert_allclose(post.dirichlet_multinomial_logpmf(counts, alpha), want, rtol=1e-12)


def test_dm_hand_case():
    # alpha = (1, 1): DM is uniform over k_1 = 0..N, so p = 1 / (N + 1); N = 0 has probability 1.
    assert math.isclose(np.exp(post.dirichlet_multinomial_logpmf([2, 1], [1.0, 1.0])), 1 / 4)
    assert post.dirichlet_multinomial_logpmf([0, 0, 0], [2.0, 3.0, 4.0]) == 0.0
    # alpha = (1, 2), N = 1: p(k = (1, 0)) = alpha_1 / A = 1/3
    assert math.isclose(np.exp(post.dirichlet_multinomial_logpmf([1, 0], [1.0, 2.0])), 1 / 3)


def test_answer_marginal_is_the_mixture_of_beta_binomials_and_of_dm_sums():
    alpha = _alpha(6, 5, 3, seed=2)
    n = np.array([0, 1, 7, 12, 30, 40])
    for answer in range(3):
        pmf = post.answer_mixture_pmf(alpha, n, answer, n_max=45)
        assert pmf.shape == (6, 46)
        np.testing.assert_allclose(pmf.sum(axis=1), 1.0, atol=1e-12)
        for i in range(6):
            a = alpha[i, :, answer]
            b = alpha[i].sum(axis=1) - a
            want = np.mean([betabinom.pmf(np.arange(46), n[i], a[t], b[t]) for t in range(5)], axis=0)
            np.testing.assert_allclose(pmf[i], want, atol=1e-13)
    # brute force for one galaxy: sum the DM over the other answers' counts
    i, n_i = 2, 7
    brute = np.zeros(n_i + 1)
    for t in range(5):
        for k0 in range(n_i + 1):
            for k1 in range(n_i + 1 - k0):
                k = [k0, k1, n_i - k0 - k1]
                brute[k0] += dirichlet_multinomial.pmf(k, alpha[i, t], n_i) / 5
    np.testing.assert_allclose(post.answer_mixture_pmf(alpha, n, 0)[i, : n_i + 1], brute, atol=1e-13)


def test_answer_marginal_chunking_is_invisible(monkeypatch):
    alpha, n = _alpha(50, 4, 3, seed=3), np.random.default_rng(3).integers(0, 40, 50)
    whole = post.answer_mixture_pmf(alpha, n, 1)
    monkeypatch.setattr(post, "_CHUNK_ELEMENTS", 7)
    np.testing.assert_array_equal(post.answer_mixture_pmf(alpha, n, 1), whole)


def test_expected_fraction_std_and_interval():
    alpha = np.array([[[2.0, 6.0], [6.0, 2.0]]])  # two passes that disagree
    np.testing.assert_allclose(post.expected_fractions(alpha), [[0.5, 0.5]])
    # E[rho^2] = mean(2*3/72, 6*7/72) = 24/72 -> var = 1/3 - 1/4 = 1/12
    np.testing.assert_allclose(post.fraction_std(alpha), [[math.sqrt(1 / 12)] * 2])
    lo, hi = post.answer_credible_interval(alpha, np.array([10]), 0, mass=0.9)
    cdf = np.cumsum(post.answer_mixture_pmf(alpha, np.array([10]), 0)[0])
    assert cdf[lo[0]] >= 0.05 and (lo[0] == 0 or cdf[lo[0] - 1] < 0.05)
    assert cdf[hi[0]] >= 0.95 and cdf[hi[0] - 1] < 0.95


def test_invalid_concentrations():
    with pytest.raises(ValueError, match="> 0"):
        post.expected_fractions(np.zeros((1, 1, 2)))
    with pytest.raises(ValueError, match="shape"):
        post.expected_fractions(np.ones((3, 2)))
    with pytest.raises(ValueError, match="non-negative"):
        post.answer_mixture_pmf(np.ones((1, 1, 2)), np.array([-1]), 0)


def test_proportion_asked_by_hand():
    f = np.zeros((1, DECALS_DR5.n_answers()))
    col = {c: j for j, c in enumerate(DECALS_DR5.answer_columns)}
    f[0, col["smooth-or-featured_featured-or-disk"]] = 0.6
    f[0, col["disk-edge-on_no"]] = 0.5
    f[0, col["has-spiral-arms_yes"]] = 0.8
    p = dict(zip(DECALS_DR5.question_names, post.proportion_asked(f, DECALS_DR5)[0], strict=True))
    assert p["smooth-or-featured"] == 1.0 and p["merging"] == 1.0
    assert math.isclose(p["disk-edge-on"], 0.6) and math.isclose(p["bar"], 0.3)
    assert math.isclose(p["spiral-winding"], 0.24) and p["how-rounded"] == 0.0


def test_proportion_asked_sums_over_any_of_several_paths():
    f = np.zeros((2, GZ2.n_answers()))
    col = {c: j for j, c in enumerate(GZ2.answer_columns)}
    f[:, col["smooth-or-featured_smooth"]] = [0.3, 0.0]
    f[:, col["smooth-or-featured_featured-or-disk"]] = [0.5, 0.0]  # second galaxy: all artifact
    f[:, col["smooth-or-featured_artifact"]] = [0.2, 1.0]
    f[:, col["something-odd_yes"]] = [0.5, 0.5]
    p = post.proportion_asked(f, GZ2)
    odd, feature = GZ2.question_names.index("something-odd"), GZ2.question_names.index("odd-feature")
    np.testing.assert_allclose(p[:, odd], [0.8, 0.0])
    np.testing.assert_allclose(p[:, feature], [0.4, 0.0])

"""BALD mutual information (eq. 24), expected N and top-k acquisition."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binom

from gzmorph import acquisition
from gzmorph.acquisition import acquire, expected_votes, mutual_information
from gzmorph.posterior import mixture_pmf


def _brute_force_mi(rho: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Eq. 24 written out: double loop over passes t and vote counts k for each galaxy."""
    out = np.zeros(rho.shape[0])
    for i in range(rho.shape[0]):
        n_i = int(n[i])
        n_passes = rho.shape[1]
        mean_pmf = np.zeros(n_i + 1)
        mean_pass_entropy = 0.0
        for t in range(n_passes):
            for k in range(n_i + 1):
                p = binom.pmf(k, n_i, rho[i, t])
                mean_pmf[k] += p / n_passes
                if p > 0:
                    mean_pass_entropy -= p * math.log(p) / n_passes
        entropy_of_mean = -sum(p * math.log(p) for p in mean_pmf if p > 0)
        out[i] = entropy_of_mean - mean_pass_entropy
    return out


def _rho_with_edges(rng: np.random.Generator, g: int, t: int) -> np.ndarray:
    rho = rng.uniform(0, 1, size=(g, t))
    rho[0] = 0.0
    rho[1] = 1.0
    rho[2, :4] = [0.0, 1.0, 1e-300, 1 - 1e-16]
    rho[3] = 1 - 1e-16
    rho[4, ::2] = 0.0
    rho[5, ::2] = 1.0
    return rho


@pytest.mark.parametrize("n", [1, 5, 40])
def test_matches_brute_force_scalar_n(n: int) -> None:
    rng = np.random.default_rng(n)
    rho = _rho_with_edges(rng, 20, 6)
    expected = _brute_force_mi(rho, np.full(20, n))
    np.testing.assert_allclose(mutual_information(rho, n), expected, rtol=0, atol=1e-10)


def test_matches_brute_force_per_galaxy_n_including_log_space_path() -> None:
    rng = np.random.default_rng(7)
    rho = _rho_with_edges(rng, 16, 5)
    # 0 (never asked), small, typical and above _MAX_N_FACTORISED (log-space fallback via posterior.mixture_pmf)
    n = np.array([0, 1, 40, 120, 3, 40, 0, 120, 17, 40, 2, 120, 60, 40, 9, 101])
    assert n.max() > acquisition._MAX_N_FACTORISED
    np.testing.assert_allclose(mutual_information(rho, n), _brute_force_mi(rho, n), rtol=0, atol=1e-10)


def test_factorised_mixture_pmf_matches_posterior() -> None:
    rng = np.random.default_rng(3)
    rho = _rho_with_edges(rng, 200, 30)
    for n in (1, 2, 40, acquisition._MAX_N_FACTORISED):
        pbar = acquisition._mixture_pmf_factorised(
            rho, n, acquisition.log_binomial_coefficients(n), acquisition._clipped_logs(rho)
        )
        np.testing.assert_allclose(pbar, mixture_pmf(rho, np.full(200, n)), rtol=0, atol=1e-13)


def test_mutual_information_non_negative() -> None:
    rng = np.random.default_rng(0)
    rho = rng.uniform(0, 1, size=(20_000, 30))
    rho[::7] = rng.uniform(0.49, 0.51, size=(rho[::7].shape[0], 30))  # nearly agreeing passes
    assert mutual_information(rho, 40).min() >= -1e-12
    assert mutual_information(rho, rng.integers(0, 130, size=20_000)).min() >= -1e-12


@pytest.mark.parametrize("n", [1, 7, 40, 150])
def test_zero_when_all_passes_agree(n: int) -> None:
    rng = np.random.default_rng(1)
    values = np.concatenate([[0.0, 1.0, 1e-300, 1e-12, 0.5, 1 - 1e-12, 1 - 1e-16], rng.uniform(0, 1, 50)])
    rho = np.repeat(values[:, None], 30, axis=1)
    np.testing.assert_allclose(mutual_information(rho, n), 0.0, rtol=0, atol=1e-12)
    edges = mutual_information(rho[:2], n)
    assert np.all(edges == 0.0)  # delta pmfs: exactly 0, no NaN


def test_hand_case_one_volunteer_two_opposite_passes() -> None:
    # mean pmf [0.5, 0.5] has entropy ln 2; each pass is a delta with entropy 0
    mi = mutual_information(np.array([[0.0, 1.0]]), 1)
    assert mi[0] == pytest.approx(math.log(2), abs=1e-15)


def test_disagreeing_passes_score_higher() -> None:
    rho = np.array([[0.5, 0.5, 0.5, 0.5], [0.4, 0.6, 0.4, 0.6], [0.1, 0.9, 0.1, 0.9], [0.0, 1.0, 0.0, 1.0]])
    mi = mutual_information(rho, 40)
    assert mi[0] == pytest.approx(0.0, abs=1e-12)
    assert np.all(np.diff(mi) > 0)


def test_chunked_equals_unchunked() -> None:
    rng = np.random.default_rng(2)
    rho = _rho_with_edges(rng, 1000, 30)
    n = rng.integers(0, 50, size=1000)
    for n_arg in (40, n):
        whole = mutual_information(rho, n_arg, chunk_size=10**6)
        for chunk_size in (1, 7, 333, None):
            np.testing.assert_array_equal(mutual_information(rho, n_arg, chunk_size=chunk_size), whole)


def test_per_galaxy_n_matches_scalar_calls_and_n_zero_gives_zero() -> None:
    rng = np.random.default_rng(4)
    rho = rng.uniform(0, 1, size=(300, 10))
    n = rng.choice([0, 12, 40], size=300)
    mi = mutual_information(rho, n)
    assert np.all(mi[n == 0] == 0.0)
    for value in (12, 40):
        np.testing.assert_allclose(mi[n == value], mutual_information(rho[n == value], value), rtol=0, atol=1e-15)
    assert np.all(mutual_information(rho, 0) == 0.0)


def test_invalid_inputs() -> None:
    rho = np.full((3, 2), 0.5)
    with pytest.raises(ValueError, match="rho"):
        mutual_information(np.array([[1.5, 0.5]]), 4)
    with pytest.raises(ValueError, match="rho"):
        mutual_information(np.array([0.5, 0.5]), 4)
    with pytest.raises(ValueError, match="n"):
        mutual_information(rho, -1)
    with pytest.raises(ValueError, match="n"):
        mutual_information(rho, np.array([1, 2]))
    with pytest.raises(ValueError, match="n must be non-negative integers"):
        mutual_information(rho, np.array([1, 2.5, 3]))
    with pytest.raises(ValueError, match="rho"):
        mutual_information(np.empty((3, 0)), 4)
    with pytest.raises(ValueError, match="chunk_size"):
        mutual_information(rho, 4, chunk_size=0)


def test_empty_input() -> None:
    assert mutual_information(np.empty((0, 5)), 40).shape == (0,)


def test_expected_votes() -> None:
    total = np.array([40, 42, 3, np.nan, 45])
    assert expected_votes(total, min_total_votes=10) == 42  # mean(40, 42, 45) = 42.33
    assert expected_votes(total) == 32  # mean(40, 42, 3, 45) = 32.5 -> half to even, as round()
    assert isinstance(expected_votes(total), int)
    with pytest.raises(ValueError, match="no galaxies"):
        expected_votes(total, min_total_votes=100)


def test_acquire_tie_break_and_exclusion() -> None:
    scores = np.array([1.0, 3.0, 3.0, 2.0, 3.0, 0.5])
    np.testing.assert_array_equal(acquire(scores, 2), [1, 2])
    np.testing.assert_array_equal(acquire(scores, 4), [1, 2, 4, 3])
    np.testing.assert_array_equal(acquire(scores, 2, exclude=np.array([1])), [2, 4])
    mask = np.zeros(6, dtype=bool)
    mask[[2, 4]] = True
    np.testing.assert_array_equal(acquire(scores, 3, exclude=mask), [1, 3, 0])
    everything_but_5 = acquire(scores, 10, exclude=np.array([5]))
    np.testing.assert_array_equal(everything_but_5, [1, 2, 4, 3, 0])
    assert acquire(scores, 0).size == 0
    with pytest.raises(ValueError, match="k"):
        acquire(scores, -1)


def test_acquire_never_returns_excluded_random() -> None:
    rng = np.random.default_rng(5)
    scores = rng.integers(0, 5, size=1000).astype(float)  # many ties
    exclude = rng.choice(1000, size=300, replace=False)
    picked = acquire(scores, 200, exclude=exclude)
    assert picked.size == 200
    assert not np.intersect1d(picked, exclude).size
    # best first, then ascending index among equal scores
    keys = list(zip(-scores[picked], picked, strict=True))
    assert keys == sorted(keys)

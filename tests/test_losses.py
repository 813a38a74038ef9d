"""Binomial loss (eq. 6) against scipy and hand-computed values."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy.special import gammaln
from scipy.stats import binom

from gzmorph.losses import (
    BinomialLoss,
    binomial_nll,
    binomial_nll_from_logits,
    lgamma,
    log_binomial_coefficient,
    rho_from_logits,
)


def _logits_for(rho: np.ndarray) -> np.ndarray:
    """Two logits whose softmax[..., 0] is rho: (logit(rho), 0)."""
    rho = np.asarray(rho, dtype=np.float64)
    return np.stack([np.log(rho) - np.log1p(-rho), np.zeros_like(rho)], axis=-1).astype("float32")


def _np(x) -> np.ndarray:
    return keras.ops.convert_to_numpy(x)


@pytest.fixture
def votes() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    n = rng.integers(1, 45, size=200)
    k = rng.integers(0, n + 1)
    rho = rng.uniform(0.02, 0.98, size=200)
    return k.astype("float32"), n.astype("float32"), rho


def test_hand_case_eq6():
    # k=3, N=4, rho=0.5: -(3 ln .5 + 1 ln .5) = 4 ln 2
    nll = binomial_nll_from_logits(np.array([3.0]), np.array([4.0]), np.zeros((1, 2), "float32"))
    assert _np(nll)[0] == pytest.approx(4 * math.log(2), rel=1e-6)
    with_const = binomial_nll_from_logits(np.array([3.0]), np.array([4.0]), np.zeros((1, 2), "float32"), True)
    assert _np(with_const)[0] == pytest.approx(4 * math.log(2) - math.log(4), rel=1e-6)


def test_matches_scipy_exactly_with_constant(votes):
    k, n, rho = votes
    nll = _np(binomial_nll_from_logits(k, n, _logits_for(rho), include_constant=True))
    np.testing.assert_allclose(nll, -binom.logpmf(k, n, rho), rtol=1e-4, atol=1e-4)


def test_eq6_differences_match_scipy(votes):
    # Without the constant, differences between two rho equal differences of log-likelihoods.
    k, n, rho = votes
    rho2 = np.clip(rho[::-1] * 0.9 + 0.05, 0.01, 0.99)
    d_ours = _np(binomial_nll_from_logits(k, n, _logits_for(rho))) - _np(
        binomial_nll_from_logits(k, n, _logits_for(rho2))
    )
    d_scipy = -binom.logpmf(k, n, rho) + binom.logpmf(k, n, rho2)
    np.testing.assert_allclose(d_ours, d_scipy, rtol=1e-4, atol=1e-4)


def test_rho_form_matches_logit_form(votes):
    k, n, rho = votes
    np.testing.assert_allclose(
        _np(binomial_nll(k, n, rho.astype("float32"))),
        _np(binomial_nll_from_logits(k, n, _logits_for(rho))),
        rtol=1e-4,
    )
    np.testing.assert_allclose(_np(rho_from_logits(_logits_for(rho))), rho, rtol=1e-5)


def test_zero_votes_contribute_exactly_zero():
    logits = np.array([[3.0, -2.0], [50.0, -50.0], [-50.0, 50.0]], "float32")
    zeros = np.zeros(3, "float32")
    for const in (False, True):
        assert np.all(_np(binomial_nll_from_logits(zeros, zeros, logits, const)) == 0.0)
        rho = np.array([0.3, 0.0, 1.0])
        assert np.all(_np(binomial_nll(zeros, zeros, rho, include_constant=const)) == 0.0)


def test_extreme_logits_finite_value_and_gradient():
    logits = tf.constant([[50.0, -50.0], [-50.0, 50.0], [50.0, -50.0], [0.0, 0.0]])
    k = tf.constant([0.0, 40.0, 40.0, 2.0])
    n = tf.constant([40.0, 40.0, 40.0, 4.0])
    with tf.GradientTape() as tape:
        tape.watch(logits)
        nll = binomial_nll_from_logits(k, n, logits, include_constant=True)
    grad = tape.gradient(nll, logits).numpy()
    assert np.all(np.isfinite(nll.numpy())) and np.all(np.isfinite(grad))
    # rho ~ 1 but k = 0 of 40: huge (finite) penalty, ~40 * 100 nats
    assert nll.numpy()[0] == pytest.approx(4000.0, rel=1e-3)
    assert nll.numpy()[2] == pytest.approx(0.0, abs=1e-3)
    # d nll / d logit_0 = N rho - k
    np.testing.assert_allclose(grad[:, 0], [40.0, -40.0, 0.0, 0.0], atol=1e-3)


def test_lgamma_and_log_comb_match_scipy():
    x = np.arange(1, 1001, dtype="float32")
    np.testing.assert_allclose(_np(lgamma(x)), gammaln(x), rtol=2e-6, atol=2e-5)
    n = np.array([0, 1, 4, 40, 40, 200], "float32")
    k = np.array([0, 1, 2, 0, 17, 100], "float32")
    np.testing.assert_allclose(
        _np(log_binomial_coefficient(k, n)), gammaln(n + 1) - gammaln(k + 1) - gammaln(n - k + 1), atol=5e-4
    )


def test_keras_loss_reduces_by_batch_mean_and_trains():
    rng = np.random.default_rng(1)
    n = rng.integers(0, 40, size=16)
    k = rng.integers(0, n + 1)
    y_true = np.stack([k, n], axis=1).astype("float32")
    logits = rng.normal(size=(16, 2)).astype("float32")
    loss = BinomialLoss()
    per_galaxy = _np(binomial_nll_from_logits(y_true[:, 0], y_true[:, 1], logits))
    assert float(loss(y_true, logits)) == pytest.approx(per_galaxy.mean(), rel=1e-5)
    assert BinomialLoss.from_config(BinomialLoss(include_constant=True).get_config()).include_constant

    # a linear model fitted with the loss recovers the vote fraction (MLE rho = sum k / sum N)
    x = np.ones((64, 1), "float32")
    n_all = np.full(64, 40.0, "float32")
    k_all = rng.binomial(40, 0.8, size=64).astype("float32")
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(2, use_bias=False)])
    model.compile(optimizer=keras.optimizers.Adam(0.1), loss=BinomialLoss())
    model.fit(x, np.stack([k_all, n_all], 1), epochs=60, batch_size=64, verbose=0)
    rho_hat = float(_np(rho_from_logits(model(x[:1])))[0])
    assert rho_hat == pytest.approx(k_all.sum() / n_all.sum(), abs=0.02)


# ------------------------------------------------------------------ Dirichlet-multinomial over the tree


def _tree_votes(tree, n_galaxies: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random counts (some questions with N = 0) and concentrations in the zoobot range [1, 101]."""
    rng = np.random.default_rng(seed)
    counts = np.zeros((n_galaxies, tree.n_answers()), np.float32)
    for s in tree.answer_slices.values():
        n = rng.integers(0, 30, n_galaxies) * (rng.random(n_galaxies) < 0.7)  # ~30 % never asked
        for g in range(n_galaxies):
            counts[g, s] = rng.multinomial(n[g], np.full(s.stop - s.start, 1.0 / (s.stop - s.start)))
    alpha = rng.uniform(1.0, 101.0, counts.shape).astype(np.float32)
    return counts, alpha


def test_dirichlet_multinomial_matches_scipy_per_question_and_summed():
    from scipy.stats import dirichlet_multinomial

    from gzmorph.losses import dirichlet_multinomial_nll, dirichlet_multinomial_nll_per_question
    from gzmorph.tree import GZ2

    counts, alpha = _tree_votes(GZ2, 40)
    per_question = _np(dirichlet_multinomial_nll_per_question(counts, alpha, GZ2))
    expected = np.zeros_like(per_question, dtype=np.float64)
    for j, s in enumerate(GZ2.answer_slices.values()):
        for g in range(len(counts)):
            k = counts[g, s].astype(np.int64)
            if k.sum() > 0:
                expected[g, j] = -dirichlet_multinomial.logpmf(k, alpha[g, s].astype(np.float64), k.sum())
    assert (expected == 0).any() and (expected > 0).any()  # both kinds of question are exercised
    np.testing.assert_allclose(per_question, expected, rtol=2e-5, atol=2e-4)
    np.testing.assert_allclose(_np(dirichlet_multinomial_nll(counts, alpha, GZ2)), expected.sum(axis=1),
                               rtol=2e-5, atol=1e-3)


def test_dirichlet_multinomial_hand_computed():
    """alpha = 1 for every answer: DM is uniform over the compositions of N, 1 / C(N + m - 1, m - 1)."""
    from gzmorph.losses import dirichlet_multinomial_nll_per_question
    from gzmorph.tree import GZ2

    counts = np.zeros((1, GZ2.n_answers()), np.float32)
    s = GZ2.answer_slices
    counts[0, s["smooth-or-featured"]] = [2, 0, 0]  # N = 2 over 3 answers: 6 compositions
    counts[0, s["disk-edge-on"]] = [1, 1]  # N = 2 over 2 answers: 3 compositions
    per_question = _np(dirichlet_multinomial_nll_per_question(counts, np.ones_like(counts), GZ2))[0]
    names = list(s)
    assert per_question[names.index("smooth-or-featured")] == pytest.approx(math.log(6), rel=1e-5)
    assert per_question[names.index("disk-edge-on")] == pytest.approx(math.log(3), rel=1e-5)
    others = [j for j, q in enumerate(names) if q not in ("smooth-or-featured", "disk-edge-on")]
    assert np.all(per_question[others] == 0.0)


@pytest.mark.parametrize("likelihood", ["dirichlet_multinomial", "multinomial", "decoupled"])
def test_unasked_questions_have_no_gradient(likelihood):
    from gzmorph.losses import dirichlet_multinomial_nll
    from gzmorph.tree import GZ2

    counts, alpha = _tree_votes(GZ2, 16, seed=1)
    alpha_var = tf.Variable(alpha)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(dirichlet_multinomial_nll(counts, alpha_var, GZ2, likelihood=likelihood))
    grad = tape.gradient(loss, alpha_var).numpy()
    asked = np.zeros_like(counts, dtype=bool)
    for s in GZ2.answer_slices.values():
        asked[:, s] = counts[:, s].sum(axis=1, keepdims=True) > 0
    assert (~asked).any() and asked.any()
    assert np.all(grad[~asked] == 0.0)
    assert np.all(np.isfinite(grad)) and np.count_nonzero(grad[asked]) > 0.9 * asked.sum()


def test_dirichlet_multinomial_loss_class_round_trips_and_means():
    from gzmorph.losses import DirichletMultinomialLoss, dirichlet_multinomial_nll
    from gzmorph.tree import DECALS_DR5

    counts, alpha = _tree_votes(DECALS_DR5, 8, seed=2)
    loss = DirichletMultinomialLoss(tree="decals-dr5")
    clone = DirichletMultinomialLoss.from_config(loss.get_config())
    expected = float(np.mean(_np(dirichlet_multinomial_nll(counts, alpha, DECALS_DR5))))
    assert float(_np(clone(counts, alpha))) == pytest.approx(expected, rel=1e-6)
    assert clone.tree is DECALS_DR5


def test_question_weights_scale_each_question_term():
    """Weighted tree loss = sum_q w_q * (-log DM_q), computed by hand from the per-question terms."""
    from gzmorph.losses import (
        DirichletMultinomialLoss,
        dirichlet_multinomial_nll,
        dirichlet_multinomial_nll_per_question,
    )
    from gzmorph.tree import GZ2

    counts, alpha = _tree_votes(GZ2, 24, seed=3)
    per_question = _np(dirichlet_multinomial_nll_per_question(counts, alpha, GZ2)).astype(np.float64)
    weights = {"bar": 4.0, "smooth-or-featured": 0.5}
    w = np.array([weights.get(q, 1.0) for q in GZ2.question_names])
    expected = per_question @ w
    np.testing.assert_allclose(_np(dirichlet_multinomial_nll(counts, alpha, GZ2, weights)), expected,
                               rtol=2e-5, atol=1e-3)
    # the weights change the loss (this is not the plain sum), and survive the Keras config round trip
    assert not np.allclose(expected, per_question.sum(axis=1), rtol=1e-3)
    clone = DirichletMultinomialLoss.from_config(DirichletMultinomialLoss("gz2", weights).get_config())
    assert clone.question_weights == weights
    assert float(_np(clone(counts, alpha))) == pytest.approx(float(expected.mean()), rel=1e-5)


def test_zero_question_weight_passes_no_gradient_for_that_question():
    from gzmorph.losses import dirichlet_multinomial_nll
    from gzmorph.tree import GZ2

    counts, alpha = _tree_votes(GZ2, 16, seed=4)
    alpha_var = tf.Variable(alpha)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(dirichlet_multinomial_nll(counts, alpha_var, GZ2, {"bar": 0.0}))
    grad = tape.gradient(loss, alpha_var).numpy()
    bar = GZ2.answer_slices["bar"]
    assert counts[:, bar].sum() > 0  # bar was asked of some galaxies, yet contributes nothing
    assert np.all(grad[:, bar] == 0.0)
    assert np.count_nonzero(grad[:, GZ2.answer_slices["smooth-or-featured"]]) > 0


def test_question_weights_reject_unknown_questions_and_negative_weights():
    from gzmorph.config import ConfigError
    from gzmorph.losses import DirichletMultinomialLoss
    from gzmorph.train import tree_question_weights
    from gzmorph.tree import GZ2

    with pytest.raises(ValueError, match=r"\['spiral'\], not questions of the gz2 tree"):
        DirichletMultinomialLoss("gz2", {"spiral": 2.0})
    with pytest.raises(ValueError, match="finite and >= 0"):
        DirichletMultinomialLoss("gz2", {"bar": -1.0})
    params = {"train": {"tree": {"crop_mode": "central", "crop_zoom": [1.7, 1.9],
                                 "question_weights": {"bars": 3}}}}
    with pytest.raises(ConfigError, match=r"train\.tree\.question_weights: question weights name \['bars'\]"):
        tree_question_weights(params, GZ2)
    params["train"]["tree"]["question_weights"] = {"bar": 3}
    assert tree_question_weights(params, GZ2) == {"bar": 3.0}


def test_multinomial_likelihood_matches_scipy():
    """train.tree.likelihood multinomial: -log Mult(k | alpha / sum alpha) per question (scipy), zero when unasked,
    and not the Dirichlet-multinomial of the same alpha."""
    from scipy.stats import multinomial

    from gzmorph.losses import (
        DirichletMultinomialLoss,
        dirichlet_multinomial_nll_per_question,
        multinomial_nll_per_question,
    )
    from gzmorph.tree import GZ2

    counts, alpha = _tree_votes(GZ2, 24, seed=5)
    per_question = _np(multinomial_nll_per_question(counts, alpha, GZ2))
    expected = np.zeros_like(per_question, dtype=np.float64)
    for j, s in enumerate(GZ2.answer_slices.values()):
        for g in range(len(counts)):
            k = counts[g, s].astype(np.int64)
            if k.sum() > 0:
                a = alpha[g, s].astype(np.float64)
                p = a / a.sum()  # summed in float64: scipy wants rows summing to 1 within 1e-15
                expected[g, j] = -multinomial.logpmf(k, k.sum(), p)
    assert (expected == 0).any() and (expected > 0).any()
    np.testing.assert_allclose(per_question, expected, rtol=2e-5, atol=2e-4)
    assert not np.allclose(_np(dirichlet_multinomial_nll_per_question(counts, alpha, GZ2)), expected, atol=0.5)
    # the class picks the likelihood, keeps it through the Keras config and rejects unknown ones
    loss = DirichletMultinomialLoss("gz2", likelihood="multinomial")
    clone = DirichletMultinomialLoss.from_config(loss.get_config())
    assert float(_np(clone(counts, alpha))) == pytest.approx(float(expected.sum(axis=1).mean()), rel=1e-5)
    with pytest.raises(ValueError, match="likelihood must be one of"):
        DirichletMultinomialLoss("gz2", likelihood="binomial")



def test_decoupled_likelihood_value_and_where_its_gradients_go():
    """train.tree.likelihood decoupled: the value is -log Mult(k | p) - log DM(k | alpha) (scipy); the fractions'
    logits get exactly the multinomial's gradient and the total concentration exactly the DM's with p held."""
    from scipy.stats import dirichlet_multinomial, multinomial

    from gzmorph.losses import (
        decoupled_nll_per_question,
        dirichlet_multinomial_nll_per_question,
        multinomial_nll_per_question,
    )
    from gzmorph.model import MeanConcentration
    from gzmorph.tree import GZ2

    counts, alpha = _tree_votes(GZ2, 12, seed=7)
    per_question = _np(decoupled_nll_per_question(counts, alpha, GZ2))
    expected = np.zeros_like(per_question, dtype=np.float64)
    for j, s in enumerate(GZ2.answer_slices.values()):
        for g in range(len(counts)):
            k = counts[g, s].astype(np.int64)
            if k.sum() > 0:
                a = alpha[g, s].astype(np.float64)
                expected[g, j] = (-multinomial.logpmf(k, k.sum(), a / a.sum())
                                  - dirichlet_multinomial.logpmf(k, a, k.sum()))
    np.testing.assert_allclose(per_question, expected, rtol=2e-5, atol=5e-4)

    # through the mean-concentration head: logits [z (answers), c (questions)]
    head = MeanConcentration(GZ2.answer_question_index)
    n_answers = GZ2.n_answers()
    x = tf.Variable(np.random.default_rng(8).normal(size=(12, n_answers + len(GZ2.questions))).astype("float32"))

    def grad(nll):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(nll(counts, head(x), GZ2))
        return tape.gradient(loss, x).numpy()

    decoupled, mult, dm = grad(decoupled_nll_per_question), grad(multinomial_nll_per_question), grad(
        dirichlet_multinomial_nll_per_question)
    np.testing.assert_allclose(decoupled[:, :n_answers], mult[:, :n_answers], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(decoupled[:, n_answers:], dm[:, n_answers:], rtol=1e-4, atol=1e-5)
    assert np.abs(mult[:, n_answers:]).max() < 1e-5  # the multinomial ignores the total (up to round-off)
    assert not np.allclose(dm[:, :n_answers], mult[:, :n_answers], atol=1e-3)  # the full DM pulls p elsewhere

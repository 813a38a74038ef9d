"""Vote-count likelihoods: binomial per question (Walmsley et al. 2020, §2.1-2.2, eqs 1-6) and
Dirichlet-multinomial over the whole decision tree (Walmsley et al. 2021; end of this module).

Each of N volunteers asked a question gives answer A with probability rho (the
"typical vote fraction"), so the k votes for A are Binomial(k | rho, N) (eq. 2).
The network predicts rho per galaxy and is trained to minimise

    -L = -[k log rho + (N - k) log(1 - rho)]                                  (eq. 6)

Eq. 6 drops the log binomial coefficient log C(N, k), which does not depend on
the weights.  ``include_constant=False`` (the default) reproduces eq. 6 exactly;
``include_constant=True`` adds -log C(N, k) so the value is the true negative
log-likelihood -log Bin(k | rho, N) (comparable with scipy.stats.binom.logpmf
and across questions/galaxies with different N).  Gradients are identical.

Conventions:
  * the network emits two logits (answer, not-answer); rho = softmax(logits)[..., 0]
    (the paper's 2-neuron softmax).  The loss takes logits and uses log_softmax,
    so it never evaluates log(0) even when the softmax saturates.
  * galaxies with N = 0 (question never asked) contribute exactly 0.
  * everything is written with ``keras.ops`` (backend-independent) and computed
    in float32 even when the model runs in mixed precision.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import keras
import numpy as np
from keras import ops

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def rho_from_logits(logits):
    """Typical vote fraction rho = softmax(logits)[..., 0] (paper's 2-neuron softmax)."""
    logits = ops.cast(logits, "float32")
    # softmax over two logits is sigmoid of their difference; cheaper and exact.
    return ops.sigmoid(logits[..., 0] - logits[..., 1])


def lgamma(x):
    """log Gamma(x) for x >= 1 (vote counts + 1), with keras.ops only.

    keras.ops has no lgamma, so: shift x up by 6 with the recurrence
    Gamma(x) = Gamma(x + 6) / (x (x+1) ... (x+5)), then the Stirling series,
    whose truncation error at z >= 7 is < 1e-9 (far below float32 resolution).
    """
    x = ops.cast(x, "float32")
    z = x + 6.0
    shift = ops.log(x * (x + 1.0) * (x + 2.0) * (x + 3.0) * (x + 4.0) * (x + 5.0))
    inv_z = 1.0 / z
    inv_z2 = inv_z * inv_z
    series = inv_z * (1.0 / 12.0 - inv_z2 * (1.0 / 360.0 - inv_z2 / 1260.0))
    return (z - 0.5) * ops.log(z) - z + _HALF_LOG_2PI + series - shift


def log_binomial_coefficient(k, n):
    """log C(n, k) for integer-valued k <= n (as floats)."""
    k = ops.cast(k, "float32")
    n = ops.cast(n, "float32")
    return lgamma(n + 1.0) - lgamma(k + 1.0) - lgamma(n - k + 1.0)


def _nll_from_log_probs(k, n, log_rho, log_one_minus_rho, include_constant: bool):
    k = ops.cast(k, "float32")
    n = ops.cast(n, "float32")
    nll = -(k * log_rho + (n - k) * log_one_minus_rho)
    if include_constant:
        nll = nll - log_binomial_coefficient(k, n)
    # N = 0 rows are 0 up to the float32 round-off of the lgamma series in the
    # constant; the where makes them exactly 0 (question never asked: no information).
    return ops.where(n > 0, nll, ops.zeros_like(nll))


def binomial_nll_from_logits(k, n, logits, include_constant: bool = False):
    """Per-galaxy binomial NLL (eq. 6) from 2 logits [..., 2]; rho = softmax(logits)[..., 0].

    k: votes for the answer, n: total votes for the question (same leading shape as
    logits[..., 0]).  Returns the same leading shape, float32.
    """
    log_probs = ops.log_softmax(ops.cast(logits, "float32"), axis=-1)
    return _nll_from_log_probs(k, n, log_probs[..., 0], log_probs[..., 1], include_constant)


def binomial_nll(k, n, rho, eps: float = 1e-7, include_constant: bool = False):
    """Per-galaxy binomial NLL (eq. 6) from a predicted rho, clipped to [eps, 1 - eps].

    Prefer :func:`binomial_nll_from_logits` for training; this is for rho that
    come from elsewhere (e.g. averaged MC-dropout predictions).
    """
    rho = ops.clip(ops.cast(rho, "float32"), eps, 1.0 - eps)
    return _nll_from_log_probs(k, n, ops.log(rho), ops.log1p(-rho), include_constant)


@keras.saving.register_keras_serializable(package="gzmorph")
class BinomialLoss(keras.losses.Loss):
    """Keras loss: y_true [B, 2] = (k, N) vote counts, y_pred [B, 2] logits.

    Reduction (default "sum_over_batch_size") is the mean over galaxies in the
    batch, N = 0 galaxies counting as 0 in the mean.
    """

    def __init__(
        self,
        include_constant: bool = False,
        name: str = "binomial_loss",
        reduction: str = "sum_over_batch_size",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.include_constant = include_constant

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, "float32")
        return binomial_nll_from_logits(
            y_true[:, 0], y_true[:, 1], y_pred, include_constant=self.include_constant
        )

    def get_config(self) -> dict:
        config = super().get_config()
        config["include_constant"] = self.include_constant
        return config


# ------------------------------------------------------------------ whole-tree model (Walmsley et al. 2021, zoobot)
#
# One network predicts Dirichlet concentrations alpha for every answer of the decision tree.  The votes k of one
# question's N volunteers are Dirichlet-multinomial: the volunteers' typical vote fractions rho ~ Dir(alpha) and
# k ~ Multinomial(N, rho), so
#
#     log DM(k | alpha, N) = log N! + log G(A) - log G(N + A) + sum_a [log G(k_a + alpha_a) - log G(alpha_a) - log k_a!]
#
# with A = sum_a alpha_a (G = Gamma).  The loss of a galaxy is the sum over questions of -log DM; a question
# nobody was asked (N = 0) costs exactly 0 and passes no gradient.  The sums over a question's answers are one
# matmul with the tree's answer -> question indicator matrix, so the loss is vectorised over galaxies and
# questions alike (no Python loop in the graph).


def answer_question_matrix(tree) -> np.ndarray:
    """Indicator [n_answers, n_questions]: 1 where the answer (``answer_columns`` order) belongs to the question."""
    slices = tree.answer_slices
    matrix = np.zeros((tree.n_answers(), len(slices)), np.float32)
    for j, s in enumerate(slices.values()):
        matrix[s, j] = 1.0
    return matrix


def _question_sums(counts, alpha, tree):
    """membership [n_answers, n_questions], k and alpha as float32 [B, n_answers], and per question the votes N
    and the concentration sum A [B, n_questions]: what every per-question likelihood starts from."""
    membership = ops.convert_to_tensor(answer_question_matrix(tree))
    k = ops.cast(counts, "float32")
    alpha = ops.cast(alpha, "float32")
    return membership, k, alpha, ops.matmul(k, membership), ops.matmul(alpha, membership)


def _asked_only(n, nll):
    """nll where the question was asked (N > 0), else exactly 0 with no gradient (``where`` sends the gradient of
    the unselected branch nowhere)."""
    return ops.where(n > 0, nll, ops.zeros_like(nll))


def dirichlet_multinomial_nll_per_question(counts, alpha, tree):
    """-log DM(k | alpha, N) per galaxy and question [B, n_questions], N = the question's answer sum.

    counts, alpha: [B, n_answers] in the tree's ``answer_columns`` order (alpha > 0).  Questions with N = 0
    give exactly 0, and no gradient (``where`` sends the gradient of the unselected branch nowhere).
    """
    membership, k, alpha, n, total_alpha = _question_sums(counts, alpha, tree)
    per_answer = lgamma(k + alpha) - lgamma(alpha) - lgamma(k + 1.0)
    log_dm = lgamma(n + 1.0) + lgamma(total_alpha) - lgamma(n + total_alpha) + ops.matmul(per_answer, membership)
    return _asked_only(n, -log_dm)


def multinomial_nll_per_question(counts, alpha, tree):
    """-log Multinomial(k | p, N) per galaxy and question [B, n_questions], p = alpha / (the question's alpha sum).

    The Dirichlet-multinomial's limit of infinite total concentration: only the expected vote fractions are
    fitted (the spread of rho comes from MC dropout alone, as in the binomial model).  N = 0 gives 0, no gradient.
    """
    membership, k, alpha, n, total_alpha = _question_sums(counts, alpha, tree)
    log_p = ops.log(alpha) - ops.log(ops.matmul(total_alpha, ops.transpose(membership)))
    per_answer = k * log_p - lgamma(k + 1.0)
    return _asked_only(n, -(lgamma(n + 1.0) + ops.matmul(per_answer, membership)))


def decoupled_nll_per_question(counts, alpha, tree):
    """-log Multinomial(k | p, N) - log DM(k | A sg(p), N) per galaxy and question [B, n_questions]; p = alpha / A,
    A the question's alpha sum, sg = stop_gradient.

    The value is the two likelihoods' sum, but each fits one thing: the expected fractions p get the multinomial's
    gradient only (its score is unbiased under the Dirichlet-multinomial too, E[k] = N p), the total concentration
    A gets the Dirichlet-multinomial's with p held fixed (the over-dispersion of the votes about p).  Under the full
    DM, a low A flattens the likelihood in p (at A -> 0 it only asks which answers got any vote), so a fresh model
    that lowers A first learns its fractions slowly, and stays there.  N = 0 gives 0, no gradient.
    """
    membership, _, alpha, _, total_alpha = _question_sums(counts, alpha, tree)
    total = ops.matmul(total_alpha, ops.transpose(membership))  # [B, n_answers]: A of each answer's question
    held_mean = ops.stop_gradient(alpha / total) * total
    return (multinomial_nll_per_question(counts, alpha, tree)
            + dirichlet_multinomial_nll_per_question(counts, held_mean, tree))


LIKELIHOODS = {"dirichlet_multinomial": dirichlet_multinomial_nll_per_question,
               "multinomial": multinomial_nll_per_question,
               "decoupled": decoupled_nll_per_question}


def question_weight_vector(tree, question_weights: Mapping[str, float] | None = None) -> np.ndarray:
    """Loss weight per question [n_questions] in the tree's order: 1 unless ``question_weights`` names it.

    A weight w multiplies that question's -log DM (a tempered likelihood, w > 1 counts its votes w times):
    a multi-task weighting for questions whose votes are few and whose gradient is otherwise swamped by the
    root question's on a shared trunk.
    """
    weights = dict(question_weights or {})
    unknown = sorted(set(weights) - set(tree.question_names))
    if unknown:
        raise ValueError(f"question weights name {unknown}, not questions of the {tree.name} tree "
                         f"(questions: {list(tree.question_names)})")
    bad = {q: w for q, w in weights.items() if not (float(w) >= 0 and np.isfinite(float(w)))}
    if bad:
        raise ValueError(f"question weights must be finite and >= 0, got {bad}")
    return np.array([float(weights.get(q, 1.0)) for q in tree.question_names], np.float32)


def dirichlet_multinomial_nll(counts, alpha, tree, question_weights: Mapping[str, float] | None = None,
                              likelihood: str = "dirichlet_multinomial"):
    """Per-galaxy NLL of the whole tree [B]: -log DM summed over questions (each with its own N), each
    question's term times its weight (:func:`question_weight_vector`; default 1, zoobot's plain sum).
    ``likelihood="multinomial"``: -log Multinomial(k | alpha / sum alpha) per question instead."""
    per_question = LIKELIHOODS[likelihood](counts, alpha, tree)
    if not question_weights:
        return ops.sum(per_question, axis=-1)
    weights = ops.convert_to_tensor(question_weight_vector(tree, question_weights))
    return ops.sum(per_question * weights, axis=-1)


@keras.saving.register_keras_serializable(package="gzmorph")
class DirichletMultinomialLoss(keras.losses.Loss):
    """Keras loss: y_true [B, n_answers] vote counts, y_pred [B, n_answers] concentrations, tree by name.

    Reduction (default "sum_over_batch_size"): the mean over galaxies of the per-galaxy (weighted) sum over
    questions.  ``question_weights``: question name -> weight (``train.tree.question_weights``).
    """

    def __init__(self, tree: str = "gz2", question_weights: Mapping[str, float] | None = None,
                 likelihood: str = "dirichlet_multinomial",
                 name: str = "dirichlet_multinomial_loss", reduction: str = "sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        from gzmorph.tree import get_tree

        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {sorted(LIKELIHOODS)}, got {likelihood!r}")
        self.likelihood = str(likelihood)
        self.tree_name = str(tree)
        self.tree = get_tree(self.tree_name)
        self.question_weights = {str(q): float(w) for q, w in (question_weights or {}).items()}
        question_weight_vector(self.tree, self.question_weights)  # fail here, not in the first step

    def call(self, y_true, y_pred):
        return dirichlet_multinomial_nll(y_true, y_pred, self.tree, self.question_weights, self.likelihood)

    def get_config(self) -> dict:
        config = super().get_config()
        config["tree"] = self.tree_name
        config["question_weights"] = dict(self.question_weights)
        config["likelihood"] = self.likelihood
        return config

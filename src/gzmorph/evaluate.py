"""``gzmorph evaluate``: calibration and point metrics of the test-set posteriors (Walmsley et al. 2020, §2.7).

Input: the predictions parquet of ``gzmorph predict`` (per galaxy the observed k of N, the T MC-dropout
predictions rho_t and the deterministic rho_point), the vote catalog (for the simulated truth
``truth_rho_<q>_<a>`` and ``truth_<param>`` where it exists) and, optionally, the shards and model (only to
show each example galaxy as the network sees it).  Three posteriors over k are compared throughout:

- **mc**: the mixture (1/T) sum_t Bin(k | rho_t, N) over the T stochastic passes (eq. 10,
  :func:`gzmorph.posterior.mixture_pmf`);
- **t1**: T = 1, the paper's "without MC" of Tables 1-2: ONE stochastic pass (dropout and augmentation on),
  Bin(k | rho_0, N) with the first MC pass alone (eq. 3, :func:`~gzmorph.posterior.single_pass_pmf`);
- **deterministic**: the network without dropout or random augmentation, Bin(k | rho_point, N).

Calibration (eqs. 11-13), implemented as the paper writes them:

- The model prediction k̂_i (v̂_i = k̂_i / N_i) is the **most likely vote count**, the mode of that
  posterior (§2.7.1, "reducing our posteriors to the most likely vote count k̂"): the MC mixture's mode
  for mc, the binomial's mode for t1 and deterministic.  Ties go to the smallest k (numpy argmax).
- The window uses the galaxy's own N_i and **strict** bounds on both sides, k̂_i - N_i ε < j < k̂_i + N_i ε,
  i.e. |j/N_i - v̂_i| < ε.  A bound landing exactly on an integer excludes it (ε = 0.5 with N = 2 is still
  only j = k̂); a 1e-9 tolerance stops float round-off (0.1 * 30 = 3.0000000000000004) from admitting it.
- C_expected = sum_i sum_{j in window_i} p(j | ρ̂_i, N_i) (eq. 11); C_actual = #{i : k_i in window_i} (eq. 12).
- Coverage error = (C_expected - C_actual) / C_actual (eq. 13), a fraction (0.165 for the paper's 16.5 %);
  positive means overconfident.  At ε = 0 the window is empty, both counts are 0 and the error is NaN.

Point metrics (§2.7.1): RMSE of the most likely vote fraction k̂/N and of rho (the MC mean, pass 0, rho_point)
against the observed k/N, and against the simulated true rho where the catalog has it.  Majority responses:
humans answer ``<answer>`` when k/N > 0.5 and the model does when mean rho >= 0.5 (the paper's "ρ̂ < 0.5" for
the other class); the ROC curve thresholds the mean rho over the MC passes (Fig. 9).  The "high-confidence"
subset (Figs. 9-10; K+18 take the most confident ~7.7 % of spirals and ~9.3 % of ellipticals, the paper ~8 %
of each bar class) is, within each *predicted* class, the ``HIGH_CONFIDENCE_FRACTION`` of galaxies with the
largest |mean rho - 0.5| (at least one per non-empty class): it uses only the prediction, never the votes.

Learnability (simulated data only): did the model learn more than the smooth-vs-disk class?  Per group of
test galaxies (``all``; per truth class ``smooth``, ``disk``; among disks per bin of the visibility of arms,
bar and disk, :func:`gzmorph.sim.volunteers.visibility`), the RMSE against the true rho of the MC-mean rho
(``rmse_model``), of pass 0 (``rmse_t1``), of a predictor that knows only the truth class and predicts that
class's mean true rho over the *reference* galaxies, those of the catalog not in the predictions file that
pass the same vote cut N >= max(min_total_votes, 1) (what it could learn from the training data;
``rmse_class_only``), of the reference galaxies' overall mean (``rmse_constant``) and of the observed k/N
(``rmse_floor``, the vote-noise floor), with ``gain_over_class = 1 - rmse_model / rmse_class_only``.  A
catalog without truth (real data) gives the ``all`` row alone with n_galaxies 0 and NaN metrics.

Outputs in ``--out-dir``, each written atomically:

- ``calibration.csv``: ``epsilon`` and, for each of mc, t1, deterministic, ``expected_<kind>, actual_<kind>,
  coverage_error_<kind>`` for ε = 0, 0.01, ..., 0.5 (which includes the tables' 0.02, 0.05, 0.10, 0.20);
  on simulated data also ``*_truth``, the oracle: the binomial posterior of the true rho (the calibration
  the over-dispersed votes allow a perfect rho, :func:`calibration_table`);
- ``learnability.csv``: ``group, n_galaxies, rmse_model, rmse_t1, rmse_class_only, rmse_constant, rmse_floor,
  gain_over_class`` (see above);
- ``metrics.json``: n_galaxies, passes, rmse_vs_vote_fraction, rmse_vs_true_rho (null without truth),
  coverage_error.{mc,t1,deterministic[,truth]}.eps_0p02 ... eps_0p20 (ε keys without dots: DVC flattens keys with
  dots), confusion.{all,high_confidence} counts and accuracy, roc_auc, learnability (null without truth:
  vote_cut, reference_galaxies, the rows all/smooth/disk and visibility.<feature>_<lo>_<hi> such as
  ``arms_0p3_0p5``); NaN is written as null;
- ``confusion.csv``: DVC's long format, one row per galaxy, columns ``actual,predicted`` with values
  ``<answer>``/``not <answer>`` (a yes/no answer is named by its question: ``bar``/``not bar``);
- figures: calibration.png (Fig. 7), confusion.png (Fig. 10), roc.png (Fig. 9), distributions.png (Fig. 8)
  and posteriors.png (Figs. 4-5; the image column only with ``--shards`` and ``--model``).

TensorFlow is imported only for the images of posteriors.png.
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from gzmorph.config import UserError
from gzmorph.posterior import mixture_pmf, single_pass_pmf

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

TABLE_EPSILONS = (0.02, 0.05, 0.10, 0.20)  # the rows of the paper's Tables 1-2
KINDS = ("mc", "t1", "deterministic")  # the three posteriors (module docstring)
KIND_NAMES = {"mc": "MC dropout", "t1": "T = 1 (paper's 'without MC')", "deterministic": "deterministic"}
CALIBRATION_COLUMNS = ("epsilon", *(f"{what}_{kind}" for kind in KINDS
                                    for what in ("expected", "actual", "coverage_error")))
TRUTH_CALIBRATION_COLUMNS = ("expected_truth", "actual_truth", "coverage_error_truth")  # simulated data only
LEARNABILITY_COLUMNS = ("group", "n_galaxies", "rmse_model", "rmse_t1", "rmse_class_only", "rmse_constant",
                        "rmse_floor", "gain_over_class")
VISIBILITY_FEATURES = ("arms", "bar", "disk")  # fields of gzmorph.sim.volunteers.Visibility
VISIBILITY_EDGES = (0.0, 0.1, 0.3, 0.5, 1.0)  # bins [0, 0.1), [0.1, 0.3), [0.3, 0.5), [0.5, 1]
CLASS_ORDER = ("smooth", "disk")  # truth_morphology classes first in the table; any others follow, sorted
HIGH_CONFIDENCE_FRACTION = 0.08
N_POSTERIOR_EXAMPLES = 6
_WINDOW_TOL = 1e-9
_COLOURS = {"mc": "tab:green", "t1": "tab:orange", "deterministic": "black"}
_OBS_COLOUR = "tab:red"


# ---------------------------------------------------------------------------------------------- calibration

def epsilon_grid(step: float = 0.01, maximum: float = 0.5, extra: Sequence[float] = TABLE_EPSILONS) -> np.ndarray:
    """Sorted, de-duplicated ε values: 0, step, ..., maximum plus ``extra`` (rounded to 1e-10)."""
    fine = np.arange(0.0, maximum + step / 2, step)
    return np.unique(np.round(np.concatenate([fine, np.asarray(extra, float)]), 10))


def coverage_error(expected: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """Eq. 13, (expected - actual) / actual as a fraction; NaN where actual is 0."""
    expected, actual = np.asarray(expected, float), np.asarray(actual, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(actual > 0, (expected - actual) / np.where(actual > 0, actual, 1.0), np.nan)


@dataclass(frozen=True)
class Coverage:
    """Eqs. 11-12 summed over galaxies, one value per ε."""

    epsilon: np.ndarray  # [E]
    expected: np.ndarray  # [E] float: C_expected
    actual: np.ndarray  # [E] int: C_actual

    @property
    def coverage_error(self) -> np.ndarray:
        return coverage_error(self.expected, self.actual)


def window_radius(n: np.ndarray, epsilon: np.ndarray) -> np.ndarray:
    """Largest integer distance d = |j - k̂| inside the strict window d < N ε; [G, E], -1 for an empty window."""
    width = np.asarray(n, float)[:, None] * np.asarray(epsilon, float)[None, :]
    return (np.ceil(width - _WINDOW_TOL) - 1).astype(np.int64)


def coverage_counts(pmf: np.ndarray, k: np.ndarray, n: np.ndarray, epsilon: Sequence[float] | np.ndarray,
                    k_hat: np.ndarray | None = None) -> Coverage:
    """C_expected and C_actual (eqs. 11-12) for posteriors ``pmf`` [G, K] over k = 0..K-1.

    k, n: [G] observed votes and volunteers asked; k_hat: [G] the prediction k̂ (default: the pmf's mode).
    The sums over galaxies of :func:`coverage_per_galaxy`.
    """
    eps = np.atleast_1d(np.asarray(epsilon, float))
    expected, hit = coverage_per_galaxy(pmf, k, n, eps, k_hat)
    return Coverage(eps, expected.sum(axis=0), hit.sum(axis=0))


def coverage_per_galaxy(pmf: np.ndarray, k: np.ndarray, n: np.ndarray, epsilon: Sequence[float] | np.ndarray,
                        k_hat: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each galaxy's terms of eqs. 11-12: (posterior mass inside the window [G, E], observed k inside it [G, E]).

    Vectorised: a cumulative sum per galaxy turns each window's probability into two look-ups.
    """
    pmf = np.asarray(pmf, float)
    k, n = np.asarray(k, np.int64), np.asarray(n, np.int64)
    eps = np.atleast_1d(np.asarray(epsilon, float))
    if pmf.ndim != 2 or k.shape != (pmf.shape[0],) or n.shape != k.shape:
        raise ValueError(f"pmf [G, K], k [G], n [G] expected; got {pmf.shape}, {k.shape}, {n.shape}")
    if np.any(eps < 0):
        raise ValueError("epsilon must be non-negative")
    k_hat = np.argmax(pmf, axis=1) if k_hat is None else np.asarray(k_hat, np.int64)
    radius = window_radius(n, eps)  # [G, E]
    lo = np.clip(k_hat[:, None] - radius, 0, None)  # first j inside
    hi = np.minimum(k_hat[:, None] + radius, n[:, None])  # last j inside (j > N has no mass)
    empty = radius < 0
    cdf = np.concatenate([np.zeros((len(pmf), 1)), np.cumsum(pmf, axis=1)], axis=1)  # cdf[:, j] = P(k < j)
    inside = np.take_along_axis(cdf, np.clip(hi + 1, 0, pmf.shape[1]), 1) - np.take_along_axis(cdf, lo, 1)
    hit = (np.abs(k - k_hat)[:, None] <= radius) & ~empty
    return np.where(empty, 0.0, inside), hit


def bootstrap_coverage_error(expected: np.ndarray, hit: np.ndarray, resamples: int = 1000, seed: int = 0,
                             quantiles: Sequence[float] = (0.16, 0.84)) -> np.ndarray:
    """Quantiles [len(quantiles), E] of the coverage error (eq. 13) over bootstrap resamples of the galaxies.

    ``expected``, ``hit``: per-galaxy terms [G, E] (:func:`coverage_per_galaxy`).  Each resample draws G galaxies
    with replacement; the default quantiles give the central 68 % interval.
    """
    expected, hit = np.asarray(expected, float), np.asarray(hit, float)
    weights = np.random.default_rng(seed).multinomial(len(expected), np.full(len(expected), 1 / len(expected)),
                                                      size=resamples)  # [B, G] times each galaxy is drawn
    errors = coverage_error(weights @ expected, weights @ hit)  # [B, E]
    return np.nanquantile(errors, quantiles, axis=0)


@dataclass(frozen=True)
class Posteriors:
    """Everything the metrics and figures need, per galaxy (arrays of length G)."""

    k: np.ndarray  # observed votes for the answer
    n: np.ndarray  # volunteers asked
    rho: np.ndarray  # [G, T] MC-dropout predictions
    rho_point: np.ndarray  # deterministic prediction
    pmf_mc: np.ndarray  # [G, max N + 1] eq. 10 over the T passes
    pmf_t1: np.ndarray  # [G, max N + 1] eq. 3 with pass 0 alone (T = 1)
    pmf_deterministic: np.ndarray  # [G, max N + 1] eq. 3 with rho_point

    @property
    def rho_mean(self) -> np.ndarray:
        return self.rho.mean(axis=1)

    @property
    def rho_t1(self) -> np.ndarray:
        """The first stochastic pass: the paper's T = 1 prediction."""
        return self.rho[:, 0]

    def pmf(self, kind: str) -> np.ndarray:
        """The posterior over k of ``kind`` (one of :data:`KINDS`)."""
        return getattr(self, f"pmf_{kind}")

    def rho_of(self, kind: str) -> np.ndarray:
        """The point rho of ``kind``: the MC mean, pass 0 or rho_point."""
        return {"mc": self.rho_mean, "t1": self.rho_t1, "deterministic": self.rho_point}[kind]

    def k_hat(self, kind: str) -> np.ndarray:
        """Most likely k (the mode of that posterior)."""
        return np.argmax(self.pmf(kind), axis=1)

    @property
    def k_hat_mc(self) -> np.ndarray:
        return self.k_hat("mc")

    @property
    def vote_fraction(self) -> np.ndarray:
        return self.k / np.maximum(self.n, 1)


def posteriors(k: np.ndarray, n: np.ndarray, rho: np.ndarray, rho_point: np.ndarray) -> Posteriors:
    k, n = np.asarray(k, np.int64), np.asarray(n, np.int64)
    rho, rho_point = np.asarray(rho, np.float64), np.asarray(rho_point, np.float64)
    if rho.ndim != 2 or rho.shape[1] < 1:
        raise ValueError(f"rho must be [G, T] with T >= 1; got {rho.shape}")
    n_max = int(n.max(initial=0))
    return Posteriors(k, n, rho, rho_point, mixture_pmf(rho, n, n_max), single_pass_pmf(rho[:, 0], n, n_max),
                      single_pass_pmf(rho_point, n, n_max))


def calibration_table(post: Posteriors, epsilons: Sequence[float] | np.ndarray | None = None,
                      truth: np.ndarray | None = None) -> pd.DataFrame:
    """calibration.csv: one row per ε with expected/actual counts and coverage error of each posterior kind.

    With ``truth`` (simulated data: the true rho per galaxy) the ``*_truth`` columns give the oracle: the
    binomial posterior of the true rho, over the galaxies with a finite truth.  It is the calibration that
    a perfect rho-predictor reaches when votes are binomial given rho; the simulator's crowd offset and
    volunteer biases make them over-dispersed, so the oracle is itself overconfident by that much.
    """
    eps = epsilon_grid() if epsilons is None else np.asarray(epsilons, float)
    columns: dict[str, np.ndarray] = {"epsilon": eps}
    for kind in KINDS:
        cov = coverage_counts(post.pmf(kind), post.k, post.n, eps)
        columns.update({f"expected_{kind}": cov.expected, f"actual_{kind}": cov.actual,
                        f"coverage_error_{kind}": cov.coverage_error})
    names = list(CALIBRATION_COLUMNS)
    if truth is not None:
        ok = np.isfinite(truth)
        n = post.n[ok]
        cov = coverage_counts(single_pass_pmf(truth[ok], n, int(n.max(initial=0))), post.k[ok], n, eps)
        columns.update({"expected_truth": cov.expected, "actual_truth": cov.actual,
                        "coverage_error_truth": cov.coverage_error})
        names += list(TRUTH_CALIBRATION_COLUMNS)
    return pd.DataFrame(columns, columns=names)


# ---------------------------------------------------------------------------------------------- point metrics

def rmse(predicted: np.ndarray, observed: np.ndarray) -> float:
    predicted, observed = np.asarray(predicted, float), np.asarray(observed, float)
    return float(np.sqrt(np.mean((predicted - observed) ** 2))) if predicted.size else math.nan


@dataclass(frozen=True)
class RocCurve:
    fpr: np.ndarray  # false-positive rate, from 0 to 1
    tpr: np.ndarray  # true-positive rate, from 0 to 1
    thresholds: np.ndarray  # score >= threshold is called positive; the first is +inf


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> RocCurve:
    """ROC curve with one point per distinct score, so tied scores move along a diagonal segment together.

    NaN rates when a class is absent.
    """
    scores, labels = np.asarray(scores, float), np.asarray(labels, bool)
    if scores.shape != labels.shape or scores.ndim != 1:
        raise ValueError("scores and labels must be 1-d arrays of the same length")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores must be finite")
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1] if len(s) else np.array([], np.int64)
    tps = np.cumsum(y)[last]
    fps = last + 1 - tps
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    with np.errstate(divide="ignore", invalid="ignore"):
        tpr = np.r_[0.0, tps / n_pos] if n_pos else np.full(len(last) + 1, np.nan)
        fpr = np.r_[0.0, fps / n_neg] if n_neg else np.full(len(last) + 1, np.nan)
    return RocCurve(fpr, tpr, np.r_[np.inf, s[last]])


def auc(curve: RocCurve) -> float:
    """Trapezoidal area under the ROC curve (ties count one half, as the Mann-Whitney U); NaN if undefined."""
    fpr, tpr = curve.fpr, curve.tpr
    if len(fpr) < 2 or not (np.all(np.isfinite(fpr)) and np.all(np.isfinite(tpr))):
        return math.nan
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


@dataclass(frozen=True)
class Confusion:
    """2x2 counts; positive = the answer (e.g. smooth), negative = not the answer."""

    true_positive: int
    false_positive: int
    false_negative: int
    true_negative: int

    @property
    def n(self) -> int:
        return self.true_positive + self.false_positive + self.false_negative + self.true_negative

    @property
    def accuracy(self) -> float:
        return (self.true_positive + self.true_negative) / self.n if self.n else math.nan

    def as_dict(self) -> dict[str, float]:
        return {"true_positive": self.true_positive, "false_positive": self.false_positive,
                "false_negative": self.false_negative, "true_negative": self.true_negative,
                "n": self.n, "accuracy": self.accuracy}


def confusion(actual: np.ndarray, predicted: np.ndarray) -> Confusion:
    actual, predicted = np.asarray(actual, bool), np.asarray(predicted, bool)
    if actual.shape != predicted.shape:
        raise ValueError("actual and predicted must have the same shape")
    return Confusion(int(np.sum(actual & predicted)), int(np.sum(~actual & predicted)),
                     int(np.sum(actual & ~predicted)), int(np.sum(~actual & ~predicted)))


def human_majority(k: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Volunteers' majority answer is the positive one: k/N > 0.5 (§2.7.1, Fig. 10)."""
    return np.asarray(k) / np.maximum(np.asarray(n), 1) > 0.5


def model_majority(rho_mean: np.ndarray) -> np.ndarray:
    """The model's majority answer is the positive one: mean rho >= 0.5 (the paper's other class: ρ̂ < 0.5)."""
    return np.asarray(rho_mean) >= 0.5


def high_confidence_mask(rho_mean: np.ndarray, fraction: float = HIGH_CONFIDENCE_FRACTION) -> np.ndarray:
    """Within each predicted class, the ``fraction`` of galaxies with the largest |rho - 0.5| (>= 1 per class)."""
    rho_mean = np.asarray(rho_mean, float)
    predicted = model_majority(rho_mean)
    mask = np.zeros(len(rho_mean), bool)
    for cls in (True, False):
        idx = np.flatnonzero(predicted == cls)
        if len(idx):
            keep = max(1, round(fraction * len(idx)))
            order = np.argsort(-np.abs(rho_mean[idx] - 0.5), kind="mergesort")
            mask[idx[order[:keep]]] = True
    return mask


def class_labels(question: str, answer: str) -> tuple[str, str]:
    """(positive, negative) names: ("smooth", "not smooth"); a yes/no answer uses the question ("bar", "not bar")."""
    positive = question if answer == "yes" else f"no {question}" if answer == "no" else answer
    return positive, f"not {positive}"


def answer_phrase(question: str, answer: str) -> str:
    """How figures name the answer: "'smooth'", or "'yes' to bar" for a yes/no answer."""
    return f"'{answer}' to {question}" if answer in ("yes", "no") else f"'{answer}'"


def confusion_frame(actual: np.ndarray, predicted: np.ndarray, labels: tuple[str, str]) -> pd.DataFrame:
    """confusion.csv, DVC's long format: one row per galaxy, columns actual and predicted."""
    pos, neg = labels
    return pd.DataFrame({"actual": np.where(actual, pos, neg), "predicted": np.where(predicted, pos, neg)})


# ---------------------------------------------------------------------------------------------- metrics.json

def plain_json(obj: Any) -> Any:
    """JSON-safe plain Python: numpy scalars to float/int, NaN/inf to None."""
    if isinstance(obj, Mapping):
        return {str(k): plain_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain_json(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


def epsilon_key(eps: float) -> str:
    """metrics.json key for ε without a dot (DVC flattens nested keys with dots): 0.02 -> "eps_0p02"."""
    return f"eps_{eps:.2f}".replace(".", "p")


def _rho_key(kind: str) -> str:
    """rmse key of a kind's point rho: mc_mean_rho, t1_rho, deterministic_rho."""
    return "mc_mean_rho" if kind == "mc" else f"{kind}_rho"


def point_metrics(post: Posteriors, table: pd.DataFrame, truth: np.ndarray | None,
                  high_confidence: np.ndarray) -> dict[str, Any]:
    v = post.vote_fraction
    n = np.maximum(post.n, 1)
    metrics: dict[str, Any] = {
        "n_galaxies": len(post.k),
        "passes": int(post.rho.shape[1]),
        "rmse_vs_vote_fraction": {
            key: value for kind in KINDS for key, value in (
                (f"{kind}_most_likely", rmse(post.k_hat(kind) / n, v)), (_rho_key(kind), rmse(post.rho_of(kind), v)))
        },
    }
    if truth is not None:
        ok = np.isfinite(truth)
        t = truth[ok]
        metrics["rmse_vs_true_rho"] = {"n_galaxies": int(ok.sum())}
        for kind in KINDS:
            metrics["rmse_vs_true_rho"][f"{kind}_most_likely"] = rmse(post.k_hat(kind)[ok] / n[ok], t)
            metrics["rmse_vs_true_rho"][_rho_key(kind)] = rmse(post.rho_of(kind)[ok], t)
        metrics["rmse_vs_true_rho"]["observed_vote_fraction"] = rmse(v[ok], t)  # the binomial noise floor of k/N
    else:
        metrics["rmse_vs_true_rho"] = None
    rows = table.set_index(np.round(table["epsilon"].to_numpy(), 10))
    metrics["coverage_error"] = {
        kind: {epsilon_key(e): rows.loc[round(e, 10), f"coverage_error_{kind}"] for e in TABLE_EPSILONS
               if round(e, 10) in rows.index}
        for kind in (*KINDS, "truth") if f"coverage_error_{kind}" in rows.columns
    }
    actual, predicted = human_majority(post.k, post.n), model_majority(post.rho_mean)
    hc = high_confidence
    metrics["confusion"] = {"all": confusion(actual, predicted).as_dict(),
                            "high_confidence": confusion(actual[hc], predicted[hc]).as_dict()}
    metrics["roc_auc"] = {"all": auc(roc_curve(post.rho_mean, actual)),
                          "high_confidence": auc(roc_curve(post.rho_mean[hc], actual[hc])),
                          "t1_all": auc(roc_curve(post.rho_t1, actual)),
                          "deterministic_all": auc(roc_curve(post.rho_point, actual))}
    metrics["high_confidence_fraction"] = HIGH_CONFIDENCE_FRACTION
    return plain_json(metrics)


# ---------------------------------------------------------------------------------------------- learnability

def bin_labels(edges: Sequence[float] = VISIBILITY_EDGES) -> list[str]:
    """"0-0.1", "0.1-0.3", ...: one label per bin [edges[i], edges[i+1]) (the last bin closed)."""
    return [f"{lo:g}-{hi:g}" for lo, hi in zip(edges[:-1], edges[1:], strict=True)]


def bin_index(values: np.ndarray, edges: Sequence[float] = VISIBILITY_EDGES) -> np.ndarray:
    """Bin of each value, [edges[i], edges[i+1]) with the last bin closed; values outside are clipped into the
    end bins; -1 for NaN."""
    values, edges = np.asarray(values, float), np.asarray(edges, float)
    finite = np.isfinite(values)
    idx = np.searchsorted(edges, np.clip(np.where(finite, values, edges[0]), edges[0], edges[-1]), side="right") - 1
    return np.where(finite, np.minimum(idx, len(edges) - 2), -1)


def group_key(label: str) -> str:
    """metrics.json key of a learnability row, without dots: "arms 0.3-0.5" -> "arms_0p3_0p5"."""
    return label.replace(".", "p").replace("-", "_").replace(" ", "_")


def learnability_groups(n_galaxies: int, truth_class: np.ndarray | None = None,
                        visibility: Mapping[str, np.ndarray] | None = None,
                        edges: Sequence[float] = VISIBILITY_EDGES) -> dict[str, np.ndarray]:
    """Row label -> boolean mask over the test galaxies, in table order.

    ``all``; with ``truth_class`` one row per class (:data:`CLASS_ORDER` first); with ``visibility`` too
    ({feature: [G] visibility}), for each feature the disks in each bin, labelled ``"<feature> <lo>-<hi>"``.
    """
    groups = {"all": np.ones(n_galaxies, bool)}
    if truth_class is None:
        return groups
    truth_class = np.asarray(truth_class, object)
    present = {c for c in truth_class if isinstance(c, str)}
    for cls in [*CLASS_ORDER, *sorted(present - set(CLASS_ORDER))]:  # smooth and disk even when empty
        groups[cls] = truth_class == cls
    if visibility is not None:
        disk = truth_class == "disk"
        for feature, values in visibility.items():
            idx = bin_index(values, edges)
            for b, label in enumerate(bin_labels(edges)):
                groups[f"{feature} {label}"] = disk & (idx == b)
    return groups


def group_rmse(predicted: np.ndarray, truth: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """RMSE of ``predicted`` against ``truth`` within each group; masks [R, G] -> [R], NaN for an empty group.

    A NaN prediction makes its groups' RMSE NaN; it does not leak into groups without that galaxy.
    """
    sq = (np.asarray(predicted, float) - np.asarray(truth, float)) ** 2
    masks = np.asarray(masks, bool)
    count = masks.sum(axis=1)
    total = np.where(masks, sq[None, :], 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, np.sqrt(total / np.maximum(count, 1)), np.nan)


def class_mean_prediction(reference_class: np.ndarray, reference_rho: np.ndarray,
                          test_class: np.ndarray) -> np.ndarray:
    """The class-only predictor: per test galaxy the mean true rho of the reference galaxies of its class.

    NaN for a class (or a missing class) without reference galaxies.
    """
    means = pd.Series(np.asarray(reference_rho, float)).groupby(np.asarray(reference_class, object)).mean()
    return means.reindex(pd.Index(np.asarray(test_class, object))).to_numpy(float)


def learnability_table(truth: np.ndarray, predictions: Mapping[str, np.ndarray],
                       groups: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """learnability.csv: one row per group of galaxies with a finite truth.

    predictions: {"model", "t1", "class_only", "constant", "floor"} -> [G] values compared with truth [G].
    """
    truth = np.asarray(truth, float)
    masks = np.array([np.asarray(m, bool) for m in groups.values()]).reshape(len(groups), len(truth))
    masks &= np.isfinite(truth)[None, :]
    table = pd.DataFrame({"group": list(groups), "n_galaxies": masks.sum(axis=1)})
    for name in ("model", "t1", "class_only", "constant", "floor"):
        table[f"rmse_{name}"] = group_rmse(predictions[name], truth, masks)
    with np.errstate(invalid="ignore", divide="ignore"):
        table["gain_over_class"] = 1 - table["rmse_model"] / table["rmse_class_only"].where(
            table["rmse_class_only"] > 0)
    return table[list(LEARNABILITY_COLUMNS)]


def truth_frame(catalog_df: pd.DataFrame, ids: pd.Series) -> pd.DataFrame:
    """The catalog's truth columns without the ``truth_`` prefix (the sky table's columns) and ``survey``,
    one row per id in ``ids`` order (NaN rows for ids not in the catalog)."""
    from gzmorph.catalog import TRUTH_PREFIX

    cols = [c for c in catalog_df.columns if c.startswith(TRUTH_PREFIX)]
    frame = catalog_df[cols].rename(columns=lambda c: c[len(TRUTH_PREFIX):])
    if "survey" in catalog_df.columns:
        frame["survey"] = catalog_df["survey"]
    frame.index = catalog_df["id_str"].astype(str)
    return frame.reindex(ids.astype(str).to_numpy())


def feature_visibility(params: Mapping[str, Any], frame: pd.DataFrame,
                       features: Sequence[str] = VISIBILITY_FEATURES) -> dict[str, np.ndarray] | None:
    """{feature: [G] visibility} from :func:`gzmorph.sim.volunteers.visibility` of each galaxy's survey.

    None (with a warning) when the truth or the survey's settings ``simulate.surveys.<survey>`` are missing.
    """
    from gzmorph.sim.volunteers import visibility

    if "survey" not in frame.columns:
        log.warning("learnability: catalog has no survey column; no visibility bins")
        return None
    surveys = params.get("simulate", {}).get("surveys", {})
    out = {f: np.full(len(frame), np.nan) for f in features}
    survey = frame["survey"].to_numpy(object)
    for name in pd.unique(frame["survey"].dropna()):
        rows = survey == name
        if name not in surveys:
            log.warning("learnability: no simulate.surveys.%s in the settings; no visibility bins", name)
            return None
        g = {c: frame[c].to_numpy()[rows] for c in frame.columns if c != "survey"}
        try:
            vis = visibility(g, surveys[name])
        except (KeyError, ValueError, TypeError) as exc:
            log.warning("learnability: cannot compute feature visibility from the catalog's truth (%s: %s); "
                        "no visibility bins", type(exc).__name__, exc)
            return None
        for f in features:
            out[f][rows] = np.asarray(getattr(vis, f), float)
    return out


@dataclass(frozen=True)
class Learnability:
    table: pd.DataFrame  # learnability.csv
    has_truth: bool
    vote_cut: int  # N >= vote_cut for the reference galaxies (as for the test galaxies)
    reference_galaxies: int  # catalog galaxies not predicted that pass the cut, with a true rho


def learnability(params: Mapping[str, Any], question: str, predictions: pd.DataFrame, post: Posteriors,
                 catalog_df: pd.DataFrame | None, truth: np.ndarray | None) -> Learnability:
    """The learnability table of the module docstring for the predicted galaxies (rows of ``predictions``)."""
    cut_setting = predictions.attrs.get("min_total_votes")  # the cut predict applied, else the setting
    if cut_setting is None:
        cut_setting = params["train"]["questions"][question]["min_total_votes"]
    from gzmorph.inputs import effective_cut

    cut = effective_cut(int(cut_setting))
    g = len(post.k)
    if truth is None or catalog_df is None:
        nan = np.full(g, np.nan)
        table = learnability_table(nan, dict.fromkeys(("model", "t1", "class_only", "constant", "floor"), nan),
                                   learnability_groups(g))
        return Learnability(table, False, cut, 0)
    from gzmorph.catalog import answer_sum, rho_column
    from gzmorph.tree import get_tree

    answer = predictions.attrs.get("answer") or str(params["train"]["questions"][question]["answer"])
    ids = predictions["id_str"].astype(str)
    cat_ids = catalog_df["id_str"].astype(str)
    ref_rho = catalog_df[rho_column(question, answer)].to_numpy(float)
    reference = ~cat_ids.isin(set(ids)).to_numpy() & np.isfinite(ref_rho)
    tree = get_tree(str(catalog_df["tree"].iloc[0])) if "tree" in catalog_df.columns and len(catalog_df) else None
    if tree is not None and question in tree.question_names:
        reference &= answer_sum(catalog_df, tree.question(question)) >= cut  # N as the model saw it
    else:
        log.warning("learnability: catalog has no %s votes; reference galaxies not cut on N", question)
    if not reference.any():
        log.warning("learnability: no catalog galaxies outside the predictions pass N >= %d; "
                    "class-only and constant predictors are NaN", cut)
    frame = truth_frame(catalog_df, ids)
    truth_class = frame["morphology"].to_numpy(object) if "morphology" in frame.columns else None
    if truth_class is not None:
        ref_class = catalog_df["truth_morphology"].to_numpy(object)[reference]
        class_only = class_mean_prediction(ref_class, ref_rho[reference], truth_class)
    else:
        log.warning("learnability: catalog has no truth_morphology; no per-class rows")
        class_only = np.full(g, np.nan)
    vis = feature_visibility(params, frame) if truth_class is not None else None
    constant = np.full(g, ref_rho[reference].mean() if reference.any() else np.nan)
    preds = {"model": post.rho_mean, "t1": post.rho_t1, "class_only": class_only, "constant": constant,
             "floor": post.vote_fraction}
    table = learnability_table(truth, preds, learnability_groups(g, truth_class, vis))
    return Learnability(table, True, cut, int(reference.sum()))


def learnability_metrics(result: Learnability) -> dict[str, Any] | None:
    """metrics.json's learnability section (None without truth): headline rows all/smooth/disk in full,
    the visibility bins as visibility.<group_key> with n_galaxies, rmse_model, rmse_class_only and gain."""
    if not result.has_truth:
        return None
    full = [c for c in LEARNABILITY_COLUMNS if c != "group"]
    short = ["n_galaxies", "rmse_model", "rmse_class_only", "gain_over_class"]
    section: dict[str, Any] = {"vote_cut": result.vote_cut, "reference_galaxies": result.reference_galaxies}
    visibility: dict[str, Any] = {}
    for row in result.table.to_dict("records"):
        row["n_galaxies"] = int(row["n_galaxies"])
        binned = " " in row["group"]  # "arms 0.3-0.5"; the class rows and "all" are one word
        (visibility if binned else section)[group_key(row["group"])] = {c: row[c] for c in (short if binned
                                                                                             else full)}
    section["visibility"] = visibility
    return plain_json(section)


# ---------------------------------------------------------------------------------------------- figures

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def calibration_figure(table: pd.DataFrame, title: str) -> Figure:
    """Fig. 7: expected and actual counts against ε for MC, T = 1 and deterministic; coverage error beside it."""
    plt = _plt()
    fig, (ax, ax_err) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    e = table["epsilon"]
    for kind in KINDS:
        colour, name, lw = _COLOURS[kind], KIND_NAMES[kind], 2.2 if kind == "mc" else 1.4
        ax.plot(e, table[f"expected_{kind}"], color=colour, lw=lw, label=f"{name}: expected")
        ax.plot(e, table[f"actual_{kind}"], color=colour, lw=lw, ls="--", label=f"{name}: actual")
        ax_err.plot(e, 100 * table[f"coverage_error_{kind}"], color=colour, lw=lw, label=name)
    if "coverage_error_truth" in table.columns:
        ax_err.plot(e, 100 * table["coverage_error_truth"], color="grey", lw=1.4, ls=":",
                    label="true ρ, binomial (oracle)")
    ax.set_xlabel("maximum vote-fraction error ε")
    ax.set_ylabel("galaxies with |k/N − k̂/N| < ε (count)")
    ax.set_title("expected vs actual counts")
    ax.legend(fontsize=8)
    ax_err.axhline(0, color="grey", lw=0.8)
    ax_err.set_xlabel("maximum vote-fraction error ε")
    ax_err.set_ylabel("coverage error (expected − actual) / actual (%)")
    ax_err.set_title("coverage error (> 0: overconfident)")
    ax_err.legend(fontsize=8)
    for a in (ax, ax_err):
        a.grid(alpha=0.3)
        a.set_xlim(0, float(e.max()))
    fig.suptitle(title)
    return fig


def roc_figure(curves: Mapping[str, RocCurve], title: str) -> Figure:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 5), constrained_layout=True)
    for (name, curve), style in zip(curves.items(), ("-", "--", ":"), strict=False):
        area = auc(curve)
        ax.plot(curve.fpr, curve.tpr, ls=style, lw=2, drawstyle="default",
                label=f"{name} (AUC = {area:.3f})" if math.isfinite(area) else f"{name} (AUC undefined: one class)")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    ax.set(xlim=(-0.01, 1.0), ylim=(0, 1.01), xlabel="false-positive rate", ylabel="true-positive rate", title=title)
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return fig


def _confusion_panel(ax: Any, counts: Confusion, labels: tuple[str, str], title: str) -> None:
    pos, neg = labels
    matrix = np.array([[counts.true_positive, counts.false_negative], [counts.false_positive, counts.true_negative]])
    ax.imshow(matrix, cmap="Blues", vmin=0, vmax=max(1, matrix.max()))
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, str(value), ha="center", va="center", fontsize=13,
                color="white" if value > matrix.max() / 2 else "black")
    ax.set_xticks([0, 1], [pos, neg])
    ax.set_yticks([0, 1], [pos, neg])
    ax.set_xlabel("model (mean ρ̂ ≥ 0.5)")
    ax.set_ylabel("volunteers (k/N > 0.5)")
    acc = f"{100 * counts.accuracy:.1f} %" if counts.n else "n/a"
    ax.set_title(f"{title}\n{counts.n} galaxies, accuracy {acc}", fontsize=10)


def confusion_figure(all_counts: Confusion, hc_counts: Confusion, labels: tuple[str, str], title: str) -> Figure:
    """Fig. 10: majority responses for all galaxies and for the most confident ~8 % of each predicted class."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.3), constrained_layout=True)
    _confusion_panel(axes[0], all_counts, labels, "all test galaxies")
    _confusion_panel(axes[1], hc_counts, labels,
                     f"most confident {100 * HIGH_CONFIDENCE_FRACTION:.0f} % of each predicted class")
    fig.suptitle(title)
    return fig


def distributions_figure(post: Posteriors, answer: str, title: str) -> Figure:
    """Fig. 8: predicted vs observed distributions of rho (observed proxy k/N) and of k."""
    plt = _plt()
    fig, (ax_rho, ax_k) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    bins = np.linspace(0, 1, 21)
    ax_rho.hist(post.vote_fraction, bins=bins, color="lightgrey", edgecolor="grey", label="observed k/N")
    ax_rho.hist(post.rho_mean, bins=bins, histtype="step", lw=2, color=_COLOURS["mc"], label="predicted ρ̂ (MC mean)")
    ax_rho.hist(post.rho_t1, bins=bins, histtype="step", lw=1.5, ls=":", color=_COLOURS["t1"],
                label="predicted ρ̂ (T = 1: pass 0)")
    ax_rho.hist(post.rho_point, bins=bins, histtype="step", lw=1.5, ls="--", color=_COLOURS["deterministic"],
                label="predicted ρ̂ (deterministic)")
    ax_rho.set(xlabel=f"vote fraction ρ answering {answer}", ylabel="galaxies per bin (count)",
               title="typical vote fraction ρ")
    kbins = np.arange(-0.5, int(post.n.max(initial=0)) + 1.5, 1.0)
    ax_k.hist(post.k, bins=kbins, color="lightgrey", edgecolor="grey", label="observed k")
    ax_k.hist(post.k_hat_mc, bins=kbins, histtype="step", lw=2, color=_COLOURS["mc"], label="most likely k̂ (MC)")
    ax_k.hist(post.k_hat("t1"), bins=kbins, histtype="step", lw=1.5, ls=":", color=_COLOURS["t1"],
              label="most likely k̂ (T = 1)")
    ax_k.hist(post.k_hat("deterministic"), bins=kbins, histtype="step", lw=1.5, ls="--",
              color=_COLOURS["deterministic"], label="most likely k̂ (deterministic)")
    ax_k.set(xlabel=f"k volunteers answering {answer}", ylabel="galaxies per k (count)", title="vote count k")
    for a in (ax_rho, ax_k):
        a.legend(fontsize=8)
        a.grid(alpha=0.3)
    fig.suptitle(title)
    return fig


def example_rows(n_galaxies: int, seed: int, count: int = N_POSTERIOR_EXAMPLES) -> np.ndarray:
    """Random (seeded) distinct galaxy indices for the posterior figure, in increasing order."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_galaxies, size=min(count, n_galaxies), replace=False))


def posteriors_figure(post: Posteriors, rows: np.ndarray, answer: str, ids: Sequence[str],
                      images: Mapping[str, np.ndarray] | None = None) -> Figure:
    """Figs. 4-5: per galaxy the image as the network saw it, the T = 1 (with the deterministic) and the MC
    posterior over k."""
    from scipy.stats import binom

    plt = _plt()
    with_images = images is not None
    ncols = 3 if with_images else 2
    fig, axes = plt.subplots(len(rows), ncols, figsize=(3.2 * ncols + 1.5, 2.1 * len(rows) + 0.6),
                             squeeze=False, constrained_layout=True,
                             gridspec_kw={"width_ratios": [0.7, 1, 1] if with_images else [1, 1]})
    for r, i in enumerate(rows):
        n, k = int(post.n[i]), int(post.k[i])
        kk = np.arange(n + 1)
        col = 0
        if with_images:
            ax = axes[r, 0]
            img = images.get(str(ids[i]))
            if img is not None:
                ax.imshow(np.squeeze(img), cmap="gray", vmin=0, vmax=1)
            else:
                ax.text(0.5, 0.5, "image not in shards", ha="center", va="center", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_ylabel(str(ids[i]), fontsize=7)
            col = 1
        ax_s, ax_m = axes[r, col], axes[r, col + 1]
        ax_s.bar(kk, post.pmf_t1[i, : n + 1], width=0.9, color=_COLOURS["t1"], alpha=0.7,
                 label=f"T = 1 (pass 0), ρ̂ = {post.rho_t1[i]:.2f}")
        ax_s.plot(kk, post.pmf_deterministic[i, : n + 1], color=_COLOURS["deterministic"], lw=1, marker=".",
                  ms=3, label=f"deterministic, ρ̂ = {post.rho_point[i]:.2f}")
        for rho_t in post.rho[i]:
            ax_m.plot(kk, binom.pmf(kk, n, rho_t), color="grey", lw=0.5, alpha=0.5)
        ax_m.plot(kk, post.pmf_mc[i, : n + 1], color=_COLOURS["mc"], lw=2.2,
                  label=f"MC mixture of {post.rho.shape[1]}, mean ρ̂ = {post.rho_mean[i]:.2f}")
        top = max(post.pmf_t1[i].max(), post.pmf_deterministic[i].max(), post.pmf_mc[i].max(),
                  binom.pmf(kk, n, post.rho[i][:, None]).max()) * 1.1
        for ax in (ax_s, ax_m):
            ax.axvline(k, color=_OBS_COLOUR, lw=1.8, label=f"observed k = {k} of N = {n}")
            ax.set_xlim(-0.5, n + 0.5)
            ax.set_ylim(0, top)
            ax.set_ylabel("p(k)")
            ax.legend(fontsize=6.5, loc="best")
            ax.set_xlabel(f"k volunteers answering {answer} out of N = {n}", fontsize=8)
    titles = (["image as the network sees it"] if with_images else []) + [
        "posterior, T = 1: one stochastic pass\n(paper's 'without MC'; black dots: deterministic)",
        "posterior, MC dropout\n(grey: each pass)"]
    for c, t in enumerate(titles):
        axes[0, c].set_title(t, fontsize=9)
    return fig


# ---------------------------------------------------------------------------------------------- images

def network_images(params: dict[str, Any], question: str, shard_dir: str | Path, model_path: str | Path,
                   ids: Sequence[str], threads: int | None = None) -> dict[str, np.ndarray]:
    """{id_str: float [S, S, 1] in [0, 1]}: the test galaxies ``ids`` through the model's deterministic preprocess."""
    from gzmorph.inputs import question_spec, vote_dataset
    from gzmorph.runtime import configure_threads
    from gzmorph.shards import read_manifest
    from gzmorph.train import load_model

    configure_threads(threads)
    manifest = read_manifest(shard_dir)
    spec = question_spec(params, question, manifest["tree"])
    preprocess = load_model(model_path).get_layer("preprocess")
    wanted = {str(i) for i in ids}
    out: dict[str, np.ndarray] = {}
    for images, _counts, batch_ids in vote_dataset(shard_dir, "test", spec, 256, with_ids=True, threads=threads):
        names = [b.decode() for b in batch_ids.numpy()]
        pick = [j for j, name in enumerate(names) if name in wanted]
        if pick:
            seen = preprocess(images.numpy()[pick], training=False).numpy()
            out.update({names[j]: seen[m] for m, j in enumerate(pick)})
        if len(out) == len(wanted):
            break
    missing = wanted - set(out)
    if missing:
        log.warning("%d example galaxies not found in the %s test split: %s", len(missing), shard_dir,
                    ", ".join(sorted(missing)))
    return out


# ---------------------------------------------------------------------------------------------- stage

def truth_for(catalog_df: pd.DataFrame | None, ids: pd.Series, question: str, answer: str) -> np.ndarray | None:
    """Simulated true rho per prediction row (NaN where the id is missing); None without a truth column."""
    from gzmorph.catalog import rho_column

    column = rho_column(question, answer)
    if catalog_df is None or column not in catalog_df.columns:
        return None
    truth = catalog_df.set_index(catalog_df["id_str"].astype(str))[column]
    values = truth.reindex(ids.astype(str)).to_numpy(float)
    if np.isnan(values).any():
        log.warning("%d of %d predicted galaxies have no %s in the catalog", int(np.isnan(values).sum()),
                    len(values), column)
    return values


def evaluate(params: dict[str, Any], question: str, predictions: str | Path, out_dir: str | Path, *,
             catalog: str | Path | None = None, shards: str | Path | None = None, model: str | Path | None = None,
             threads: int | None = None, calibration: str | Path | None = None) -> dict[str, Any]:
    """Write every evaluation output for one question into ``out_dir``; return metrics.json's content.

    ``calibration`` places the calibration table elsewhere (default ``out_dir/calibration.csv``).
    """
    from gzmorph import catalog as catalog_mod
    from gzmorph import io
    from gzmorph.predict import load_predictions

    if (shards is None) != (model is None):
        raise UserError("--shards and --model go together (they only draw the images of posteriors.png)")
    df, rho = load_predictions(predictions)
    if not len(df):
        raise UserError(f"{predictions}: no galaxies to evaluate")
    if df.attrs.get("question", question) != question:
        raise UserError(f"{predictions}: predictions are for {df.attrs['question']!r}, not {question!r}")
    answer = df.attrs.get("answer") or str(params["train"]["questions"][question]["answer"])
    out = Path(out_dir)
    post = posteriors(df["votes"].to_numpy(), df["total_votes"].to_numpy(), rho, df["rho_point"].to_numpy())
    catalog_df = catalog_mod.load(catalog) if catalog is not None else None
    truth = truth_for(catalog_df, df["id_str"], question, answer)

    table = calibration_table(post, truth=truth)
    hc = high_confidence_mask(post.rho_mean)
    metrics = {"question": question, "answer": answer, "smoke_run": bool(params.get("smoke_run", False)),
               **point_metrics(post, table, truth, hc)}
    learn = learnability(params, question, df, post, catalog_df, truth)
    metrics["learnability"] = learnability_metrics(learn)
    labels = class_labels(question, answer)
    actual, predicted = human_majority(post.k, post.n), model_majority(post.rho_mean)
    title = f"{question}: {answer_phrase(question, answer)}, {len(df)} test galaxies"
    if metrics["smoke_run"]:
        title += " (smoke run: not for science)"

    io.write_text(calibration or out / "calibration.csv", table.to_csv(index=False, float_format="%.6g"))
    io.write_text(out / "learnability.csv", learn.table.to_csv(index=False, float_format="%.6g"))
    io.write_json(out / "metrics.json", metrics)
    io.write_text(out / "confusion.csv", confusion_frame(actual, predicted, labels).to_csv(index=False))
    io.save_figure(calibration_figure(table, f"calibration, {title}"), out / "calibration.png", dpi=120)
    io.save_figure(confusion_figure(confusion(actual, predicted), confusion(actual[hc], predicted[hc]), labels,
                                    f"majority responses, {title}"), out / "confusion.png", dpi=120)
    curves = {"all galaxies": roc_curve(post.rho_mean, actual),
              f"most confident {100 * HIGH_CONFIDENCE_FRACTION:.0f} % per class": roc_curve(post.rho_mean[hc],
                                                                                            actual[hc])}
    io.save_figure(roc_figure(curves, f"ROC, mean ρ̂ vs majority\n{title}"), out / "roc.png", dpi=120)
    phrase = answer_phrase(question, answer)
    io.save_figure(distributions_figure(post, phrase, f"predicted vs observed, {title}"), out / "distributions.png",
                   dpi=120)
    rows = example_rows(len(df), int(params["seed"]))
    ids = df["id_str"].astype(str).to_numpy()
    images = network_images(params, question, shards, model, ids[rows], threads) if shards is not None else None
    io.save_figure(posteriors_figure(post, rows, phrase, ids, images), out / "posteriors.png", dpi=110)
    rmse_v, cov = metrics["rmse_vs_vote_fraction"], metrics["coverage_error"]
    log.info("%s: %d galaxies, RMSE(k̂/N) MC %s T=1 %s deterministic %s; coverage error at eps "
             "0.02/0.05/0.10/0.20 MC %s T=1 %s deterministic %s -> %s", question, len(df),
             *(_num(rmse_v[f"{kind}_most_likely"]) for kind in KINDS), *(_fmt(cov[kind]) for kind in KINDS), out)
    log.info("%s", learnability_summary(question, learn))
    return metrics


def learnability_summary(question: str, result: Learnability) -> str:
    """One log line: model vs class-only RMSE against the true rho, for all galaxies and for disks."""
    if not result.has_truth:
        return f"{question} learnability: no simulated truth in the catalog (learnability.csv: NaN)"
    rows = result.table.set_index("group")
    parts = []
    for group in ("all", "disk"):
        if group in rows.index:
            r = rows.loc[group]
            gain = "nan" if not math.isfinite(r["gain_over_class"]) else f"{100 * r['gain_over_class']:+.0f}%"
            parts.append(f"{group} ({int(r['n_galaxies'])}) model {_num(r['rmse_model'])} vs class-only "
                         f"{_num(r['rmse_class_only'])} (gain {gain})")
    return f"{question} learnability, RMSE vs true rho: " + "; ".join(parts)


def _num(value: float | None) -> str:
    return "nan" if value is None or not math.isfinite(value) else f"{value:.3f}"


def _fmt(values: Mapping[str, float | None]) -> str:
    return "/".join("nan" if v is None else f"{100 * v:.1f}%" for v in values.values())


def run(args: argparse.Namespace) -> None:
    from gzmorph import config

    params = config.load(args.params)
    evaluate(params, args.question, args.predictions, args.out_dir, catalog=args.catalog, shards=args.shards,
             model=args.model, threads=args.threads, calibration=args.calibration)


def register(sub: argparse._SubParsersAction) -> None:
    from gzmorph import config

    p = sub.add_parser("evaluate", help="calibration, point metrics and figures of the test-set posteriors")
    config.add_params_argument(p)
    p.add_argument("--question", required=True, help="question under train.questions (e.g. bar)")
    p.add_argument("--predictions", required=True, help="predictions parquet from `gzmorph predict`")
    p.add_argument("--catalog", default=None,
                   help="vote catalog; its truth_* columns give rmse_vs_true_rho and the learnability table")
    p.add_argument("--shards", default=None, help="shard directory (with --model: images in posteriors.png)")
    p.add_argument("--model", default=None, help="trained model (.keras) whose preprocess shows the images")
    p.add_argument("--out-dir", required=True, help="output directory for the CSVs, metrics.json and figures")
    p.add_argument("--calibration", default=None, help="calibration table CSV (default: <out-dir>/calibration.csv)")
    config.add_threads_argument(p, "TensorFlow when reading images")
    p.set_defaults(func=run)

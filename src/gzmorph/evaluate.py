"""``gzmorph evaluate``: calibration and point metrics of the test-set posteriors (Walmsley et al. 2020, §2.7).

Input: the predictions parquet of ``gzmorph predict`` (per galaxy the observed k of N, the T MC-dropout
predictions rho_t and the deterministic rho_point), the vote catalog (for the simulated truth
``truth_rho_<q>_<a>`` where it exists) and, optionally, the shards and model (only to show each example
galaxy as the network sees it).  Two posteriors over k are compared throughout:

- **MC**: the mixture (1/T) sum_t Bin(k | rho_t, N) (eq. 10, :func:`gzmorph.posterior.mixture_pmf`);
- **single**: one network without MC dropout, Bin(k | rho_point, N) (eq. 3, :func:`~gzmorph.posterior.single_pass_pmf`).

Calibration (eqs. 11-13), implemented as the paper writes them:

- The model prediction k̂_i (v̂_i = k̂_i / N_i) is the **most likely vote count**, the mode of that
  posterior (§2.7.1, "reducing our posteriors to the most likely vote count k̂"): the MC mixture's mode
  for MC, the binomial's mode for single.  Ties go to the smallest k (numpy argmax).
- The window uses the galaxy's own N_i and **strict** bounds on both sides, k̂_i - N_i ε < j < k̂_i + N_i ε,
  i.e. |j/N_i - v̂_i| < ε.  A bound landing exactly on an integer excludes it (ε = 0.5 with N = 2 is still
  only j = k̂); a 1e-9 tolerance stops float round-off (0.1 * 30 = 3.0000000000000004) from admitting it.
- C_expected = sum_i sum_{j in window_i} p(j | ρ̂_i, N_i) (eq. 11); C_actual = #{i : k_i in window_i} (eq. 12).
- Coverage error = (C_expected - C_actual) / C_actual (eq. 13), a fraction (0.165 for the paper's 16.5 %);
  positive means overconfident.  At ε = 0 the window is empty, both counts are 0 and the error is NaN.

Point metrics (§2.7.1): RMSE of the most likely vote fraction k̂/N and of the mean rho against the
observed k/N, and against the simulated true rho where the catalog has it.  Majority responses: humans
answer ``<answer>`` when k/N > 0.5 and the model does when mean rho >= 0.5 (the paper's "ρ̂ < 0.5" for the
other class); the ROC curve thresholds the mean rho over the MC passes (Fig. 9).  The "high-confidence"
subset (Figs. 9-10; K+18 take the most confident ~7.7 % of spirals and ~9.3 % of ellipticals, the paper ~8 %
of each bar class) is, within each *predicted* class, the ``HIGH_CONFIDENCE_FRACTION`` of galaxies with the
largest |mean rho - 0.5| (at least one per non-empty class): it uses only the prediction, never the votes.

Outputs in ``--out-dir``, each written atomically:

- ``calibration.csv``: ``epsilon, expected_mc, actual_mc, coverage_error_mc, expected_single, actual_single,
  coverage_error_single`` for ε = 0, 0.01, ..., 0.5 (which includes the tables' 0.02, 0.05, 0.10, 0.20);
- ``metrics.json``: n_galaxies, passes, rmse_vs_vote_fraction, rmse_vs_true_rho (null without truth),
  coverage_error.{mc,single}.eps_0p02 ... eps_0p20 (ε keys without dots: DVC flattens keys with dots),
  confusion.{all,high_confidence} counts and accuracy, roc_auc; NaN is written as null;
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
CALIBRATION_COLUMNS = ("epsilon", "expected_mc", "actual_mc", "coverage_error_mc",
                       "expected_single", "actual_single", "coverage_error_single")
HIGH_CONFIDENCE_FRACTION = 0.08
N_POSTERIOR_EXAMPLES = 6
_WINDOW_TOL = 1e-9
_MC_COLOUR, _SINGLE_COLOUR, _OBS_COLOUR = "tab:green", "black", "tab:red"


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
    expected = np.where(empty, 0.0, inside).sum(axis=0)
    hit = (np.abs(k - k_hat)[:, None] <= radius) & ~empty
    return Coverage(eps, expected, hit.sum(axis=0))


@dataclass(frozen=True)
class Posteriors:
    """Everything the metrics and figures need, per galaxy (arrays of length G)."""

    k: np.ndarray  # observed votes for the answer
    n: np.ndarray  # volunteers asked
    rho: np.ndarray  # [G, T] MC-dropout predictions
    rho_point: np.ndarray  # deterministic prediction
    pmf_mc: np.ndarray  # [G, max N + 1] eq. 10
    pmf_single: np.ndarray  # [G, max N + 1] eq. 3

    @property
    def rho_mean(self) -> np.ndarray:
        return self.rho.mean(axis=1)

    @property
    def k_hat_mc(self) -> np.ndarray:
        return np.argmax(self.pmf_mc, axis=1)

    @property
    def k_hat_single(self) -> np.ndarray:
        return np.argmax(self.pmf_single, axis=1)

    @property
    def vote_fraction(self) -> np.ndarray:
        return self.k / np.maximum(self.n, 1)


def posteriors(k: np.ndarray, n: np.ndarray, rho: np.ndarray, rho_point: np.ndarray) -> Posteriors:
    k, n = np.asarray(k, np.int64), np.asarray(n, np.int64)
    rho, rho_point = np.asarray(rho, np.float64), np.asarray(rho_point, np.float64)
    n_max = int(n.max(initial=0))
    return Posteriors(k, n, rho, rho_point, mixture_pmf(rho, n, n_max), single_pass_pmf(rho_point, n, n_max))


def calibration_table(post: Posteriors, epsilons: Sequence[float] | np.ndarray | None = None) -> pd.DataFrame:
    """calibration.csv: one row per ε with expected/actual counts and coverage error, MC and single."""
    eps = epsilon_grid() if epsilons is None else np.asarray(epsilons, float)
    mc = coverage_counts(post.pmf_mc, post.k, post.n, eps)
    single = coverage_counts(post.pmf_single, post.k, post.n, eps)
    return pd.DataFrame({
        "epsilon": eps, "expected_mc": mc.expected, "actual_mc": mc.actual, "coverage_error_mc": mc.coverage_error,
        "expected_single": single.expected, "actual_single": single.actual,
        "coverage_error_single": single.coverage_error,
    }, columns=list(CALIBRATION_COLUMNS))


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

def _plain(obj: Any) -> Any:
    """JSON-safe plain Python: numpy scalars to float/int, NaN/inf to None."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
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


def point_metrics(post: Posteriors, table: pd.DataFrame, truth: np.ndarray | None,
                  high_confidence: np.ndarray) -> dict[str, Any]:
    v = post.vote_fraction
    n = np.maximum(post.n, 1)
    metrics: dict[str, Any] = {
        "n_galaxies": len(post.k),
        "passes": int(post.rho.shape[1]),
        "rmse_vs_vote_fraction": {
            "mc_most_likely": rmse(post.k_hat_mc / n, v), "mc_mean_rho": rmse(post.rho_mean, v),
            "single_most_likely": rmse(post.k_hat_single / n, v), "single_rho": rmse(post.rho_point, v),
        },
    }
    if truth is not None:
        ok = np.isfinite(truth)
        t = truth[ok]
        metrics["rmse_vs_true_rho"] = {
            "n_galaxies": int(ok.sum()),
            "mc_mean_rho": rmse(post.rho_mean[ok], t), "single_rho": rmse(post.rho_point[ok], t),
            "mc_most_likely": rmse(post.k_hat_mc[ok] / n[ok], t),
            "single_most_likely": rmse(post.k_hat_single[ok] / n[ok], t),
            "observed_vote_fraction": rmse(v[ok], t),  # the binomial noise floor of k/N itself
        }
    else:
        metrics["rmse_vs_true_rho"] = None
    rows = table.set_index(np.round(table["epsilon"].to_numpy(), 10))
    metrics["coverage_error"] = {
        kind: {epsilon_key(e): rows.loc[round(e, 10), f"coverage_error_{kind}"] for e in TABLE_EPSILONS
               if round(e, 10) in rows.index}
        for kind in ("mc", "single")
    }
    actual, predicted = human_majority(post.k, post.n), model_majority(post.rho_mean)
    hc = high_confidence
    metrics["confusion"] = {"all": confusion(actual, predicted).as_dict(),
                            "high_confidence": confusion(actual[hc], predicted[hc]).as_dict()}
    metrics["roc_auc"] = {"all": auc(roc_curve(post.rho_mean, actual)),
                          "high_confidence": auc(roc_curve(post.rho_mean[hc], actual[hc])),
                          "single_all": auc(roc_curve(post.rho_point, actual))}
    metrics["high_confidence_fraction"] = HIGH_CONFIDENCE_FRACTION
    return _plain(metrics)


# ---------------------------------------------------------------------------------------------- figures

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def calibration_figure(table: pd.DataFrame, title: str) -> Figure:
    """Fig. 7: expected and actual counts against ε for MC and single; coverage error beside it."""
    plt = _plt()
    fig, (ax, ax_err) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    e = table["epsilon"]
    for kind, colour, name in (("mc", _MC_COLOUR, "MC dropout"), ("single", _SINGLE_COLOUR, "single network")):
        ax.plot(e, table[f"expected_{kind}"], color=colour, lw=2, label=f"{name}: expected")
        ax.plot(e, table[f"actual_{kind}"], color=colour, lw=2, ls="--", label=f"{name}: actual")
        ax_err.plot(e, 100 * table[f"coverage_error_{kind}"], color=colour, lw=2, label=name)
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
    ax_rho.hist(post.rho_mean, bins=bins, histtype="step", lw=2, color=_MC_COLOUR, label="predicted ρ̂ (MC mean)")
    ax_rho.hist(post.rho_point, bins=bins, histtype="step", lw=1.5, ls="--", color=_SINGLE_COLOUR,
                label="predicted ρ̂ (single network)")
    ax_rho.set(xlabel=f"vote fraction ρ answering {answer}", ylabel="galaxies per bin (count)",
               title="typical vote fraction ρ")
    kbins = np.arange(-0.5, int(post.n.max(initial=0)) + 1.5, 1.0)
    ax_k.hist(post.k, bins=kbins, color="lightgrey", edgecolor="grey", label="observed k")
    ax_k.hist(post.k_hat_mc, bins=kbins, histtype="step", lw=2, color=_MC_COLOUR, label="most likely k̂ (MC)")
    ax_k.hist(post.k_hat_single, bins=kbins, histtype="step", lw=1.5, ls="--", color=_SINGLE_COLOUR,
              label="most likely k̂ (single network)")
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
    """Figs. 4-5: per galaxy the image as the network saw it, the single-network and the MC posterior over k."""
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
        ax_s.bar(kk, post.pmf_single[i, : n + 1], width=0.9, color=_SINGLE_COLOUR, alpha=0.7,
                 label=f"single network, ρ̂ = {post.rho_point[i]:.2f}")
        for rho_t in post.rho[i]:
            ax_m.plot(kk, binom.pmf(kk, n, rho_t), color="grey", lw=0.5, alpha=0.5)
        ax_m.plot(kk, post.pmf_mc[i, : n + 1], color=_MC_COLOUR, lw=2.2,
                  label=f"MC mixture of {post.rho.shape[1]}, mean ρ̂ = {post.rho_mean[i]:.2f}")
        top = max(post.pmf_single[i].max(), post.pmf_mc[i].max(), binom.pmf(kk, n, post.rho[i][:, None]).max()) * 1.1
        for ax in (ax_s, ax_m):
            ax.axvline(k, color=_OBS_COLOUR, lw=1.8, label=f"observed k = {k} of N = {n}")
            ax.set_xlim(-0.5, n + 0.5)
            ax.set_ylim(0, top)
            ax.set_ylabel("p(k)")
            ax.legend(fontsize=6.5, loc="best")
            ax.set_xlabel(f"k volunteers answering {answer} out of N = {n}", fontsize=8)
    titles = (["image as the network sees it"] if with_images else []) + [
        "posterior, single network (no MC dropout)", "posterior, MC dropout (grey: each pass)"]
    for c, t in enumerate(titles):
        axes[0, c].set_title(t, fontsize=9)
    return fig


# ---------------------------------------------------------------------------------------------- images

def network_images(params: dict[str, Any], question: str, shard_dir: str | Path, model_path: str | Path,
                   ids: Sequence[str], threads: int | None = None) -> dict[str, np.ndarray]:
    """{id_str: float [S, S, 1] in [0, 1]}: the test galaxies ``ids`` through the model's deterministic preprocess."""
    from gzmorph.shards import read_manifest
    from gzmorph.train import configure_threads, load_model, question_spec, vote_dataset

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

    table = calibration_table(post)
    hc = high_confidence_mask(post.rho_mean)
    metrics = {"question": question, "answer": answer, **point_metrics(post, table, truth, hc)}
    labels = class_labels(question, answer)
    actual, predicted = human_majority(post.k, post.n), model_majority(post.rho_mean)
    title = f"{question}: {answer_phrase(question, answer)}, {len(df)} test galaxies"

    io.write_text(calibration or out / "calibration.csv", table.to_csv(index=False, float_format="%.6g"))
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
    mc, single = metrics["coverage_error"]["mc"], metrics["coverage_error"]["single"]
    log.info("%s: %d galaxies, RMSE(k̂/N) MC %.3f single %.3f; coverage error at eps 0.02/0.05/0.10/0.20 "
             "MC %s single %s -> %s", question, len(df), metrics["rmse_vs_vote_fraction"]["mc_most_likely"],
             metrics["rmse_vs_vote_fraction"]["single_most_likely"], _fmt(mc), _fmt(single), out)
    return metrics


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
    p.add_argument("--catalog", default=None, help="vote catalog; its truth_rho_* column gives rmse_vs_true_rho")
    p.add_argument("--shards", default=None, help="shard directory (with --model: images in posteriors.png)")
    p.add_argument("--model", default=None, help="trained model (.keras) whose preprocess shows the images")
    p.add_argument("--out-dir", required=True, help="output directory for the CSVs, metrics.json and figures")
    p.add_argument("--calibration", default=None, help="calibration table CSV (default: <out-dir>/calibration.csv)")
    config.add_threads_argument(p, "TensorFlow when reading images")
    p.set_defaults(func=run)

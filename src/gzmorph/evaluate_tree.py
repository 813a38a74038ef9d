"""``gzmorph evaluate-tree``: every question of a whole-tree (Dirichlet-multinomial) model, at a glance.

Input: the posterior catalog of a whole-tree model (per galaxy ``id_str`` and per answer
``<q>_<a>_concentration``, the T MC-dropout Dirichlet concentrations; optionally
``<q>_<a>_concentration_deterministic``, one value from the network without dropout), and the galaxies'
votes, from the vote catalog (which also gives the simulated truth ``truth_rho_<q>_<a>``) or the shards.

Per question q with answers a (N = the answers' sum, :func:`gzmorph.catalog.answer_sum`):

- **calibration** (Walmsley et al. 2020 eqs. 11-13, :func:`gzmorph.evaluate.coverage_counts`) of each
  answer's vote count k_a, whose posterior is the T-mixture of beta-binomials BetaBin(N, alpha_a,
  A - alpha_a), the exact marginal of each pass's DM (:func:`gzmorph.posterior.answer_mixture_pmf`).
  Three posteriors as in ``gzmorph evaluate``: ``mc`` (all T passes), ``t1`` (pass 0 alone, the paper's
  "without MC"), ``deterministic`` (when the catalog has it); on simulated data also ``truth``, the oracle
  Bin(k_a | N, true rho_a) (what a perfect fraction predictor reaches: the simulated votes are
  over-dispersed, so it is itself overconfident by that much).  The question's coverage error pools its
  answers: (sum_a C_expected - sum_a C_actual) / sum_a C_actual.  Galaxies with N >= ``min_votes``.
- **RMSE** of the expected vote fraction mean_t alpha_a / A against k_a / N, pooled over the answers and
  galaxies with N >= ``min_votes`` (>= 1: a question nobody answered has no k/N); per answer in
  per_answer.csv.  With simulated truth, also against the true rho (``truth_rho_<q>_<a>``, every answer
  that has the column; which ones is recorded) on the same galaxies, beside the vote-noise floor
  RMSE(k/N, rho).
- **majority answer** (the term project's Tables 3-4): confusion matrix of the volunteers' most-voted
  answer (rows) against the model's largest expected fraction (columns), for galaxies with
  N >= ``confusion_min_votes``; ties go to the earlier answer (numpy argmax) on both sides.  Agreement is
  the diagonal's share.

Galleries (the term project's §8.3, Fig. 7), one PNG per question in ``galleries/``: per answer the
``gallery_size`` galaxies with the highest expected fraction for it among galaxies volunteers were asked
(N >= 1), best first, and a last row with the most uncertain: the largest posterior std of the vote
fractions, sqrt(sum_a Var[rho_a]) under the T-mixture of Dirichlets (:func:`gzmorph.posterior.fraction_std`:
both volunteer disagreement and network doubt).  Images are the shards' pixels (every split is searched).

Outputs in ``--out-dir`` (e.g. ``results/evaluation/tree/<survey>/``), each written atomically:
``metrics.json`` (per question: n_galaxies, rmse_vs_vote_fraction.{mc,t1,deterministic},
rmse_vs_true_rho (null without truth), coverage_error.<kind>.eps_0p02 ... eps_0p20, confusion with labels,
matrix and agreement), ``per_question.csv``, ``per_answer.csv``, ``calibration.csv`` (question, answer,
epsilon, expected/actual/coverage_error per kind; answer ``all`` is the pooled question),
``confusion/<question>.csv`` (volunteers' answer in rows, model's in columns), ``questions.png`` (one
panel per question: expected fraction against k/N with the question's figures) and ``galleries/``.
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from gzmorph.config import UserError
from gzmorph.evaluate import (
    TABLE_EPSILONS,
    Coverage,
    coverage_counts,
    epsilon_grid,
    epsilon_key,
    plain_json,
    rmse,
    truth_for,
)
from gzmorph.posterior import answer_mixture_pmf, expected_fractions, fraction_std, single_pass_pmf
from gzmorph.tree_catalog import load_concentrations, load_deterministic

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from gzmorph.tree import DecisionTree, Question

log = logging.getLogger(__name__)

MIN_VOTES = 1
CONFUSION_MIN_VOTES = 3
GALLERY_SIZE = 8
SCATTER_POINTS = 3000  # per question panel, a seeded subsample: the figure stays legible for a whole survey
_PMF_CHUNK = 4096  # galaxies per pmf chunk: [chunk, max N + 1] float64 stays a few MiB


# ---------------------------------------------------------------------------------------------- inputs

def catalog_counts(catalog_df: pd.DataFrame, tree: DecisionTree, ids: Sequence[str], source: str) -> np.ndarray:
    """Vote counts [G, answers] (``tree.answer_columns`` order) of ``ids`` from a catalog; error on a missing id."""
    frame = catalog_df.set_index(catalog_df["id_str"].astype(str))
    missing = pd.Index(ids).difference(frame.index)
    if len(missing):
        raise UserError(f"{source}: {len(missing)} galaxies of the posteriors have no votes, e.g. id {missing[0]!r}")
    return frame.loc[list(ids), list(tree.answer_columns)].to_numpy(np.int64)


def shard_counts(shard_dir: str | Path, tree: DecisionTree, ids: Sequence[str]) -> np.ndarray:
    """As :func:`catalog_counts`, from every split of the shards (ids and counts only, no image decoded)."""
    from gzmorph.shards import read_columns, read_manifest

    manifest = read_manifest(shard_dir)
    if manifest["tree"] != tree.name:
        raise UserError(f"{shard_dir}: shards are of tree {manifest['tree']!r}, not {tree.name!r}")
    found: dict[str, np.ndarray] = {}
    for split in manifest["splits"]:
        for batch_ids, counts in read_columns(shard_dir, split, tree.answer_columns):
            found.update(zip((b.decode() for b in batch_ids), counts, strict=True))
    missing = [i for i in ids if i not in found]
    if missing:
        raise UserError(f"{shard_dir}: {len(missing)} galaxies of the posteriors are in no split, e.g. id "
                        f"{missing[0]!r}")
    return np.array([found[i] for i in ids], np.int64).reshape(len(ids), tree.n_answers())


def split_ids(shard_dir: str | Path, split: str, tree: DecisionTree) -> set[str]:
    """Ids of one split of the shards (ids only, no image decoded)."""
    from gzmorph.shards import read_columns, read_manifest

    splits = read_manifest(shard_dir)["splits"]
    if split not in splits:
        raise UserError(f"{shard_dir}: no split {split!r} (has {', '.join(splits)})")
    return {b.decode() for batch_ids, _ in read_columns(shard_dir, split, tree.answer_columns[:1])
            for b in batch_ids}


def shard_images(shard_dir: str | Path, ids: Sequence[str]) -> dict[str, np.ndarray]:
    """{id: uint8 [R, R, 3]} of the wanted galaxies, from whichever splits hold them."""
    from gzmorph.shards import make_dataset, read_manifest

    manifest = read_manifest(shard_dir)
    wanted, out = set(ids), {}
    for split in manifest["splits"]:
        for images, _counts, batch_ids in make_dataset(shard_dir, split, manifest["columns"][:1], batch_size=256,
                                                       with_ids=True).as_numpy_iterator():
            for image, name in zip(images, (b.decode() for b in batch_ids), strict=True):
                if name in wanted:
                    out[name] = image
            if len(out) == len(wanted):
                return out
    if len(out) < len(wanted):
        log.warning("%d gallery galaxies not in the shards of %s", len(wanted) - len(out), shard_dir)
    return out


# ---------------------------------------------------------------------------------------------- metrics

def chunked_coverage(pmf_of: Callable[[slice], np.ndarray], k: np.ndarray, n: np.ndarray,
                     epsilons: np.ndarray) -> Coverage:
    """Eqs. 11-12 summed over chunks of galaxies: pmf_of(rows) gives the posteriors [chunk, K] of those rows."""
    expected, actual = np.zeros(len(epsilons)), np.zeros(len(epsilons), np.int64)
    for start in range(0, len(n), _PMF_CHUNK):
        sl = slice(start, start + _PMF_CHUNK)
        cov = coverage_counts(pmf_of(sl), k[sl], n[sl], epsilons)
        expected += cov.expected
        actual += cov.actual
    return Coverage(np.asarray(epsilons, float), expected, actual)


def answer_coverage(alpha: np.ndarray, k: np.ndarray, n: np.ndarray, answer: int,
                    epsilons: np.ndarray) -> Coverage:
    """Eqs. 11-12 for answer index ``answer`` (k [G, A]) under the T-mixture of beta-binomials."""
    n_max = int(n.max(initial=0))
    return chunked_coverage(lambda sl: answer_mixture_pmf(alpha[sl], n[sl], answer, n_max), k[:, answer], n,
                            epsilons)


def oracle_coverage(truth: np.ndarray, k: np.ndarray, n: np.ndarray, answer: int,
                    epsilons: np.ndarray) -> Coverage | None:
    """The oracle (as ``gzmorph evaluate``'s): Bin(k_a | N, true rho_a), the binomial marginal of the
    multinomial of the true fractions, over galaxies with a finite truth; None without any."""
    ok = np.isfinite(truth[:, answer])
    if not ok.any():
        return None
    t, n_ok = truth[ok, answer], n[ok]
    n_max = int(n_ok.max(initial=0))
    return chunked_coverage(lambda sl: single_pass_pmf(t[sl], n_ok[sl], n_max), k[ok, answer], n_ok, epsilons)


def kind_alphas(alpha: np.ndarray, point: np.ndarray | None) -> dict[str, np.ndarray]:
    """The posteriors compared: all passes, pass 0 alone, and the deterministic network if given."""
    kinds = {"mc": alpha, "t1": alpha[:, :1]}
    if point is not None:
        kinds["deterministic"] = point[:, None, :]
    return kinds


def majority_confusion(k: np.ndarray, fractions: np.ndarray) -> np.ndarray:
    """[A, A] counts: row = volunteers' most-voted answer, column = model's largest expected fraction."""
    a = k.shape[1]
    cells = np.argmax(k, axis=1) * a + np.argmax(fractions, axis=1)
    return np.bincount(cells, minlength=a * a).reshape(a, a)


def agreement(matrix: np.ndarray) -> float:
    total = matrix.sum()
    return float(np.trace(matrix) / total) if total else math.nan


@dataclass(frozen=True)
class QuestionResult:
    name: str
    answers: tuple[str, ...]
    metrics: dict[str, Any]  # metrics.json's entry
    calibration: pd.DataFrame  # calibration.csv rows of this question (answer 'all': pooled)
    per_answer: pd.DataFrame  # per_answer.csv rows
    confusion: np.ndarray  # [A, A]
    fractions: np.ndarray  # [G_asked, A] expected fractions (MC), for the figure
    observed: np.ndarray  # [G_asked, A] k / N


def evaluate_question(question: Question, alpha: np.ndarray, counts: np.ndarray, *,
                      point: np.ndarray | None = None, truth: np.ndarray | None = None,
                      min_votes: int = MIN_VOTES, confusion_min_votes: int = CONFUSION_MIN_VOTES,
                      epsilons: np.ndarray | None = None) -> QuestionResult:
    """Every figure of one question: alpha [G, T, A] (and point [G, A]), counts [G, A], truth [G, A] (NaN
    columns for answers without truth) over the same galaxies; see the module docstring."""
    eps = epsilon_grid() if epsilons is None else np.asarray(epsilons, float)
    n = counts.sum(axis=1)
    asked = n >= max(int(min_votes), 1)
    k, n_a = counts[asked], n[asked]
    observed = k / n_a[:, None] if asked.any() else np.zeros((0, counts.shape[1]))
    kinds = kind_alphas(alpha[asked], None if point is None else point[asked])
    fractions = {kind: expected_fractions(a) if len(a) else np.zeros((0, counts.shape[1]))
                 for kind, a in kinds.items()}

    calibration, coverage = question_calibration(question, kinds, None if truth is None else truth[asked], k, n_a,
                                                 eps)
    answer_rows = []
    truth_ok = None if truth is None else np.isfinite(truth[asked])
    for j, answer in enumerate(question.answer_names):
        row = {"question": question.name, "answer": answer, "n_galaxies": int(asked.sum())}
        for kind, f in fractions.items():
            row[f"rmse_{kind}"] = rmse(f[:, j], observed[:, j])
        if truth_ok is not None and truth_ok[:, j].any():
            t, ok = truth[asked][:, j], truth_ok[:, j]
            row["rmse_true_rho_mc"] = rmse(fractions["mc"][ok, j], t[ok])
            row["rmse_true_rho_floor"] = rmse(observed[ok, j], t[ok])
        answer_rows.append(row)

    sure = (n >= max(int(confusion_min_votes), 1))[asked]
    matrix = majority_confusion(k[sure], fractions["mc"][sure])
    metrics: dict[str, Any] = {
        "answers": list(question.answer_names),
        "n_galaxies": int(asked.sum()),
        "rmse_vs_vote_fraction": {kind: rmse(f, observed) for kind, f in fractions.items()},
        "rmse_vs_true_rho": _truth_metrics(question, fractions, observed, truth, truth_ok, asked),
        "coverage_error": coverage,
        "confusion": {"labels": list(question.answer_names), "matrix": matrix.tolist(), "n": int(matrix.sum()),
                      "agreement": agreement(matrix), "min_votes": int(confusion_min_votes)},
    }
    return QuestionResult(question.name, question.answer_names, metrics, calibration, pd.DataFrame(answer_rows),
                          matrix, fractions["mc"], observed)


def question_calibration(question: Question, kinds: Mapping[str, np.ndarray], truth: np.ndarray | None,
                         k: np.ndarray, n: np.ndarray, eps: np.ndarray
                         ) -> tuple[pd.DataFrame, dict[str, dict[str, float]]]:
    """calibration.csv rows of one question (per answer and pooled, answer ``all``) and metrics.json's
    coverage_error.<kind>.eps_* (pooled), for the asked galaxies: alpha per kind [G, T, A], k [G, A], n [G]."""
    labels = (*question.answer_names, "all")
    empty = Coverage(eps, np.zeros(len(eps)), np.zeros(len(eps), np.int64))
    per_kind = {kind: [answer_coverage(a, k, n, j, eps) if len(a) else empty for j in range(len(labels) - 1)]
                for kind, a in kinds.items()}
    if truth is not None and len(k):
        per_kind["truth"] = [oracle_coverage(truth, k, n, j, eps) for j in range(len(labels) - 1)]
    nan = Coverage(eps, np.full(len(eps), np.nan), np.full(len(eps), np.nan))
    table: dict[str, dict[str, np.ndarray]] = {label: {} for label in labels}
    coverage: dict[str, dict[str, float]] = {}
    for kind, covs in per_kind.items():
        known = [c for c in covs if c is not None]  # the oracle: answers with a true rho only
        if not known:
            continue
        pooled = Coverage(eps, np.sum([c.expected for c in known], axis=0), np.sum([c.actual for c in known], axis=0))
        for label, cov in zip(labels, (*covs, pooled), strict=True):
            cov = nan if cov is None else cov
            table[label].update({f"expected_{kind}": cov.expected, f"actual_{kind}": cov.actual,
                                 f"coverage_error_{kind}": cov.coverage_error})
        errors = dict(zip(np.round(eps, 10), pooled.coverage_error, strict=True))
        coverage[kind] = {epsilon_key(e): errors.get(round(e, 10), math.nan) for e in TABLE_EPSILONS}
    frame = pd.concat([pd.DataFrame({"question": question.name, "answer": label, "epsilon": eps, **table[label]})
                       for label in labels], ignore_index=True)
    return frame, coverage


def _truth_metrics(question: Question, fractions: Mapping[str, np.ndarray], observed: np.ndarray,
                   truth: np.ndarray | None, truth_ok: np.ndarray | None, asked: np.ndarray) -> dict[str, Any] | None:
    """RMSE against the simulated true rho over the answers that have it (None without any truth)."""
    if truth is None or truth_ok is None or not truth_ok.any():
        return None
    with_truth = truth_ok.any(axis=0)  # answers the simulator gave a true rho
    rows = truth_ok[:, with_truth].all(axis=1)
    t = truth[asked][rows][:, with_truth]
    out = {kind: rmse(f[rows][:, with_truth], t) for kind, f in fractions.items()}
    out["observed_vote_fraction"] = rmse(observed[rows][:, with_truth], t)  # the binomial noise floor of k/N
    out["answers"] = [a for a, ok in zip(question.answer_names, with_truth, strict=True) if ok]
    out["n_galaxies"] = int(rows.sum())
    return out


def per_question_table(results: Sequence[QuestionResult]) -> pd.DataFrame:
    """per_question.csv: one row per question with its headline numbers."""
    rows = []
    for r in results:
        m = r.metrics
        row = {"question": r.name, "answers": len(r.answers), "n_galaxies": m["n_galaxies"]}
        row.update({f"rmse_{kind}": v for kind, v in m["rmse_vs_vote_fraction"].items()})
        truth = m["rmse_vs_true_rho"] or {}
        row["rmse_true_rho_mc"] = truth.get("mc", math.nan)
        row["rmse_true_rho_floor"] = truth.get("observed_vote_fraction", math.nan)
        row["agreement"], row["n_confusion"] = m["confusion"]["agreement"], m["confusion"]["n"]
        for kind, errors in m["coverage_error"].items():
            row.update({f"coverage_error_{kind}_{key}": v for key, v in errors.items()})
        rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------- galleries

def confident_rows(fraction: np.ndarray, asked: np.ndarray, size: int) -> np.ndarray:
    """Indices of the ``size`` asked galaxies with the highest expected fraction, best first (ties: lower index)."""
    idx = np.flatnonzero(asked)
    return idx[np.argsort(-fraction[idx], kind="stable")[:size]]


def uncertain_rows(spread: np.ndarray, asked: np.ndarray, size: int) -> np.ndarray:
    """Indices of the ``size`` asked galaxies with the largest posterior std of the fractions, largest first."""
    return confident_rows(spread, asked, size)


def question_spread(alpha: np.ndarray) -> np.ndarray:
    """sqrt(sum_a Var[rho_a]) under the T-mixture of Dirichlets: one question's uncertainty, [G, T, A] -> [G]."""
    return np.sqrt(np.sum(fraction_std(alpha) ** 2, axis=1))


@dataclass(frozen=True)
class Gallery:
    question: str
    rows: dict[str, np.ndarray]  # row label ('<answer>' or 'most uncertain') -> galaxy indices, best first
    scores: dict[str, np.ndarray]  # the same shape: expected fraction or std shown under each image


def question_gallery(question: Question, alpha: np.ndarray, asked: np.ndarray, size: int) -> Gallery:
    fractions = expected_fractions(alpha)
    spread = question_spread(alpha)
    rows, scores = {}, {}
    for j, answer in enumerate(question.answer_names):
        rows[answer] = confident_rows(fractions[:, j], asked, size)
        scores[answer] = fractions[rows[answer], j]
    rows["most uncertain"] = uncertain_rows(spread, asked, size)
    scores["most uncertain"] = spread[rows["most uncertain"]]
    return Gallery(question.name, rows, scores)


def mosaic(images: Sequence[Sequence[np.ndarray | None]], size: int, pad: int = 2) -> np.ndarray:
    """One uint8 RGB array of ``images`` (rows of up to ``size`` [R, R, 3] images; None: a grey tile), white gaps.

    A single image drawn once is far cheaper than one matplotlib axes per galaxy (dozens per figure).
    """
    first = next((im for row in images for im in row if im is not None), None)
    r = first.shape[0] if first is not None else 32
    out = np.full((len(images) * (r + pad) + pad, size * (r + pad) + pad, 3), 255, np.uint8)
    for i, row in enumerate(images):
        for j, image in enumerate(row[:size]):
            y, x = pad + i * (r + pad), pad + j * (r + pad)
            out[y : y + r, x : x + r] = 160 if image is None else np.broadcast_to(image[:r, :r], (r, r, 3))
    return out


def gallery_figure(gallery: Gallery, ids: np.ndarray, images: Mapping[str, np.ndarray], size: int) -> Figure:
    """One row per answer (its most confident galaxies, best first) and a last row of the most uncertain ones,
    each image captioned with its id and expected fraction f (or posterior std)."""
    plt = _plt()
    labels = list(gallery.rows)
    grid = [[images.get(str(ids[i])) for i in gallery.rows[label]] for label in labels]
    tiles = mosaic(grid, size)
    cell = tiles.shape[0] / len(labels)
    fig, ax = plt.subplots(figsize=(1.45 * size + 1.6, 1.6 * len(labels) + 0.7))
    ax.imshow(tiles, extent=(0, size, len(labels), 0), interpolation="nearest")
    for r, label in enumerate(labels):
        what = "std" if label == "most uncertain" else "f"
        for c, i in enumerate(gallery.rows[label]):
            ax.text(c + 0.5, r + 0.02, f"{ids[i]}  {what}={gallery.scores[label][c]:.2f}", ha="center", va="bottom",
                    fontsize=6, color="black", clip_on=False, bbox={"fc": "white", "ec": "none", "pad": 0.5})
    ax.set_yticks(np.arange(len(labels)) + 0.5, labels, fontsize=9)
    ax.set_xticks([])
    ax.set_title(f"{gallery.question}: per answer the most confident galaxies (f = expected fraction),\n"
                 f"last row the most uncertain (posterior std); {cell:.0f} px per image", fontsize=9)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------- figure

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def questions_figure(results: Sequence[QuestionResult], title: str, seed: int = 0) -> Figure:
    """All questions at a glance: per question, expected fraction vs observed k/N of every answer, with its
    RMSE, majority agreement and MC coverage error at ε = 0.10 in the panel title."""
    plt = _plt()
    ncols = min(4, len(results))
    nrows = -(-len(results) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, 3.3 * nrows + 0.5), squeeze=False,
                             constrained_layout=True)
    rng = np.random.default_rng(seed)
    for ax, r in zip(axes.flat, results, strict=False):
        g = len(r.observed)
        rows = np.sort(rng.choice(g, SCATTER_POINTS, replace=False)) if g > SCATTER_POINTS else np.arange(g)
        for j, answer in enumerate(r.answers):
            ax.scatter(r.observed[rows, j], r.fractions[rows, j], s=4, alpha=0.35, label=answer, rasterized=True)
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
        m = r.metrics
        cov = m["coverage_error"]["mc"].get(epsilon_key(0.10), math.nan)
        agree = m["confusion"]["agreement"]
        ax.set_title(f"{r.name} ({m['n_galaxies']} galaxies)\nRMSE {_num(m['rmse_vs_vote_fraction']['mc'])}, "
                     f"agree {_pct(agree)}, cov. err ε=0.1 {_pct(cov, sign=True)}", fontsize=8.5)
        ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02))
        ax.set_xlabel("observed vote fraction k/N", fontsize=8)
        ax.set_ylabel("expected fraction (MC)", fontsize=8)
        ax.legend(fontsize=6, markerscale=2, loc="upper left", frameon=False)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(results):]:
        ax.axis("off")
    fig.suptitle(title)
    return fig


def _num(value: float | None) -> str:
    return "nan" if value is None or not math.isfinite(value) else f"{value:.3f}"


def _pct(value: float | None, sign: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{100 * value:+.1f}%" if sign else f"{100 * value:.0f}%"


# ---------------------------------------------------------------------------------------------- stage

def truth_matrix(catalog_df: pd.DataFrame | None, ids: np.ndarray, question: Question) -> np.ndarray | None:
    """[G, A] simulated true rho of the question's answers (NaN columns where the catalog has none)."""
    if catalog_df is None:
        return None
    ids_s = pd.Series(ids)
    cols = [truth_for(catalog_df, ids_s, question.name, a) for a in question.answer_names]
    if all(c is None for c in cols):
        return None
    return np.column_stack([np.full(len(ids), np.nan) if c is None else c for c in cols])


def evaluate_tree(posteriors: str | Path, out_dir: str | Path, *, tree: str | DecisionTree | None = None,
                  catalog: str | Path | None = None, shards: str | Path | None = None, split: str = "all",
                  min_votes: int = MIN_VOTES, confusion_min_votes: int = CONFUSION_MIN_VOTES,
                  gallery_size: int = GALLERY_SIZE, seed: int = 0, smoke_run: bool = False) -> dict[str, Any]:
    """Write every output of the module docstring into ``out_dir``; return metrics.json's content.

    ``split`` (train, val, test; needs ``shards``) evaluates only the posterior catalog's galaxies of that
    split: the catalog covers the training galaxies too, and a calibration measured on them would flatter.
    """
    from gzmorph import catalog as catalog_mod
    from gzmorph import io
    from gzmorph.tree import get_tree

    if catalog is None and shards is None:
        raise UserError("need the votes: give --catalog or --shards (or both)")
    catalog_df = catalog_mod.load(catalog) if catalog is not None else None
    if tree is None:
        if catalog_df is not None:
            tree = str(catalog_df["tree"].iloc[0])
        else:
            from gzmorph.shards import read_manifest

            tree = read_manifest(shards)["tree"]
    tree = get_tree(tree) if isinstance(tree, str) else tree
    ids, alpha = load_concentrations(posteriors, tree)
    point = load_deterministic(posteriors, tree)
    if split != "all":
        if shards is None:
            raise UserError(f"--split {split}: give --shards, which say the split of each galaxy")
        keep = np.isin(ids, sorted(split_ids(shards, split, tree)))
        ids, alpha, point = ids[keep], alpha[keep], None if point is None else point[keep]
    if not len(ids):
        raise UserError(f"{posteriors}: no galaxies to evaluate" + (f" in split {split!r}" if split != "all" else ""))
    counts = (catalog_counts(catalog_df, tree, ids, str(catalog)) if catalog_df is not None
              else shard_counts(shards, tree, ids))

    out = Path(out_dir)
    results = []
    for q in tree.questions:
        sl = tree.answer_slices[q.name]
        results.append(evaluate_question(q, alpha[:, :, sl], counts[:, sl], point=None if point is None
                                         else point[:, sl], truth=truth_matrix(catalog_df, ids, q),
                                         min_votes=min_votes, confusion_min_votes=confusion_min_votes))
    metrics = plain_json({"tree": tree.name, "smoke_run": bool(smoke_run), "split": split, "n_galaxies": len(ids),
                      "passes": int(alpha.shape[1]),
                      "n_questions": len(tree.questions), "n_answers": tree.n_answers(), "min_votes": min_votes,
                      "kinds": list(kind_alphas(alpha[:1], None if point is None else point[:1])),
                      "questions": {r.name: r.metrics for r in results}})
    io.write_json(out / "metrics.json", metrics)
    io.write_text(out / "per_question.csv", per_question_table(results).to_csv(index=False, float_format="%.6g"))
    io.write_text(out / "per_answer.csv", pd.concat([r.per_answer for r in results]).to_csv(index=False,
                                                                                            float_format="%.6g"))
    io.write_text(out / "calibration.csv", pd.concat([r.calibration for r in results]).to_csv(index=False,
                                                                                              float_format="%.6g"))
    for r in results:
        frame = pd.DataFrame(r.confusion, index=pd.Index(r.answers, name="volunteers"), columns=list(r.answers))
        io.write_text(out / "confusion" / f"{r.name}.csv", frame.to_csv())
    io.save_figure(questions_figure(results, f"{tree.name}: every question, {len(ids)} galaxies x "
                                             f"{alpha.shape[1]} passes", seed), out / "questions.png", dpi=110)
    if gallery_size > 0:
        write_galleries(tree, ids, alpha, counts, out / "galleries", gallery_size, shards)
    for r in results:
        m = r.metrics
        log.info("%s: %d galaxies, RMSE %s, agreement %s, coverage error MC eps 0.02/0.05/0.10/0.20 %s", r.name,
                 m["n_galaxies"], _num(m["rmse_vs_vote_fraction"]["mc"]), _pct(m["confusion"]["agreement"]),
                 "/".join(_pct(v, sign=True) for v in m["coverage_error"]["mc"].values()))
    return metrics


def write_galleries(tree: DecisionTree, ids: np.ndarray, alpha: np.ndarray, counts: np.ndarray, out_dir: Path,
                    size: int, shards: str | Path | None) -> None:
    """galleries/<question>.png for every question; images from the shards (placeholders without them)."""
    from gzmorph import io

    galleries = []
    for q in tree.questions:
        sl = tree.answer_slices[q.name]
        galleries.append(question_gallery(q, alpha[:, :, sl], counts[:, sl].sum(axis=1) >= 1, size))
    wanted = sorted({str(ids[i]) for g in galleries for rows in g.rows.values() for i in rows})
    images = shard_images(shards, wanted) if shards is not None else {}
    for g in galleries:
        io.save_figure(gallery_figure(g, ids, images, size), out_dir / f"{g.question}.png", dpi=100)


def run(args: argparse.Namespace) -> None:
    from gzmorph import config

    params = config.load(args.params)
    settings = params["evaluate_tree"]
    pick = {k: settings[k] if getattr(args, k) is None else getattr(args, k)
            for k in ("split", "min_votes", "confusion_min_votes", "gallery_size")}
    evaluate_tree(args.posteriors, args.out_dir, tree=args.tree, catalog=args.catalog, shards=args.shards,
                  seed=args.seed, smoke_run=bool(params.get("smoke_run", False)), **pick)


def register(sub: argparse._SubParsersAction) -> None:
    from gzmorph import config

    p = sub.add_parser("evaluate-tree", help="calibration, RMSE, confusion and galleries of every question of a "
                                             "whole-tree model")
    config.add_params_argument(p)
    p.add_argument("--posteriors", required=True, help="posterior catalog parquet with <q>_<a>_concentration lists")
    p.add_argument("--catalog", default=None, help="vote catalog: votes and, if simulated, truth_rho_<q>_<a>")
    p.add_argument("--shards", default=None, help="shard directory: splits, gallery images (and votes without "
                                                  "--catalog)")
    p.add_argument("--tree", default=None, help="decision tree (default: the catalog's or the shards')")
    p.add_argument("--out-dir", required=True, help="output directory, e.g. results/evaluation/tree/<survey>")
    p.add_argument("--split", default=None, choices=["train", "val", "test", "all"],
                   help="evaluate the galaxies of this shards split (default: evaluate_tree.split)")
    p.add_argument("--min-votes", type=int, default=None,
                   help="galaxies need N >= this for a question's calibration and RMSE "
                        "(default: evaluate_tree.min_votes)")
    p.add_argument("--confusion-min-votes", type=int, default=None,
                   help="N cut for the majority-answer confusion matrix (default: evaluate_tree.confusion_min_votes)")
    p.add_argument("--gallery-size", type=int, default=None,
                   help="galaxies per gallery row, 0 for none (default: evaluate_tree.gallery_size)")
    p.add_argument("--seed", type=int, default=0, help="seed of the figure's subsample of points")
    p.set_defaults(func=run)

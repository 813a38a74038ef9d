"""The vote-count inputs of every model stage: which galaxies a question's model sees, and as what tensors.

One model predicts the typical vote fraction rho of one answer (``train.questions.<q>.answer``) from two count
columns of the shards written by ``gzmorph shards``: ``<q>_<answer>`` (k) and ``<q>_total-votes`` (N)
(:class:`QuestionSpec`, :func:`question_spec`).  Galaxies are kept when N >= max(min_total_votes, 1)
(:func:`keep_mask`, :func:`effective_cut`): the paper's cut (bar: N >= 10, Walmsley et al. 2020 §2.6), and
N = 0 galaxies (question never asked) carry no information.  The same rule decides which galaxies ``gzmorph
train`` trains and early-stops on, which test galaxies ``gzmorph predict`` and ``gzmorph evaluate`` use, and
which galaxies active learning draws from.

:func:`vote_dataset` is the tf.data reader of (uint8 image, float32 (k, N)) batches after the cut;
:func:`count_galaxies` / :func:`require_galaxies` count what the cut leaves (:class:`NoGalaxiesError` when
nothing).  :func:`tree_dataset` reads every answer's counts for the whole-tree model (Walmsley et al.
2021), with :func:`tree_spec` standing in for the cut (root question N >= 1).  Thread pools, seeds and dtype
policy are in :mod:`gzmorph.runtime`; training in :mod:`gzmorph.train`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gzmorph.config import ConfigError, UserError

if TYPE_CHECKING:
    import tensorflow as tf

    from gzmorph.tree import DecisionTree

log = logging.getLogger(__name__)


class NoGalaxiesError(UserError):
    """A split has no galaxy left after the vote cut."""


@dataclass(frozen=True)
class QuestionSpec:
    """What one model learns: rho of ``answer`` for ``question``, from the (k, N) columns."""

    question: str
    answer: str
    votes_column: str  # k: votes for the answer
    total_column: str  # N: volunteers asked the question
    min_total_votes: int
    crop_mode: str
    crop_zoom: tuple[float, float]

    @property
    def columns(self) -> tuple[str, str]:
        return (self.votes_column, self.total_column)


def question_spec(params: dict[str, Any], question: str, tree_name: str | None = None) -> QuestionSpec:
    """The question's settings from ``train.questions``; column names from its decision tree.

    ``tree_name`` defaults to the tree of ``train.survey``; pass the shards' tree to check that
    the shards really hold the question.
    """
    from gzmorph.tree import get_tree

    questions = params["train"]["questions"]
    if question not in questions:
        raise ConfigError(f"train.questions: no question {question!r}; configured: {', '.join(questions)}")
    spec = questions[question]
    if tree_name is None:
        from gzmorph.config import active_surveys

        tree_name = active_surveys(params)[params["train"]["survey"]]
    tree = get_tree(tree_name)
    if question not in tree.question_names:
        raise ConfigError(f"question {question!r} is not in the {tree.name} tree of the shards")
    q = tree.question(question)
    return QuestionSpec(
        question=question,
        answer=str(spec["answer"]),
        votes_column=q.column(str(spec["answer"])),
        total_column=q.total_column,
        min_total_votes=int(spec["min_total_votes"]),
        crop_mode=str(spec["crop_mode"]),
        crop_zoom=(float(spec["crop_zoom"][0]), float(spec["crop_zoom"][1])),
    )


def effective_cut(min_total_votes: int) -> int:
    """Smallest N kept: N = 0 galaxies never saw the question, so they are dropped even with no cut."""
    return max(int(min_total_votes), 1)


def keep_mask(total_votes: Any, min_total_votes: int) -> Any:
    """Boolean mask of galaxies to train on / evaluate (numpy or TF tensors alike)."""
    return total_votes >= effective_cut(min_total_votes)


def vote_dataset(shard_dir: str | Path, split: str, spec: QuestionSpec, batch_size: int, *,
                 shuffle: bool = False, seed: int | None = None, with_ids: bool = False,
                 threads: int | None = None, n_galaxies: int | None = None, cache: bool = False) -> tf.data.Dataset:
    """Batches of (uint8 image [B,R,R,3], float32 (k, N) [B,2]) (+ id_str) after the vote cut.

    The reader shuffles, batches and parses whole batches in parallel; the cut is a vectorised
    mask per batch, and ``rebatch`` restores full batches, so no per-galaxy Python or tf.data
    element work is added.  ``n_galaxies`` (galaxies left after the cut, see
    :func:`count_galaxies`) lets Keras show a progress bar with a known length.  ``cache``: the split is held
    in memory after the first epoch (:func:`gzmorph.shards.make_dataset`; see :func:`fits_in_cache`).
    """
    import tensorflow as tf

    from gzmorph.shards import make_dataset

    def select(image: tf.Tensor, counts: tf.Tensor, *ids: tf.Tensor) -> tuple[tf.Tensor, ...]:
        keep = keep_mask(counts[:, 1], spec.min_total_votes)
        return tuple(tf.boolean_mask(t, keep) for t in (image, counts, *ids))

    ds = make_dataset(shard_dir, split, columns=spec.columns, batch_size=batch_size, shuffle=shuffle,
                      seed=seed, with_ids=with_ids, counts_dtype="float32", cache=cache)
    return _cut_and_rebatch(ds, select, batch_size, threads, n_galaxies)


def _cut_and_rebatch(ds: tf.data.Dataset, select: Any, batch_size: int, threads: int | None,
                     n_galaxies: int | None) -> tf.data.Dataset:
    """The cut ``select`` per batch, full batches again, a known length with ``n_galaxies``, prefetch."""
    import tensorflow as tf

    ds = ds.map(select, num_parallel_calls=tf.data.AUTOTUNE).rebatch(batch_size)
    if n_galaxies is not None:
        ds = ds.apply(tf.data.experimental.assert_cardinality(math.ceil(n_galaxies / batch_size)))
    if threads:
        options = tf.data.Options()
        options.threading.private_threadpool_size = int(threads)
        ds = ds.with_options(options)
    return ds.prefetch(tf.data.AUTOTUNE)


def fits_in_cache(shard_dir: str | Path, splits: tuple[str, ...], cache_mb: float) -> bool:
    """Whether the images of ``splits`` (uint8 at the shards' resolution, every galaxy before any cut) fit in
    ``cache_mb`` MiB together (``train.cache_mb``)."""
    from gzmorph.shards import read_manifest

    manifest = read_manifest(shard_dir)
    per_image = int(manifest["resolution"]) ** 2 * int(manifest.get("channels", 3))
    galaxies = sum(int(manifest["splits"].get(s, {}).get("n_galaxies", 0)) for s in splits)
    return cache_mb > 0 and galaxies * per_image <= cache_mb * 2**20


def count_galaxies(shard_dir: str | Path, split: str, spec: QuestionSpec) -> tuple[int, int]:
    """(galaxies in the split, galaxies kept by the cut).

    A sum over the manifest's histogram of N for the question (``n_histograms``, written by ``gzmorph
    shards``): nothing is read but the manifest.  Shards written before the histograms existed are
    scanned instead (ids and N only, no image decoded), which is logged.
    """
    from gzmorph.shards import read_columns, read_manifest

    cut = effective_cut(spec.min_total_votes)
    entry = read_manifest(shard_dir)["splits"].get(split, {})
    histogram = entry.get("n_histograms", {}).get(spec.question)
    if histogram is not None:
        total = sum(c for _, c in histogram)
        if total == int(entry["n_galaxies"]):
            return total, sum(c for n, c in histogram if n >= cut)
        log.warning("%s: the N histogram of %s in the %s split counts %d galaxies, the manifest %d; scanning",
                    shard_dir, spec.question, split, total, entry["n_galaxies"])
    else:
        log.info("%s: manifest has no N histogram for %s (shards from an older gzmorph); scanning the %s split to "
                 "count the galaxies with N >= %d", shard_dir, spec.question, split, cut)
    total = kept = 0
    for _, counts in read_columns(shard_dir, split, [spec.total_column]):
        total += len(counts)
        kept += int(keep_mask(counts[:, 0], spec.min_total_votes).sum())
    return total, kept


def require_galaxies(shard_dir: str | Path, split: str, spec: QuestionSpec) -> int:
    """Galaxies left after the cut in ``split``; NoGalaxiesError when there are none."""
    total, kept = count_galaxies(shard_dir, split, spec)
    log.info("%s split: %d of %d galaxies have N(%s) >= %d", split, kept, total, spec.question,
             effective_cut(spec.min_total_votes))
    if kept == 0:
        raise NoGalaxiesError(
            f"{shard_dir}: no {split} galaxies left after the cut N({spec.question}) >= "
            f"{effective_cut(spec.min_total_votes)} ({total} before the cut)")
    return kept


# ---------------------------------------------------------------------------------------------- whole-tree model


def tree_dataset(shard_dir: str | Path, split: str, tree: DecisionTree, batch_size: int, *,
                 shuffle: bool = False, seed: int | None = None, with_ids: bool = False,
                 threads: int | None = None, n_galaxies: int | None = None, cache: bool = False) -> tf.data.Dataset:
    """Batches of (uint8 image [B,R,R,3], float32 counts [B, n_answers]) (+ id_str) for a whole-tree model.

    Counts are every answer's votes in ``tree.answer_columns`` order (the loss takes N per question as the
    answer sum, as the shards' totals are).  Galaxies nobody classified (N = 0 for the root question) are
    dropped: their loss is 0 and they would only dilute the batch mean.
    """
    import tensorflow as tf

    from gzmorph.shards import make_dataset

    root = tree.answer_slices[tree.questions[0].name]

    def select(image: tf.Tensor, counts: tf.Tensor, *ids: tf.Tensor) -> tuple[tf.Tensor, ...]:
        keep = keep_mask(tf.reduce_sum(counts[:, root], axis=1), 1)
        return tuple(tf.boolean_mask(t, keep) for t in (image, counts, *ids))

    ds = make_dataset(shard_dir, split, columns=tree.answer_columns, batch_size=batch_size, shuffle=shuffle,
                      seed=seed, with_ids=with_ids, counts_dtype="float32", cache=cache)
    return _cut_and_rebatch(ds, select, batch_size, threads, n_galaxies)


def tree_spec(tree: DecisionTree, crop_mode: str, crop_zoom: tuple[float, float]) -> QuestionSpec:
    """The :class:`QuestionSpec` of the root question with the tree model's crop: counts galaxies for the cut."""
    q = tree.questions[0]
    return QuestionSpec(question=q.name, answer=q.answer_names[0], votes_column=q.answer_columns[0],
                        total_column=q.total_column, min_total_votes=1, crop_mode=crop_mode,
                        crop_zoom=(float(crop_zoom[0]), float(crop_zoom[1])))

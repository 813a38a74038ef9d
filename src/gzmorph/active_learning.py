"""``gzmorph active-learning``: simulated active learning, BALD vs random selection (Walmsley et al. 2020, §3.5-3.6).

``run`` simulates one acquisition strategy for one question and one repeat (``--seed``):

* the pool is the shards' ``train`` split, the fixed evaluation set their ``test`` split (never
  acquired), and the ``val`` split drives early stopping; every split gets the question's training
  cut N >= max(min_total_votes, 1) (:func:`gzmorph.inputs.keep_mask`).  Only the pool's and the test
  split's ids, k and N are held in memory (:class:`Split`, sorted by id; read without decoding an
  image) with the labelled mask; images are streamed from the shards, so memory does not grow with
  the catalog (230k galaxies at 128 px would be ~10 GB of pixels): each iteration trains on the
  labelled galaxies filtered out of one pass over the train shards (a hash table of labelled ids,
  :func:`labelled_dataset`; only they are cached in memory), early-stops on the first ``val_galaxies`` of
  the val split (:func:`validation_dataset`, cached), and scores the unlabelled pool and the test split by
  streaming them through the MC passes (:func:`stream_rho`).  Pool positions are in id order, so the seeded
  draws below pick the same galaxies whatever the shard layout or the number of cores.
* ``initial`` pool galaxies, drawn at random from (params seed, run seed), start labelled; the draw
  does not depend on the strategy, so BALD and random runs with the same seed are paired.
* iteration i = 0..``iterations``: train a model on the labelled galaxies with the same training loop as
  ``gzmorph train`` (:func:`gzmorph.train.fit`: Adam with ``train.schedule`` peaking at ``train.learning_rate``,
  :class:`~gzmorph.losses.BinomialLoss`, EarlyStopping on the val loss with the kept epoch's weights restored)
  but this section's epoch counts (``max_epochs, min_epochs, patience, warmup_epochs, plateau_patience``) and
  ``batch_size``; an epoch is at least ``min_steps_per_epoch`` batches, repeating a small labelled set.  The
  first model is fresh (seeded from params seed and run seed, so BALD and random share it);
  later ones are fresh too (seeded from params seed, run seed and i) unless ``warm_start``, when the
  previous iteration's model is trained further (fresh Adam) on the grown labelled set.  Early
  stopping ignores the first ``min_epochs`` epochs: a fresh model starts on a plateau at the constant
  prediction, and stopping there gave "collapsed" iterations (:func:`_train_model`).  Evaluate it on the
  test split with T = ``augmentations`` x ``dropout_masks`` MC samples (:func:`mc_rho`, the same passes as
  ``gzmorph predict``);
  then, except after the last model, acquire ``per_iteration``
  unlabelled pool galaxies and add them (with their already known votes: the "collected"
  classifications) to the labelled set:

  - ``bald``: the highest mutual information I[k, w] (eq. 24, :func:`gzmorph.acquisition.mutual_information`)
    from T passes, with N = ``expected_votes`` or, when null, the mean total votes of the labelled
    galaxies (eq. 21, :func:`gzmorph.acquisition.expected_votes`);
  - ``random``: uniformly at random (a seeded permutation of the pool).

Outputs of ``run``:

* ``--out`` CSV, one row per iteration (rewritten atomically after every iteration, so an
  interrupted run shows its progress): ``question, strategy, seed, iteration, n_labelled,
  n_acquired`` (new labels beyond the initial set), ``train_loss`` (training loss of the epoch whose
  weights were kept, i.e. of the lowest val loss from ``min_epochs`` on; with dropout and augmentation
  on), ``val_loss`` (that val loss), ``eval_loss`` (binomial loss eq. 6 per test galaxy of the MC-mean rho, no
  log C(N, k) constant, as in training), ``eval_rmse`` (RMSE of the MC-mean rho against k / N on the
  test galaxies), ``epochs``, ``expected_votes`` (the N used to score; 0 for random), ``seconds``.
* ``--acquired`` parquet: ``question, strategy, seed, role, iteration, id_str, score, votes,
  total_votes, vote_fraction``.  ``role = "acquired"``: one row per acquired galaxy, ``iteration`` is
  the model that chose it (it is trained on from iteration + 1), ``score`` its mutual information
  (NaN for random).  ``role = "test"``: every test galaxy with the mutual information under the
  final model (``iteration`` = the last), for the most/least informative figure (Figs 15-16).

``summarize`` gathers all runs into ``summary.csv`` (one row per question) and figures:

* ``labels_saved_best`` / ``labels_saved_end`` (§3.6 "equal RMSE with x% fewer newly-labelled
  galaxies"): average eval_rmse over repeats per strategy and n_acquired; take the RMSE the random
  curve reaches at its best (lowest) point / at its last point, and n_random the new labels random
  had there; n_bald = the first n_acquired where the mean BALD curve is at or below that RMSE,
  interpolated linearly between iterations; labels_saved = 1 - n_bald / n_random.  NaN where
  undefined: BALD never reaches the RMSE, or random reaches it with no new labels (n_random = 0).
* ``bald_wins_all_repeats``: BALD's final eval_rmse is below random's for every seed that has both
  runs (``n_repeats`` = those seeds), and ``bald_wins`` the number of those seeds where it is; no LOWESS
  smoothing (the paper smooths and averages 4 runs).
* ``<q>_curves.png`` (Figs 11-12): train loss, eval loss and RMSE against labelled galaxies, mean
  over repeats with the min-max spread shaded.  ``<q>_acquired.png`` (Figs 13-14): vote-fraction
  distribution of the galaxies acquired in each iteration, and in total, pooled over repeats.
  ``<q>_informative.png`` (Figs 15-16, only with ``--shards``): the most and least informative test
  galaxies by mutual information under the final model of the first BALD run.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gzmorph.config import ConfigError, UserError

if TYPE_CHECKING:
    import keras
    import pandas as pd
    import tensorflow as tf
    from matplotlib.figure import Figure

    from gzmorph.inputs import QuestionSpec
    from gzmorph.predict import MCSampling

log = logging.getLogger(__name__)

STRATEGIES = ("bald", "random")
RUN_COLUMNS = ("question", "strategy", "seed", "iteration", "n_labelled", "n_acquired", "train_loss", "val_loss",
               "eval_loss", "eval_rmse", "epochs", "expected_votes", "seconds")
ACQUIRED_COLUMNS = ("question", "strategy", "seed", "role", "iteration", "id_str", "score", "votes",
                    "total_votes", "vote_fraction")
SUMMARY_COLUMNS = ("question", "labels_saved_best", "labels_saved_end", "bald_wins_all_repeats", "bald_wins",
                   "n_repeats", "rmse_random_best", "n_random_best", "rmse_random_end", "n_random_end", "rmse_bald_end")
PREDICT_CHUNK = 256  # galaxies per MC-pass batch when scoring


@dataclass
class Split:
    """One split's index after the vote cut, sorted by id: ids [G] str, k and N [G] float32.  No images."""

    ids: np.ndarray
    k: np.ndarray
    n: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def fraction(self) -> np.ndarray:
        return self.k / self.n

    def positions(self, ids: np.ndarray) -> np.ndarray:
        """Index into this split of each of ``ids`` (str or bytes); KeyError for an id it does not hold."""
        ids = np.asarray([i.decode() if isinstance(i, bytes) else i for i in ids], dtype=self.ids.dtype)
        pos = np.minimum(np.searchsorted(self.ids, ids), max(len(self.ids) - 1, 0))
        missing = ids[self.ids[pos] != ids] if len(self.ids) else ids
        if len(missing):
            raise KeyError(f"{len(missing)} ids not in the split, e.g. {missing[:3].tolist()}")
        return pos


def load_split(shard_dir: str | Path, split: str, spec: QuestionSpec) -> Split:
    """The split's ids, k and N after the question's vote cut, sorted by id; no image is decoded."""
    from gzmorph.inputs import NoGalaxiesError, effective_cut, keep_mask
    from gzmorph.shards import read_columns

    ids, counts = [], []
    for i, c in read_columns(shard_dir, split, spec.columns):
        keep = keep_mask(c[:, 1], spec.min_total_votes)
        ids.append(i[keep])
        counts.append(c[keep])
    if not ids or sum(len(i) for i in ids) == 0:
        raise NoGalaxiesError(f"{shard_dir}: no {split} galaxies left after the cut N({spec.question}) >= "
                              f"{effective_cut(spec.min_total_votes)}")
    all_ids = np.array([s.decode() for s in np.concatenate(ids)])
    c = np.concatenate(counts).astype(np.float32)
    order = np.argsort(all_ids, kind="stable")
    return Split(all_ids[order], c[order, 0], c[order, 1])


def _id_table(ids: np.ndarray) -> Any:
    """A tf.lookup table: id_str -> True for ``ids``, False for any other id."""
    import tensorflow as tf

    keys = tf.constant([str(i) for i in ids], tf.string)
    return tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(keys, tf.ones_like(keys, tf.bool)), False)


def split_stream(shard_dir: str | Path, split: str, spec: QuestionSpec, ids: np.ndarray | None = None, *,
                 keep: bool = True, batch_size: int = PREDICT_CHUNK, threads: int | None = None) -> tf.data.Dataset:
    """Batches (uint8 image, float32 (k, N), id_str) of a split after the vote cut, in the shards' fixed order.

    With ``ids``: only those galaxies (``keep``) or only the others (``keep=False``), by a hash-table lookup
    per batch; ``rebatch`` restores full batches.
    """
    import tensorflow as tf

    from gzmorph.inputs import vote_dataset

    ds = vote_dataset(shard_dir, split, spec, batch_size, with_ids=True, threads=threads)
    if ids is None or (len(ids) == 0 and not keep):
        return ds
    if len(ids) == 0:  # a lookup table cannot be empty
        return ds.take(0)
    table = _id_table(ids)

    def select(image: tf.Tensor, counts: tf.Tensor, id_str: tf.Tensor) -> tuple[tf.Tensor, ...]:
        hit = table.lookup(id_str)
        mask = hit if keep else tf.logical_not(hit)
        return tuple(tf.boolean_mask(t, mask) for t in (image, counts, id_str))

    return ds.map(select, num_parallel_calls=tf.data.AUTOTUNE).rebatch(batch_size).prefetch(tf.data.AUTOTUNE)


def labelled_dataset(shard_dir: str | Path, spec: QuestionSpec, ids: np.ndarray, threads: int | None = None
                     ) -> tf.data.Dataset:
    """Unbatched (image, (k, N)) of the labelled pool galaxies ``ids``: one filtered pass over the train shards,
    cached in memory (the labelled set only), in the shards' fixed order."""
    ds = split_stream(shard_dir, "train", spec, ids, threads=threads)
    return ds.unbatch().map(lambda image, counts, _id: (image, counts)).cache()


def mc_rho(model: keras.Model, images: np.ndarray, sampling: MCSampling, chunk: int = PREDICT_CHUNK) -> np.ndarray:
    """[G, T] rho from T = A x D MC samples (augmented trunk passes x head dropout masks), ``chunk`` galaxies at a
    time (as ``gzmorph predict``)."""
    from gzmorph.predict import chunk_passes, rho_functions

    mc, _ = rho_functions(model, sampling.dropout_masks)
    chunks = [rho for rho, _, _ in chunk_passes(mc, None, images, sampling.augmentations, chunk)]
    return np.concatenate(chunks).astype(np.float64) if chunks else np.empty((0, sampling.passes), np.float64)


def stream_rho(model: keras.Model, data: Any, sampling: MCSampling) -> tuple[np.ndarray, np.ndarray]:
    """(rho [G, T] float64, id_str [G] bytes) of T MC samples over batches (image, counts, id_str), e.g.
    :func:`split_stream`: one batch in memory at a time."""
    from gzmorph.predict import chunk_passes, rho_functions

    mc, _ = rho_functions(model, sampling.dropout_masks)
    rhos, ids = [], []
    for rho, _, (_counts, id_str) in chunk_passes(mc, None, data, sampling.augmentations):
        rhos.append(rho)
        ids.append(np.asarray(id_str))
    if not rhos:
        return np.empty((0, sampling.passes), np.float64), np.empty(0, object)
    return np.concatenate(rhos).astype(np.float64), np.concatenate(ids)


def split_rho(model: keras.Model, data: Any, sampling: MCSampling, split: Split) -> tuple[np.ndarray, np.ndarray]:
    """(positions in ``split`` in increasing order, their rho [G, T]) of the streamed ``data``."""
    rho, ids = stream_rho(model, data, sampling)
    pos = split.positions(ids)
    order = np.argsort(pos, kind="stable")
    return pos[order], rho[order]


def validation_dataset(shard_dir: str | Path, spec: QuestionSpec, n_val: int, limit: int | None,
                       threads: int | None = None) -> tuple[tf.data.Dataset, int]:
    """(batches of the val split for early stopping, galaxies in it), cached in memory after the first epoch.

    ``limit`` (``active_learning.val_galaxies``): the first ``limit`` val galaxies in the shards' fixed order, the
    same for every iteration, strategy and repeat; None or 0: the whole val split.  Each iteration trains on a
    few hundred labels for a few hundred steps, so streaming thousands of val galaxies after every epoch would
    cost as much as the training itself.
    """
    from gzmorph.inputs import vote_dataset

    n = n_val if not limit else min(int(limit), n_val)
    ds = vote_dataset(shard_dir, "val", spec, PREDICT_CHUNK, threads=threads, n_galaxies=n_val)
    if n < n_val:
        ds = ds.unbatch().take(n).batch(PREDICT_CHUNK)
    return ds.cache(), n


def bald_scores(rho: np.ndarray, n: int) -> np.ndarray:
    """BALD score per galaxy: mutual information (eq. 24) of T passes rho [G, T] with N = n."""
    from gzmorph.acquisition import mutual_information

    return mutual_information(rho, n)


def evaluate(rho: np.ndarray, data: Split) -> tuple[float, float]:
    """(eval_loss, eval_rmse) of the MC-mean rho: eq. 6 loss per galaxy (mean) and RMSE against k / N."""
    from gzmorph.evaluate import rmse
    from gzmorph.losses import binomial_nll

    mean = rho.mean(axis=1)
    loss = float(np.mean(np.asarray(binomial_nll(data.k, data.n, mean))))
    return loss, rmse(mean, data.fraction)


def check_question(params: dict[str, Any], question: str, strategy: str) -> dict[str, int]:
    al = params["active_learning"]
    if question not in al["questions"]:
        raise ConfigError(f"active_learning.questions: no question {question!r}; configured: "
                          f"{', '.join(al['questions'])}")
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {strategy!r}; strategies: {', '.join(STRATEGIES)}")
    return {k: int(v) for k, v in al["questions"][question].items()}


def _write_outputs(rows: list[dict], acquired: list[dict], out: str | Path, acquired_path: str | Path | None) -> None:
    import pandas as pd

    from gzmorph import io

    with io.atomic_path(out) as tmp:
        pd.DataFrame(rows, columns=list(RUN_COLUMNS)).to_csv(tmp, index=False)
    if acquired_path is not None:
        df = pd.DataFrame(acquired, columns=list(ACQUIRED_COLUMNS))
        df = df.astype({"iteration": "int64", "votes": "int64", "total_votes": "int64", "seed": "int64",
                        "score": "float64", "vote_fraction": "float64"})
        io.write_parquet(acquired_path, df)


def _train_model(params: dict[str, Any], spec: QuestionSpec, resolution: int, model_seed: int,
                 train: tf.data.Dataset, n_train: int, val: tf.data.Dataset, init: keras.Model | None = None
                 ) -> tuple[keras.Model, float, float, int]:
    """A model fitted by :func:`gzmorph.train.fit`; returns (model, train_loss, val_loss, epochs).

    ``train``: the ``n_train`` labelled galaxies, unbatched (image, (k, N)) (:func:`labelled_dataset`);
    ``val``: batches (image, (k, N)) for early stopping.  The losses are those of the kept epoch, whose
    weights the model holds.  ``init`` None: a fresh model seeded
    from ``model_seed``.  Otherwise ``init`` itself is trained further (warm start) with a fresh Adam and
    schedule; ``model_seed`` still seeds the shuffling, dropout and augmentation.  A fresh model sits on a
    plateau near the constant prediction for its first ~100 steps; with ``patience`` epochs of
    ``min_steps_per_epoch`` steps, early stopping could end training there and keep a plateau epoch (a
    "collapsed" iteration, RMSE ~ the constant predictor's).  So early stopping watches the val loss only from
    epoch ``min_epochs`` on (earlier epochs can neither stop training nor be kept).  This holds for warm starts
    too: a model that had barely left the plateau (16 labels) was knocked back onto it by the fresh Adam and,
    watched from its first epoch, kept there (RMSE 0.318 -> 0.353).
    """
    import keras
    import tensorflow as tf

    from gzmorph import train as training

    al = params["active_learning"]
    keras.utils.set_random_seed(model_seed)
    if init is None:
        from gzmorph.runtime import describe_device, precision_policy

        with precision_policy(params["train"]["mixed_precision"], describe_device()[1]):
            model = training.build_question_model({**params, "seed": model_seed}, spec, resolution)
    else:
        model = init
    # Small labelled sets would give epochs of one or two steps, too few for early stopping to judge: repeat the
    # (reshuffled) set so that every epoch has at least min_steps_per_epoch batches.
    batch_size = int(al["batch_size"])
    steps = max(math.ceil(n_train / batch_size), int(al["min_steps_per_epoch"]))
    data = (train.shuffle(max(n_train, 1), seed=model_seed, reshuffle_each_iteration=True).repeat().batch(batch_size)
            .prefetch(tf.data.AUTOTUNE))
    try:
        result = training.fit(model, data, val, settings=training.fit_settings(params, "active_learning"),
                              steps_per_epoch=steps)
    except training.TrainingDiverged as exc:
        raise training.TrainingDiverged(f"training {spec.question}: {exc}") from None
    return model, result.train_loss, result.val_loss, result.epochs


def iteration_seed(base_seed: int, seed: int, iteration: int) -> int:
    """The model / data-order seed of one iteration of repeat ``seed``: the same for BALD and random (paired),
    distinct across repeats and iterations (below 1000 iterations); layer seeds are hashed from it
    (:func:`gzmorph.model._sub_seed`), so close seeds give unrelated layers."""
    return base_seed + 1000 * seed + iteration


def simulate(params: dict[str, Any], question: str, strategy: str, seed: int, shard_dir: str | Path,
             out: str | Path, acquired_path: str | Path | None = None, *, threads: int | None = None
             ) -> pd.DataFrame:
    """One active-learning run; writes ``out`` (and ``acquired_path``) and returns the per-iteration table."""
    import pandas as pd

    from gzmorph.acquisition import acquire, expected_votes
    from gzmorph.inputs import effective_cut, question_spec, require_galaxies
    from gzmorph.predict import MCSampling
    from gzmorph.runtime import configure_threads, describe_device, seed_everything
    from gzmorph.shards import read_manifest

    sizes = check_question(params, question, strategy)
    manifest = read_manifest(shard_dir)
    spec = question_spec(params, question, manifest["tree"])
    al = params["active_learning"]
    sampling = MCSampling.of(al)
    warm_start = bool(al["warm_start"])
    configure_threads(threads)
    device, gpu = describe_device()
    base_seed = int(params["seed"])
    seed_everything(base_seed, gpu)

    pool = load_split(shard_dir, "train", spec)
    n_val = require_galaxies(shard_dir, "val", spec)
    test = load_split(shard_dir, "test", spec)
    val_data, n_val = validation_dataset(shard_dir, spec, n_val, al.get("val_galaxies"), threads)
    log.info("%s %s seed %d on %s: pool %d, val %d, test %d galaxies (N >= %d)", question, strategy, seed, device,
             len(pool), n_val, len(test), effective_cut(spec.min_total_votes))
    initial, per_iteration, iterations = sizes["initial"], sizes["per_iteration"], sizes["iterations"]
    if initial > len(pool):
        raise UserError(f"active_learning.questions.{question}.initial = {initial} exceeds the {len(pool)} "
                        "pool (train split) galaxies after the vote cut")
    if initial + per_iteration * iterations > len(pool):
        log.warning("the pool (%d) runs out before the last iteration; later iterations acquire fewer", len(pool))

    # Strategy-independent draws: same seed -> same initial set (paired BALD vs random runs).
    order = np.random.default_rng([base_seed, int(seed)]).permutation(len(pool))
    labelled = np.zeros(len(pool), dtype=bool)
    labelled[order[:initial]] = True
    random_order = np.random.default_rng([base_seed, int(seed), 1]).permutation(len(pool))

    rows: list[dict] = []
    acquired: list[dict] = []
    model = None
    for iteration in range(iterations + 1):
        start = time.perf_counter()
        model_seed = iteration_seed(base_seed, int(seed), iteration)
        model, train_loss, val_loss, epochs = _train_model(
            params, spec, int(manifest["resolution"]), model_seed,
            labelled_dataset(shard_dir, spec, pool.ids[labelled], threads), int(labelled.sum()), val_data,
            init=model if warm_start else None)
        test_pos, test_rho = split_rho(model, split_stream(shard_dir, "test", spec, threads=threads), sampling,
                                     test)
        if not np.array_equal(test_pos, np.arange(len(test))):
            raise RuntimeError(f"{shard_dir}: the test split changed during the run")
        eval_loss, eval_rmse = evaluate(test_rho, test)
        n_votes = int(al["expected_votes"] or expected_votes(pool.n[labelled], spec.min_total_votes))
        last = iteration == iterations
        candidates = np.flatnonzero(~labelled)
        if not last and candidates.size:
            if strategy == "bald":
                # the unlabelled pool, streamed; scores in pool (id) order, as candidates
                scored, rho = split_rho(model, split_stream(shard_dir, "train", spec, pool.ids[labelled], keep=False,
                                                            threads=threads), sampling, pool)
                if not np.array_equal(scored, candidates):
                    raise RuntimeError(f"{shard_dir}: scored {len(scored)} unlabelled pool galaxies, expected "
                                       f"{len(candidates)}")
                scores = bald_scores(rho, n_votes)
                best = acquire(scores, per_iteration)
                chosen, chosen_scores = candidates[best], scores[best]
            else:
                chosen = np.array([i for i in random_order if not labelled[i]][:per_iteration], dtype=np.int64)
                chosen_scores = np.full(len(chosen), np.nan)
            acquired += [{"question": question, "strategy": strategy, "seed": int(seed), "role": "acquired",
                          "iteration": iteration, "id_str": pool.ids[i], "score": float(s), "votes": int(pool.k[i]),
                          "total_votes": int(pool.n[i]), "vote_fraction": float(pool.fraction[i])}
                         for i, s in zip(chosen, chosen_scores, strict=True)]
        if last:  # Figs 15-16: how informative each test galaxy is to the final model
            test_scores = bald_scores(test_rho, n_votes)
            acquired += [{"question": question, "strategy": strategy, "seed": int(seed), "role": "test",
                          "iteration": iteration, "id_str": test.ids[i], "score": float(test_scores[i]),
                          "votes": int(test.k[i]), "total_votes": int(test.n[i]),
                          "vote_fraction": float(test.fraction[i])} for i in range(len(test))]
        rows.append({"question": question, "strategy": strategy, "seed": int(seed), "iteration": iteration,
                     "n_labelled": int(labelled.sum()), "n_acquired": int(labelled.sum()) - initial,
                     "train_loss": train_loss, "val_loss": val_loss, "eval_loss": eval_loss, "eval_rmse": eval_rmse,
                     "epochs": epochs, "expected_votes": n_votes if strategy == "bald" else 0,
                     "seconds": round(time.perf_counter() - start, 2)})
        if not last and candidates.size:
            labelled[chosen] = True
        log.info("%s %s seed %d iteration %d: %d labelled, %d epochs, eval loss %.4f, RMSE %.4f (%.0f s)", question,
                 strategy, seed, iteration, rows[-1]["n_labelled"], epochs, eval_loss, eval_rmse,
                 rows[-1]["seconds"])
        _write_outputs(rows, acquired, out, acquired_path)
    return pd.DataFrame(rows, columns=list(RUN_COLUMNS))


# ---------------------------------------------------------------------------------------------- summarize


def first_reach(n: np.ndarray, curve: np.ndarray, target: float) -> float:
    """Smallest n at which ``curve`` (sampled at increasing ``n``) is <= target, linearly interpolated; NaN if never."""
    n = np.asarray(n, np.float64)
    curve = np.asarray(curve, np.float64)
    hits = np.flatnonzero(curve <= target)
    if hits.size == 0:
        return float("nan")
    j = int(hits[0])
    if j == 0:
        return float(n[0])
    # curve[j - 1] > target >= curve[j]: linear interpolation between the two iterations
    frac = (curve[j - 1] - target) / (curve[j - 1] - curve[j])
    return float(n[j - 1] + frac * (n[j] - n[j - 1]))


def mean_curve(runs: pd.DataFrame, strategy: str, metric: str = "eval_rmse") -> tuple[np.ndarray, np.ndarray]:
    """(n_acquired, mean of ``metric`` over repeats) for one strategy, sorted by n_acquired."""
    sel = runs[runs["strategy"] == strategy].groupby("n_acquired")[metric].mean().sort_index()
    return sel.index.to_numpy(np.float64), sel.to_numpy(np.float64)


def labels_saved(n_random: float, n_bald: float) -> float:
    """1 - n_bald / n_random: the fraction fewer new labels BALD needs; NaN when undefined."""
    if not np.isfinite(n_bald) or not np.isfinite(n_random) or n_random <= 0:
        return float("nan")
    return float(1.0 - n_bald / n_random)


def bald_wins(runs: pd.DataFrame) -> tuple[bool, int, int]:
    """(BALD's final eval_rmse < random's for every seed with both runs, number of such seeds, seeds BALD wins)."""
    last = runs.sort_values("iteration").groupby(["strategy", "seed"]).tail(1)
    final = last.pivot(index="seed", columns="strategy", values="eval_rmse")
    if not {"bald", "random"} <= set(final.columns):
        return False, 0, 0
    paired = final.dropna(subset=["bald", "random"])
    won = int((paired["bald"] < paired["random"]).sum())
    return bool(len(paired) > 0 and won == len(paired)), int(len(paired)), won


def summarize_question(runs: pd.DataFrame) -> dict[str, Any]:
    """One summary row from one question's run tables (both strategies, all seeds)."""
    n_r, rmse_r = mean_curve(runs, "random")
    n_b, rmse_b = mean_curve(runs, "bald")
    wins, n_repeats, won = bald_wins(runs)
    row: dict[str, Any] = dict.fromkeys(SUMMARY_COLUMNS, float("nan"))
    row.update(question=runs["question"].iloc[0], bald_wins_all_repeats=wins, bald_wins=won, n_repeats=n_repeats)
    if len(n_r) and len(n_b):
        best = int(np.argmin(rmse_r))
        row.update(rmse_random_best=rmse_r[best], n_random_best=n_r[best], rmse_random_end=rmse_r[-1],
                   n_random_end=n_r[-1], rmse_bald_end=rmse_b[-1])
        row["labels_saved_best"] = labels_saved(n_r[best], first_reach(n_b, rmse_b, rmse_r[best]))
        row["labels_saved_end"] = labels_saved(n_r[-1], first_reach(n_b, rmse_b, rmse_r[-1]))
    return row


_COLOURS = {"bald": "tab:blue", "random": "tab:orange"}
_LABELS = {"bald": "BALD (mutual information)", "random": "random"}


def curves_figure(runs: pd.DataFrame, question: str) -> Figure:
    """Figs 11-12: train loss, eval loss and RMSE against labelled galaxies; mean and min-max over repeats."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 8), layout="constrained")
    axes = fig.subplots(3, 1, sharex=True)
    metrics = [("train_loss", "training loss (eq. 6)"), ("eval_loss", "evaluation loss (eq. 6, test)"),
               ("eval_rmse", "RMSE of rho vs k/N (test)")]
    for ax, (metric, label) in zip(axes, metrics, strict=True):
        for strategy in STRATEGIES:
            sel = runs[runs["strategy"] == strategy]
            if sel.empty:
                continue
            g = sel.groupby("n_labelled")[metric].agg(["mean", "min", "max"]).sort_index()
            n_seeds = sel["seed"].nunique()
            ax.plot(g.index, g["mean"], "o-", ms=3, color=_COLOURS[strategy],
                    label=f"{_LABELS[strategy]} ({n_seeds} run{'s' * (n_seeds != 1)})")
            ax.fill_between(g.index, g["min"], g["max"], color=_COLOURS[strategy], alpha=0.2, lw=0)
        ax.set_ylabel(label)
    fig.suptitle(f"{question}: active learning\n(mean over runs, min-max shaded)")
    axes[0].legend()
    axes[-1].set_xlabel("labelled galaxies")
    return fig


def acquired_figure(acquired: pd.DataFrame, question: str) -> Figure:
    """Figs 13-14: vote-fraction distribution of the acquired galaxies per iteration and in total, per strategy."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    sel = acquired[acquired["role"] == "acquired"]
    strategies = [s for s in STRATEGIES if (sel["strategy"] == s).any()] or list(STRATEGIES)
    fig = Figure(figsize=(5 * len(strategies), 4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(strategies), sharey=True))
    bins = np.linspace(0, 1, 11)
    iterations = sorted(sel["iteration"].unique())
    cmap = colormaps["viridis"]
    for ax, strategy in zip(axes, strategies, strict=True):
        s = sel[sel["strategy"] == strategy]
        for j, it in enumerate(iterations):
            f = s.loc[s["iteration"] == it, "vote_fraction"]
            if len(f):
                ax.hist(f, bins=bins, density=True, histtype="step", color=cmap(j / max(len(iterations) - 1, 1)),
                        label=f"iteration {it}")
        if len(s):
            ax.hist(s["vote_fraction"], bins=bins, density=True, histtype="step", color="k", lw=2.5,
                    label=f"total (mean {s['vote_fraction'].mean():.2f})")
        ax.set_title(f"{_LABELS[strategy]}: {len(s)} acquired, {s['seed'].nunique()} runs")
        ax.set_xlabel("observed vote fraction k/N")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("density")
    fig.suptitle(f"{question}: vote fractions of acquired galaxies")
    return fig


def informative_figure(scores: pd.DataFrame, images: dict[str, np.ndarray], question: str, n: int = 8) -> Figure:
    """Figs 15-16: the n most (top row) and n least (bottom row) informative test galaxies."""
    from matplotlib.figure import Figure

    ranked = scores.sort_values("score", ascending=False)
    rows = [("most", ranked.head(n)), ("least", ranked.tail(n).iloc[::-1])]
    fig = Figure(figsize=(1.6 * n, 4), layout="constrained")
    axes = fig.subplots(2, n, squeeze=False)
    for r, (label, sel) in enumerate(rows):
        for c in range(n):
            ax = axes[r, c]
            ax.set_axis_off()
            if c < len(sel):
                g = sel.iloc[c]
                ax.imshow(images[g["id_str"]])
                ax.set_title(f"MI {g['score']:.3f}\nk/N {g['votes']}/{g['total_votes']}", fontsize=7)
        axes[r, 0].text(-0.1, 0.5, f"{label}\ninformative", transform=axes[r, 0].transAxes, ha="right",
                        va="center", fontsize=8)
    fig.suptitle(f"{question}: test galaxies by mutual information under the final BALD model")
    return fig


def _read_runs(paths: list[str | Path]) -> pd.DataFrame:
    import pandas as pd

    frames = []
    for p in paths:
        df = pd.read_csv(p)
        missing = [c for c in ("question", "strategy", "seed", "iteration", "n_labelled", "n_acquired", "train_loss",
                               "eval_loss", "eval_rmse") if c not in df.columns]
        if missing:
            raise UserError(f"{p}: not an active-learning run table (missing {missing})")
        frames.append(df)
    if not frames:
        raise UserError("no run tables given (--runs)")
    return pd.concat(frames, ignore_index=True)


def summarize(params: dict[str, Any], run_paths: list[str | Path], acquired_paths: list[str | Path],
              summary_path: str | Path, figure_dir: str | Path, shard_dir: str | Path | None = None
              ) -> pd.DataFrame:
    """Write summary.csv and the per-question figures; return the summary table."""
    import pandas as pd

    from gzmorph import io

    runs = _read_runs(run_paths)
    acquired = (pd.concat([pd.read_parquet(p) for p in acquired_paths], ignore_index=True) if acquired_paths
                else pd.DataFrame(columns=list(ACQUIRED_COLUMNS)))
    figure_dir = Path(figure_dir)
    figure_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for question, q_runs in runs.groupby("question", sort=False):
        rows.append(summarize_question(q_runs))
        io.save_figure(curves_figure(q_runs, question), figure_dir / f"{question}_curves.png", dpi=120)
        q_acq = acquired[acquired["question"] == question]
        io.save_figure(acquired_figure(q_acq, question), figure_dir / f"{question}_acquired.png", dpi=120)
        tests = q_acq[(q_acq["role"] == "test") & (q_acq["strategy"] == "bald")]
        if shard_dir is not None and len(tests):
            first = tests[tests["seed"] == tests["seed"].min()]
            images = _test_images(params, question, shard_dir, set(first["id_str"]))
            io.save_figure(informative_figure(first, images, question), figure_dir / f"{question}_informative.png",
                           dpi=120)
    summary = pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
    with io.atomic_path(summary_path) as tmp:
        summary.to_csv(tmp, index=False)
    log.info("active learning summary -> %s\n%s", summary_path, summary.to_string(index=False))
    return summary


def _test_images(params: dict[str, Any], question: str, shard_dir: str | Path, ids: set[str]) -> dict[str, np.ndarray]:
    from gzmorph.inputs import question_spec
    from gzmorph.shards import read_manifest

    spec = question_spec(params, question, read_manifest(shard_dir)["tree"])
    found: dict[str, np.ndarray] = {}
    for images, _, batch_ids in split_stream(shard_dir, "test", spec).as_numpy_iterator():  # one batch at a time
        for img, i in zip(images, batch_ids, strict=True):
            if i.decode() in ids:
                found[i.decode()] = img.copy()
    return found


# ---------------------------------------------------------------------------------------------- CLI


def run_command(args: argparse.Namespace) -> None:
    from gzmorph import config

    params = config.load(args.params)
    simulate(params, args.question, args.strategy, args.seed, args.shards, args.out, args.acquired,
             threads=args.threads)


def summarize_command(args: argparse.Namespace) -> None:
    from gzmorph import config

    params = config.load(args.params)
    runs, acquired = expand_run_paths(args.runs)
    summarize(params, runs, [*acquired, *(args.acquired or [])], args.summary, args.figures, args.shards)


def expand_run_paths(paths: list[str]) -> tuple[list[str], list[str]]:
    """Run CSVs as given, or found in a folder with their ``*_acquired.parquet`` files (as DVC passes them)."""
    runs: list[str] = []
    acquired: list[str] = []
    for path in map(Path, paths):
        if path.is_dir():
            runs += sorted(map(str, path.glob("*.csv")))
            acquired += sorted(map(str, path.glob("*_acquired.parquet")))
        else:
            runs.append(str(path))
    if not runs:
        raise UserError(f"no run CSVs in {', '.join(paths)}")
    return runs, acquired


def register(sub: argparse._SubParsersAction) -> None:
    from gzmorph import config

    p = sub.add_parser("active-learning", help="simulated active learning: BALD vs random acquisition")
    steps = p.add_subparsers(dest="step", required=True, metavar="STEP")

    r = steps.add_parser("run", help="one simulation: a question, a strategy and a seed")
    config.add_params_argument(r)
    r.add_argument("--question", required=True, help="question under active_learning.questions (e.g. bar)")
    r.add_argument("--strategy", required=True, choices=STRATEGIES, help="acquisition strategy")
    r.add_argument("--seed", type=int, required=True, help="repeat seed (one of active_learning.seeds)")
    r.add_argument("--shards", required=True, help="shard directory from `gzmorph shards`")
    r.add_argument("--out", required=True, help="output CSV: metrics per iteration")
    r.add_argument("--acquired", default=None, help="output parquet: acquired galaxies and final test scores")
    config.add_threads_argument(r, "TensorFlow ops and the input pipeline")
    r.set_defaults(func=run_command)

    s = steps.add_parser("summarize", help="labels saved, BALD-vs-random verdict and figures from all runs")
    config.add_params_argument(s)
    s.add_argument("--runs", nargs="+", required=True,
                   help="run CSVs from `active-learning run`, or folders holding them (and their acquired parquets)")
    s.add_argument("--acquired", nargs="*", default=[], help="acquired parquets from `active-learning run`")
    s.add_argument("--summary", required=True, help="output summary CSV, one row per question")
    s.add_argument("--figures", required=True, help="output folder for <question>_{curves,acquired}.png")
    s.add_argument("--shards", default=None, help="shard directory: adds <question>_informative.png (test images)")
    s.set_defaults(func=summarize_command)

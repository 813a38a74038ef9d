"""``gzmorph train``: fit one Bayesian CNN per question on vote counts (Walmsley et al. 2020, §2.5-2.6).

One model predicts the typical vote fraction rho of one answer (``train.questions.<q>.answer``)
and is trained on the binomial likelihood of the observed (k, N) vote counts (eq. 6,
:class:`gzmorph.losses.BinomialLoss`), so galaxies with few votes count for less without any
"clean sample" selection.

Data: the ``train`` and ``val`` splits of the shards written by ``gzmorph shards``.  Per galaxy
only two count columns are read, ``<q>_<answer>`` (k) and ``<q>_total-votes`` (N).  Galaxies
are kept when N >= max(min_total_votes, 1) (:func:`keep_mask`): the paper's cut (bar: N >= 10,
§2.6), and N = 0 galaxies (question never asked) carry no information.  The same rule decides
which test galaxies ``gzmorph predict`` evaluates.

Outputs, each written to a temporary file and renamed when complete: the best model by
validation loss (``--model``, a ``.keras`` file; EarlyStopping restores the same weights),
the per-epoch history CSV (``epoch, loss, val_loss``) and a loss-curve figure.

Runtime: GPU when TensorFlow sees one, CPU otherwise, with no change to the code path.
``--threads`` sets TensorFlow's intra/inter-op and tf.data thread pools.  ``train.mixed_precision``
computes in float16 (GPU) or bfloat16 (CPU); augmentation, logits and loss stay float32.
``keras.utils.set_random_seed(seed)`` plus seeded layers and a seeded shuffle make a run
repeatable; on CPU TensorFlow op determinism is also switched on (cheap there).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
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

log = logging.getLogger(__name__)

HISTORY_COLUMNS = ("epoch", "loss", "val_loss")


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
                 threads: int | None = None, n_galaxies: int | None = None) -> tf.data.Dataset:
    """Batches of (uint8 image [B,R,R,3], float32 (k, N) [B,2]) (+ id_str) after the vote cut.

    The reader shuffles, batches and parses whole batches in parallel; the cut is a vectorised
    mask per batch, and ``rebatch`` restores full batches, so no per-galaxy Python or tf.data
    element work is added.  ``n_galaxies`` (galaxies left after the cut, see
    :func:`count_galaxies`) lets Keras show a progress bar with a known length.
    """
    import tensorflow as tf

    from gzmorph.shards import make_dataset

    def select(image: tf.Tensor, counts: tf.Tensor, *ids: tf.Tensor) -> tuple[tf.Tensor, ...]:
        keep = keep_mask(counts[:, 1], spec.min_total_votes)
        return tuple(tf.boolean_mask(t, keep) for t in (image, counts, *ids))

    ds = make_dataset(shard_dir, split, columns=spec.columns, batch_size=batch_size, shuffle=shuffle,
                      seed=seed, with_ids=with_ids, counts_dtype="float32")
    ds = ds.map(select, num_parallel_calls=tf.data.AUTOTUNE).rebatch(batch_size)
    if n_galaxies is not None:
        ds = ds.apply(tf.data.experimental.assert_cardinality(math.ceil(n_galaxies / batch_size)))
    if threads:
        options = tf.data.Options()
        options.threading.private_threadpool_size = int(threads)
        ds = ds.with_options(options)
    return ds.prefetch(tf.data.AUTOTUNE)


def count_galaxies(shard_dir: str | Path, split: str, spec: QuestionSpec) -> tuple[int, int]:
    """(galaxies in the split, galaxies kept by the cut): one pass reading only N (and raw image bytes)."""
    from gzmorph.shards import make_dataset

    total = kept = 0
    # Small batches: the reader also parses the images, and a few large batches in flight would cost
    # hundreds of MB (256 x 128 px galaxies are 12 MB).
    for _, counts in make_dataset(shard_dir, split, columns=[spec.total_column], batch_size=256,
                                  counts_dtype="int64").as_numpy_iterator():
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


def configure_threads(threads: int | None) -> None:
    """TensorFlow intra/inter-op threads; only possible before TF's runtime starts (else a no-op)."""
    import tensorflow as tf

    if not threads:
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(int(threads))
        tf.config.threading.set_inter_op_parallelism_threads(int(threads))
    except RuntimeError:  # runtime already initialised (e.g. a second call in one process)
        log.debug("TensorFlow already initialised; thread settings unchanged")


def describe_device() -> tuple[str, bool]:
    """(human-readable device, is_gpu); logged so a run's log says where it ran."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        return f"GPU ({', '.join(g.name for g in gpus)})", True
    return "CPU (no GPU visible)", False


def seed_everything(seed: int, gpu: bool) -> None:
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(int(seed))
    if not gpu:
        # Deterministic kernels cost little on CPU; on GPU they can cost a lot, so left off there.
        tf.config.experimental.enable_op_determinism()


@contextmanager
def precision_policy(mixed: bool, gpu: bool) -> Iterator[str]:
    """Global Keras dtype policy while the model is built (layers take it at construction), then restored."""
    import keras

    previous = keras.mixed_precision.global_policy()
    name = ("mixed_float16" if gpu else "mixed_bfloat16") if mixed else "float32"
    keras.mixed_precision.set_global_policy(name)
    try:
        yield name
    finally:
        keras.mixed_precision.set_global_policy(previous)


def build_question_model(params: dict[str, Any], spec: QuestionSpec, resolution: int) -> keras.Model:
    """Fig. 3 CNN for this question: shard images (resolution px) -> crop/resize to train.input_size."""
    from gzmorph.model import build_model

    tp = params["train"]
    return build_model(
        input_size=int(resolution), channels=3, crop_zoom=spec.crop_zoom, crop_mode=spec.crop_mode,
        output_size=int(tp["input_size"]), dropout_rate=float(tp["dropout_rate"]), seed=int(params["seed"]),
        augment=True,
    )


def best_epoch(history: pd.DataFrame) -> int:
    """Row index of the lowest validation loss (what EarlyStopping restores and the checkpoint holds)."""
    return int(np.nanargmin(history["val_loss"].to_numpy(np.float64)))


def loss_figure(history: pd.DataFrame, title: str = "") -> Figure:
    """Training and validation loss per epoch (1-based), best epoch marked."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    epochs = history["epoch"].to_numpy() + 1
    ax.plot(epochs, history["loss"], "o-", ms=3, label="training")
    ax.plot(epochs, history["val_loss"], "s-", ms=3, label="validation")
    best = best_epoch(history)
    ax.axvline(epochs[best], color="0.5", ls="--", lw=1)
    ax.plot(epochs[best], history["val_loss"].iloc[best], "k*", ms=12,
            label=f"best: epoch {epochs[best]} (val {history['val_loss'].iloc[best]:.3f})")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("binomial loss per galaxy (eq. 6, mean)")
    ax.set_title(title)
    ax.legend()
    return fig


def _progress_verbosity(progress: bool) -> int:
    # A live bar in a terminal; one line per epoch in logs (Snakemake), where bars are noise.
    if not progress:
        return 0
    return 1 if sys.stdout.isatty() else 2


@dataclass
class TrainResult:
    history: pd.DataFrame
    best_epoch: int  # 0-based row of history
    n_train: int
    n_val: int
    device: str
    policy: str


def train(params: dict[str, Any], question: str, shard_dir: str | Path, model_path: str | Path,
          history_path: str | Path, figure_path: str | Path | None = None, *, threads: int | None = None,
          progress: bool = True) -> TrainResult:
    """Train the question's model on the shards' train split, early-stopped on the val split."""
    import keras
    import pandas as pd

    from gzmorph import io
    from gzmorph.losses import BinomialLoss
    from gzmorph.shards import read_manifest

    if Path(model_path).suffix != ".keras":
        raise ConfigError(f"--model {model_path}: must end in .keras (the Keras v3 format)")
    manifest = read_manifest(shard_dir)  # FileNotFoundError with a plain message when missing
    spec = question_spec(params, question, manifest["tree"])
    configure_threads(threads)
    device, gpu = describe_device()
    log.info("training %s (%s = %s) on %s", question, spec.votes_column, spec.answer, device)

    tp = params["train"]
    seed = int(params["seed"])
    # Before any dataset exists: tf.data's shuffle order depends on the global seed as well as its own.
    seed_everything(seed, gpu)
    batch_size = int(tp["batch_size"])
    n_train = require_galaxies(shard_dir, "train", spec)
    n_val = require_galaxies(shard_dir, "val", spec)
    train_ds = vote_dataset(shard_dir, "train", spec, batch_size, shuffle=True, seed=seed, threads=threads,
                            n_galaxies=n_train)
    val_ds = vote_dataset(shard_dir, "val", spec, batch_size, threads=threads, n_galaxies=n_val)

    with precision_policy(bool(tp["mixed_precision"]), gpu) as policy:
        model = build_question_model(params, spec, manifest["resolution"])
    log.info("dtype policy %s; %d trainable parameters", policy, model.count_params())
    # compile wraps the optimizer in a LossScaleOptimizer under mixed_float16.
    model.compile(optimizer=keras.optimizers.Adam(float(tp["learning_rate"])), loss=BinomialLoss())

    with io.atomic_path(model_path) as tmp_model, io.atomic_path(history_path) as tmp_history:
        callbacks = [
            keras.callbacks.EarlyStopping(monitor="val_loss", patience=int(tp["patience"]),
                                          restore_best_weights=True),
            keras.callbacks.ModelCheckpoint(str(tmp_model), monitor="val_loss", save_best_only=True),
            keras.callbacks.CSVLogger(str(tmp_history)),
            keras.callbacks.TerminateOnNaN(),
        ]
        model.fit(train_ds, validation_data=val_ds, epochs=int(tp["max_epochs"]), callbacks=callbacks,
                  shuffle=False, verbose=_progress_verbosity(progress))  # the dataset shuffles itself
        history = pd.read_csv(tmp_history)
        if tmp_model.stat().st_size == 0 or not np.isfinite(history["val_loss"]).any():
            raise RuntimeError(f"training {question}: validation loss was never finite; no model saved")
    best = best_epoch(history)
    if figure_path is not None:
        io.save_figure(loss_figure(history, f"{question}: rho({spec.answer}), {n_train} training galaxies"),
                       figure_path, dpi=120)
    log.info("%s: %d epochs, best epoch %d (val_loss %.4f) -> %s", question, len(history), best + 1,
             history["val_loss"].iloc[best], model_path)
    return TrainResult(history, best, n_train, n_val, device, policy)


def load_model(path: str | Path, compile: bool = False) -> keras.Model:
    """Reload a trained model; importing model/losses registers their serializable classes."""
    import keras

    import gzmorph.losses  # noqa: F401
    import gzmorph.model  # noqa: F401

    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: no such model; run `gzmorph train` first")
    return keras.saving.load_model(path, compile=compile)


def run(args: argparse.Namespace) -> None:
    from gzmorph import config

    params = config.load(args.params)
    train(params, args.question, args.shards, args.model, args.history, args.figure, threads=args.threads,
          progress=not args.no_progress)


def register(sub: argparse._SubParsersAction) -> None:
    from gzmorph import config

    p = sub.add_parser("train", help="train one question's Bayesian CNN on vote counts")
    config.add_params_argument(p)
    p.add_argument("--question", required=True, help="question under train.questions (e.g. bar)")
    p.add_argument("--shards", required=True, help="shard directory from `gzmorph shards`")
    p.add_argument("--model", required=True, help="output model (.keras): the best epoch by validation loss")
    p.add_argument("--history", required=True, help="output CSV: loss and val_loss per epoch")
    p.add_argument("--figure", default=None, help="output loss-curve figure (png/pdf)")
    config.add_threads_argument(p, "TensorFlow ops and the input pipeline")
    p.add_argument("--no-progress", action="store_true", help="no progress display")
    p.set_defaults(func=run)

"""``gzmorph train``: fit one Bayesian CNN per question on vote counts (Walmsley et al. 2020, §2.5-2.6).

One model predicts the typical vote fraction rho of one answer (``train.questions.<q>.answer``)
and is trained on the binomial likelihood of the observed (k, N) vote counts (eq. 6,
:class:`gzmorph.losses.BinomialLoss`), so galaxies with few votes count for less without any
"clean sample" selection.

What lives where:

* :mod:`gzmorph.inputs`: which galaxies a model sees (the question's (k, N) columns and the vote cut
  N >= max(min_total_votes, 1)) and the tf.data reader of the shards' splits.
* :mod:`gzmorph.runtime`: threads, device, seeds and the mixed-precision policy.
* here: the model of a question (:func:`build_question_model`), the ONE training loop (:func:`fit`), used by
  ``gzmorph train`` (:func:`train`) and by active learning (:func:`gzmorph.active_learning._train_model`),
  reloading a trained model (:func:`load_model`) and the loss figure.

:func:`fit` compiles the model with Adam, the learning-rate schedule of ``train.schedule`` and the binomial
loss, and runs ``model.fit`` with Keras callbacks:

* the schedule (:func:`learning_rate_schedule`): ``cosine``, a linear warm-up from 0 over ``warmup_epochs``,
  then cosine decay to ``train.min_learning_rate`` at ``max_epochs`` (``keras.optimizers.schedules.
  CosineDecay`` with ``warmup_steps``/``warmup_target``); ``plateau``, the same warm-up, then the rate is
  halved after ``plateau_patience`` epochs without a lower val loss (``keras.callbacks.ReduceLROnPlateau``,
  never below ``min_learning_rate``); ``constant``;
* early stopping on the val loss (``keras.callbacks.EarlyStopping``, ``restore_best_weights``,
  ``start_from_epoch=min_epochs``), or with ``val_loss_smoothing`` > 0 on its exponential moving average
  (:func:`smoothed`, history column ``val_loss_smoothed``), so that epoch-to-epoch noise neither ends a slowly
  improving training nor picks the kept epoch: epochs before ``min_epochs`` can neither stop training nor be kept.  A
  fresh model sits on a plateau near the constant prediction for its first ~100 steps; watched from its first
  epoch, early stopping could end training there.  The kept epoch (:func:`kept_epoch`) is the lowest finite
  val loss from ``min_epochs`` on (the first, on ties), or the last epoch when training ended before
  ``min_epochs``.  Keras 3 restores those weights at the end of training whether or not it stopped early;
  the model is saved only then, so the saved model holds exactly the kept epoch's weights (a ModelCheckpoint
  watching every epoch could have saved an earlier, pre-``min_epochs`` one);
* ``TerminateOnNaN``, and a CSV history (``CSVLogger``).

Outputs of ``gzmorph train``, each written to a temporary file and renamed when complete: the model at the
kept epoch (``--model``, a ``.keras`` file), the per-epoch history CSV (``epoch, learning_rate, loss,
val_loss``; ``learning_rate`` is the rate at the end of the epoch, before ReduceLROnPlateau acts) and a
loss-curve figure with the kept epoch marked.

Runtime: GPU when TensorFlow sees one, CPU otherwise, with no change to the code path.  With more than one
GPU (``train.distribute``: ``auto``, the default, or ``mirrored``) the model is built and trained under a
``tf.distribute.MirroredStrategy``, one replica per GPU, ``train.batch_size`` per replica (see :func:`train`).
``--threads`` sets TensorFlow's intra/inter-op and tf.data thread pools.  ``train.mixed_precision``
computes in float16 (GPU) or bfloat16 (CPU); augmentation, logits and loss stay float32.
Seeds (:func:`gzmorph.runtime.seed_everything`) plus seeded layers and a seeded shuffle make a run repeatable.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import math
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gzmorph.config import ConfigError

if TYPE_CHECKING:
    import keras
    import pandas as pd
    import tensorflow as tf
    from matplotlib.figure import Figure

    from gzmorph.inputs import QuestionSpec
    from gzmorph.tree import DecisionTree

log = logging.getLogger(__name__)

HISTORY_COLUMNS = ("epoch", "learning_rate", "loss", "val_loss")
SCHEDULES = ("cosine", "plateau", "constant")
PLATEAU_FACTOR = 0.5  # ReduceLROnPlateau: the learning rate is halved on a plateau


class TrainingDiverged(RuntimeError):
    """The validation loss at the kept epoch is not finite: no usable model."""


def trunk_widths(own: dict[str, Any]) -> dict[str, Any]:
    """``filters`` and ``dense_units`` of :func:`gzmorph.model.build_model` from a model's own settings
    (``trunk_filters``, ``dense_units`` of ``train.questions.<q>`` or ``train.tree``; default Fig. 3's)."""
    from gzmorph.model import PAPER_DENSE_UNITS, PAPER_FILTERS

    return {"filters": tuple(int(f) for f in own.get("trunk_filters", PAPER_FILTERS)),
            "dense_units": int(own.get("dense_units", PAPER_DENSE_UNITS))}


def build_question_model(params: dict[str, Any], spec: QuestionSpec, resolution: int) -> keras.Model:
    """Fig. 3 CNN (or a wider trunk) for this question: shard images (resolution px) -> crop/resize to input_size."""
    from gzmorph.model import build_model

    tp = params["train"]
    return build_model(
        input_size=int(resolution), channels=3, crop_zoom=spec.crop_zoom, crop_mode=spec.crop_mode,
        output_size=int(tp["input_size"]), dropout_rate=float(tp["dropout_rate"]), seed=int(params["seed"]),
        augment=True, **trunk_widths(tp["questions"].get(spec.question, {})),
    )


def tree_settings(params: dict[str, Any]) -> dict[str, Any]:
    """``train.tree``: the whole-tree model's crop (and optional max_epochs)."""
    return params["train"]["tree"]


def tree_question_weights(params: dict[str, Any], tree: DecisionTree) -> dict[str, float]:
    """``train.tree.question_weights``, checked against the tree: a ConfigError naming the setting if wrong."""
    from gzmorph.losses import question_weight_vector

    weights = {str(q): float(w) for q, w in (tree_settings(params).get("question_weights") or {}).items()}
    try:
        question_weight_vector(tree, weights)
    except ValueError as exc:
        raise ConfigError(f"params.yaml train.tree.question_weights: {exc}") from None
    return weights


def build_tree_model(params: dict[str, Any], tree: DecisionTree, resolution: int) -> keras.Model:
    """The whole-tree model (Walmsley et al. 2021): Fig. 3's trunk (or a wider one), concentrations for every answer."""
    from gzmorph.model import build_model

    tp, own = params["train"], tree_settings(params)
    return build_model(
        input_size=int(resolution), channels=3, crop_zoom=tuple(own["crop_zoom"]), crop_mode=own["crop_mode"],
        output_size=int(tp["input_size"]), dropout_rate=float(tp["dropout_rate"]), seed=int(params["seed"]),
        augment=True, concentrations=tree.n_answers(), head=str(own.get("head", "bounded")),
        answer_questions=tree.answer_question_index, **trunk_widths(own),
    )


# ---------------------------------------------------------------------------------------------- the training loop


@dataclass(frozen=True)
class FitSettings:
    """How :func:`fit` trains: epochs, early stopping and the learning-rate schedule."""

    learning_rate: float  # the peak rate: after warm-up (cosine, plateau), or throughout (constant)
    max_epochs: int
    min_epochs: int = 0  # EarlyStopping start_from_epoch
    patience: int = 1  # epochs without a lower val loss (from min_epochs on) before stopping
    schedule: str = "constant"  # one of SCHEDULES
    warmup_epochs: int = 0  # linear warm-up from 0 (cosine, plateau)
    min_learning_rate: float = 0.0  # cosine: the rate at max_epochs; plateau: the floor
    plateau_patience: int = 1  # plateau: epochs without a lower val loss before halving
    smoothing: float = 0.0  # early stopping and the kept epoch follow an EMA of the val loss with this weight

    def __post_init__(self) -> None:
        if not 0 <= self.smoothing < 1:
            raise ConfigError(f"val_loss_smoothing {self.smoothing:g} must be in [0, 1)")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"unknown learning-rate schedule {self.schedule!r}; schedules: {', '.join(SCHEDULES)}")
        if not 0 <= self.min_learning_rate <= self.learning_rate:
            raise ConfigError(f"train.min_learning_rate {self.min_learning_rate:g} must be between 0 and "
                              f"train.learning_rate {self.learning_rate:g}")


def fit_settings(params: dict[str, Any], section: str = "train", question: str | None = None, *,
                 tree: bool = False) -> FitSettings:
    """:class:`FitSettings` of ``train`` or ``active_learning``.

    The peak and final learning rates and the kind of schedule are always ``train``'s; epoch counts
    (``max_epochs, min_epochs, patience, warmup_epochs, plateau_patience``) are the section's own, except
    that ``train.questions.<question>.max_epochs`` (or, with ``tree``, ``train.tree.max_epochs``), where set,
    overrides ``train.max_epochs``.
    """
    tp, own = params["train"], params[section]
    max_epochs = own["max_epochs"]
    if section == "train" and question is not None:
        max_epochs = tp["questions"][question].get("max_epochs", max_epochs)
    if section == "train" and tree:
        max_epochs = tree_settings(params).get("max_epochs", max_epochs)
    return FitSettings(
        learning_rate=float(tp["learning_rate"]), schedule=str(tp["schedule"]),
        min_learning_rate=float(tp["min_learning_rate"]), max_epochs=int(max_epochs),
        min_epochs=int(own["min_epochs"]), patience=int(own["patience"]), warmup_epochs=int(own["warmup_epochs"]),
        plateau_patience=int(own["plateau_patience"]), smoothing=float(own.get("val_loss_smoothing", 0.0)),
    )


def smoothed(val_loss: Any, weight: float) -> np.ndarray:
    """Exponential moving average s_t = weight s_(t-1) + (1 - weight) v_t of per-epoch val losses, s_0 = v_0.

    A non-finite v_t is missing: s_t = s_(t-1) (NaN until the first finite value).  ``weight`` 0 returns the
    losses themselves.  Early stopping on s instead of v is not ended by one lucky epoch of a noisy, slowly
    falling loss, and the kept epoch is not the one that happened to draw the easiest val noise.
    """
    values = np.asarray(val_loss, np.float64)
    if weight == 0:
        return values.copy()
    out = np.empty_like(values)
    state = np.nan
    for t, v in enumerate(values):
        if np.isfinite(v):
            state = v if not np.isfinite(state) else weight * state + (1 - weight) * v
        out[t] = state
    return out


def kept_epoch(val_loss: Any, min_epochs: int) -> int:
    """The epoch (0-based) whose weights :func:`fit` keeps, from the per-epoch val losses.

    What EarlyStopping(start_from_epoch=min_epochs, restore_best_weights=True) restores, non-finite val
    losses being ignored: the lowest finite val loss from ``min_epochs`` on (the first, on ties); the last
    epoch when training ended before ``min_epochs`` or no watched epoch was finite (nothing restored).
    """
    val_loss = np.asarray(val_loss, np.float64)
    watched = val_loss[min_epochs:]
    if not np.isfinite(watched).any():
        return len(val_loss) - 1
    return int(min_epochs + np.nanargmin(np.where(np.isfinite(watched), watched, np.nan)))


@functools.cache
def _callbacks() -> Any:
    """The Keras callback classes :func:`fit` adds (built on first use: keras is imported lazily)."""
    import keras

    class LogLearningRate(keras.callbacks.Callback):
        """``logs["learning_rate"]``: the optimizer's rate at the end of the epoch (read by History, CSVLogger)."""

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            if logs is not None:
                logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

    class LinearWarmup(keras.callbacks.Callback):
        """Learning rate target * step / steps for the first ``steps`` optimizer steps (as CosineDecay's warm-up).

        ``step`` is the optimizer's step count, like a schedule's: under mixed_float16 the steps the loss
        scaling skips do not count.
        """

        def __init__(self, target: float, steps: int):
            super().__init__()
            self.target, self.steps, self.done = float(target), int(steps), False

        def on_train_begin(self, logs: dict | None = None) -> None:
            self.done = self.steps <= 0
            if not self.done:
                self.model.optimizer.learning_rate = 0.0

        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            if self.done:
                return
            step = min(int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)), self.steps)
            self.model.optimizer.learning_rate = self.target * step / self.steps  # the rate of the next step
            self.done = step >= self.steps

    class PlateauAfterWarmup(keras.callbacks.ReduceLROnPlateau):
        """ReduceLROnPlateau that ignores the warm-up epochs."""

        def __init__(self, start_from_epoch: int, **kwargs: Any):
            super().__init__(**kwargs)
            self.start_from_epoch = int(start_from_epoch)

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            if epoch >= self.start_from_epoch:
                super().on_epoch_end(epoch, logs)

    class SmoothedValLoss(keras.callbacks.Callback):
        """``logs["val_loss_smoothed"]``: :func:`smoothed` val loss, for EarlyStopping (runs before it)."""

        def __init__(self, weight: float):
            super().__init__()
            self.weight, self.values = float(weight), []

        def on_train_begin(self, logs: dict | None = None) -> None:
            self.values = []

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            if logs is not None:
                self.values.append(float(logs.get("val_loss", np.nan)))
                logs["val_loss_smoothed"] = float(smoothed(self.values, self.weight)[-1])

    class FiniteEarlyStopping(keras.callbacks.EarlyStopping):
        """EarlyStopping that treats a non-finite val loss as missing (never kept, no patience used).

        Plain EarlyStopping would keep a NaN first watched epoch as "best" (it stores the first watched
        epoch's weights unconditionally and nothing compares below NaN).
        """

        def get_monitor_value(self, logs: dict | None) -> float | None:
            value = super().get_monitor_value(logs)
            return value if value is not None and math.isfinite(value) else None

    return types.SimpleNamespace(LogLearningRate=LogLearningRate, LinearWarmup=LinearWarmup,
                                 PlateauAfterWarmup=PlateauAfterWarmup, FiniteEarlyStopping=FiniteEarlyStopping,
                                 SmoothedValLoss=SmoothedValLoss)


def learning_rate_schedule(settings: FitSettings, steps_per_epoch: int) -> tuple[Any, list[keras.callbacks.Callback]]:
    """(Adam's learning_rate argument, callbacks that drive it) for ``settings.schedule``.

    cosine: CosineDecay from 0 up to ``learning_rate`` over ``warmup_epochs``, then down to
    ``min_learning_rate`` at ``max_epochs`` (held there if training went on).  plateau: the same warm-up by
    a callback (a schedule's rate cannot be changed by ReduceLROnPlateau), then ReduceLROnPlateau(factor
    0.5, patience ``plateau_patience``, min_lr ``min_learning_rate``) from the first epoch after warm-up.
    """
    import keras

    cb = _callbacks()
    lr = settings.learning_rate
    warmup_steps = max(settings.warmup_epochs, 0) * int(steps_per_epoch)
    if settings.schedule == "constant":
        return lr, []
    if settings.schedule == "cosine":
        decay_steps = max(settings.max_epochs - settings.warmup_epochs, 1) * int(steps_per_epoch)
        alpha = settings.min_learning_rate / lr
        if warmup_steps == 0:
            return keras.optimizers.schedules.CosineDecay(lr, decay_steps, alpha=alpha), []
        return keras.optimizers.schedules.CosineDecay(0.0, decay_steps, alpha=alpha, warmup_target=lr,
                                                      warmup_steps=warmup_steps), []
    plateau = cb.PlateauAfterWarmup(settings.warmup_epochs, monitor="val_loss", factor=PLATEAU_FACTOR,
                                    patience=settings.plateau_patience, min_lr=settings.min_learning_rate)
    if warmup_steps == 0:
        return lr, [plateau]
    return 0.0, [cb.LinearWarmup(lr, warmup_steps), plateau]


@dataclass
class FitResult:
    history: pd.DataFrame  # HISTORY_COLUMNS, one row per epoch trained
    kept_epoch: int  # 0-based row of history whose weights the model holds
    stopped_early: bool  # EarlyStopping ended training before max_epochs

    @property
    def epochs(self) -> int:
        return len(self.history)

    @property
    def train_loss(self) -> float:
        """Training loss of the kept epoch (dropout and augmentation on)."""
        return float(self.history["loss"].iloc[self.kept_epoch])

    @property
    def val_loss(self) -> float:
        return float(self.history["val_loss"].iloc[self.kept_epoch])


def _steps_of(dataset: tf.data.Dataset) -> int:
    steps = int(dataset.cardinality())
    if steps <= 0:  # tf.data.INFINITE_CARDINALITY (-1), UNKNOWN_CARDINALITY (-2), or empty
        raise ValueError("fit: the training dataset's length is unknown or infinite; pass steps_per_epoch")
    return steps


def fit(model: keras.Model, train_ds: tf.data.Dataset, val_ds: Any, *, settings: FitSettings,
        steps_per_epoch: int | None = None, checkpoint: str | Path | None = None,
        history: str | Path | None = None, verbose: int = 0, loss: keras.losses.Loss | None = None) -> FitResult:
    """Compile ``model`` (fresh Adam with the schedule, binomial loss) and train it; the one training loop.

    ``loss`` defaults to :class:`gzmorph.losses.BinomialLoss`; the whole-tree model passes
    :class:`gzmorph.losses.DirichletMultinomialLoss`.
    ``train_ds`` yields (uint8 images, float32 (k, N)) batches (whole tree: every answer's counts); a finite
    dataset is one epoch, an infinite (repeated) one needs ``steps_per_epoch``.  ``val_ds`` is Keras
    ``validation_data``.  On return the model holds the weights of the kept epoch (:func:`kept_epoch`); with
    ``checkpoint`` (a ``.keras`` path) it is saved there, with ``history`` the per-epoch CSV is written there,
    both atomically and only when the kept epoch's val loss is finite (else :class:`TrainingDiverged`, nothing
    written).  Batches may carry a third element, per-galaxy sample weights (``gzmorph finetune`` balances
    classes so).
    """
    import keras
    import pandas as pd

    from gzmorph import io
    from gzmorph.losses import BinomialLoss

    cb = _callbacks()
    steps = int(steps_per_epoch) if steps_per_epoch is not None else _steps_of(train_ds)
    if settings.min_epochs >= settings.max_epochs:
        log.warning("min_epochs %d >= max_epochs %d: early stopping never acts, the last epoch is kept",
                    settings.min_epochs, settings.max_epochs)
    learning_rate, schedule_callbacks = learning_rate_schedule(settings, steps)
    # compile wraps the optimizer in a LossScaleOptimizer under mixed_float16.
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss if loss is not None else BinomialLoss())
    monitor = "val_loss_smoothed" if settings.smoothing > 0 else "val_loss"
    stopper = cb.FiniteEarlyStopping(monitor=monitor, mode="min", patience=settings.patience,
                                     restore_best_weights=True, start_from_epoch=settings.min_epochs)
    with contextlib.ExitStack() as outputs:
        smoother = [cb.SmoothedValLoss(settings.smoothing)] if settings.smoothing > 0 else []
        callbacks = [cb.LogLearningRate(), *smoother, *schedule_callbacks, stopper, keras.callbacks.TerminateOnNaN()]
        if history is not None:
            callbacks.append(keras.callbacks.CSVLogger(str(outputs.enter_context(io.atomic_path(history)))))
        logged = model.fit(train_ds, validation_data=val_ds, epochs=settings.max_epochs,
                           steps_per_epoch=steps_per_epoch, callbacks=callbacks, shuffle=False,  # data shuffles
                           verbose=verbose)
        frame = pd.DataFrame({"epoch": logged.epoch, **logged.history})
        frame = frame[["epoch", *sorted(c for c in frame.columns if c != "epoch")]]
        kept = kept_epoch(smoothed(frame["val_loss"], settings.smoothing), settings.min_epochs)
        restored = stopper.best_epoch if stopper.best_weights is not None else len(frame) - 1
        if restored != kept:  # cannot happen unless Keras's EarlyStopping changes behaviour
            raise RuntimeError(f"EarlyStopping kept epoch {restored + 1}, expected {kept + 1}")
        if not np.isfinite(frame["val_loss"].iloc[kept]):
            raise TrainingDiverged(f"validation loss at the kept epoch {kept + 1} is {frame['val_loss'].iloc[kept]}"
                                   f" (finite from epoch {settings.min_epochs + 1} on: never)")
        if checkpoint is not None:
            model.save(outputs.enter_context(io.atomic_path(checkpoint)))
    return FitResult(frame.reset_index(drop=True), kept, stopped_early=len(frame) < settings.max_epochs)


# ---------------------------------------------------------------------------------------------- gzmorph train


def loss_figure(history: pd.DataFrame, kept: int, min_epochs: int = 0, title: str = "",
                ylabel: str = "binomial loss per galaxy (eq. 6, mean)") -> Figure:
    """Training and validation loss per epoch (1-based), the kept epoch marked; learning rate on the right."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    epochs = history["epoch"].to_numpy() + 1
    if min_epochs > 0:
        ax.axvspan(0.5, min(min_epochs, len(epochs)) + 0.5, color="0.92", lw=0,
                   label=f"before min_epochs ({min_epochs}): not kept")
    ax.plot(epochs, history["loss"], "o-", ms=3, label="training")
    ax.plot(epochs, history["val_loss"], "s-", ms=3, label="validation")
    if "val_loss_smoothed" in history:
        ax.plot(epochs, history["val_loss_smoothed"], "-", color="tab:orange", lw=2, alpha=0.5,
                label="validation, smoothed (early stopping)")
    ax.axvline(epochs[kept], color="0.5", ls="--", lw=1)
    ax.plot(epochs[kept], history["val_loss"].iloc[kept], "k*", ms=12,
            label=f"kept: epoch {epochs[kept]} (val {history['val_loss'].iloc[kept]:.3f})")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    if "learning_rate" in history:
        lr_ax = ax.twinx()
        lr_ax.plot(epochs, history["learning_rate"], ":", color="tab:green", lw=1.5)
        lr_ax.set_ylabel("learning rate (dotted)", color="tab:green")
        lr_ax.set_ylim(bottom=0)
    return fig


def _progress_verbosity(progress: bool) -> int:
    # A live bar in a terminal; one line per epoch in logs (Snakemake), where bars are noise.
    if not progress:
        return 0
    return 1 if sys.stdout.isatty() else 2


@dataclass
class TrainResult:
    history: pd.DataFrame
    kept_epoch: int  # 0-based row of history: the saved weights
    n_train: int
    n_val: int
    device: str
    policy: str
    replicas: int = 1  # model replicas training in sync (train.distribute); 1 on the one-device path


def train(params: dict[str, Any], question: str | None, shard_dir: str | Path, model_path: str | Path,
          history_path: str | Path, figure_path: str | Path | None = None, *, threads: int | None = None,
          progress: bool = True) -> TrainResult:
    """Train the question's model (``question`` None: the whole-tree model of the shards' tree) on the shards'
    train split, early-stopped on the val split."""
    from gzmorph import io
    from gzmorph.inputs import fits_in_cache, question_spec, require_galaxies, tree_dataset, tree_spec, vote_dataset
    from gzmorph.losses import DirichletMultinomialLoss
    from gzmorph.runtime import (
        configure_threads,
        describe_device,
        distribution_strategy,
        precision_policy,
        seed_everything,
    )
    from gzmorph.shards import read_manifest
    from gzmorph.tree import get_tree

    if Path(model_path).suffix != ".keras":
        raise ConfigError(f"--model {model_path}: must end in .keras (the Keras v3 format)")
    manifest = read_manifest(shard_dir)  # FileNotFoundError with a plain message when missing
    tree = get_tree(manifest["tree"])
    if question is None:  # whole tree: the root question's N >= 1 is the cut, counted from its histogram
        spec = tree_spec(tree, tree_settings(params)["crop_mode"], tree_settings(params)["crop_zoom"])
        settings = fit_settings(params, "train", tree=True)
        name = f"the {tree.name} tree"
    else:
        spec = question_spec(params, question, manifest["tree"])
        settings = fit_settings(params, "train", question)
        name = question
    configure_threads(threads)
    device, gpu = describe_device()
    if question is None:
        log.info("training the whole-tree model: %d questions, %d answers, on %s", len(tree.questions),
                 tree.n_answers(), device)
    else:
        log.info("training %s (%s = %s) on %s", question, spec.votes_column, spec.answer, device)

    tp = params["train"]
    seed = int(params["seed"])
    # Before any dataset exists: tf.data's shuffle order depends on the global seed as well as its own.
    seed_everything(seed, gpu)
    # train.distribute: with several GPUs, one replica per GPU (MirroredStrategy). train.batch_size is the
    # batch of ONE replica, so the global batch the dataset yields (and Keras splits) is batch_size x replicas:
    # each GPU holds the batch it was sized for and an epoch takes 1/replicas the steps. The learning rate is
    # not scaled. One device (or distribute: none): strategy None, the unchanged path.
    strategy = distribution_strategy(str(tp.get("distribute", "auto")))
    replicas = strategy.num_replicas_in_sync if strategy is not None else 1
    scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
    if strategy is not None:
        log.info("MirroredStrategy over %d replicas (%s); global batch %d x %d", replicas,
                 ", ".join(strategy.extended.worker_devices), int(tp["batch_size"]), replicas)
    batch_size = int(tp["batch_size"]) * replicas
    n_train = require_galaxies(shard_dir, "train", spec)
    n_val = require_galaxies(shard_dir, "val", spec)
    cache = fits_in_cache(shard_dir, ("train", "val"), float(tp.get("cache_mb", 0)))
    log.info("train and val images %s", f"held in memory (train.cache_mb {tp.get('cache_mb', 0)})" if cache
             else "read from the shards every epoch (above train.cache_mb)")
    if question is None:
        train_ds = tree_dataset(shard_dir, "train", tree, batch_size, shuffle=True, seed=seed, threads=threads,
                                n_galaxies=n_train, cache=cache)
        val_ds = tree_dataset(shard_dir, "val", tree, batch_size, threads=threads, n_galaxies=n_val, cache=cache)
    else:
        train_ds = vote_dataset(shard_dir, "train", spec, batch_size, shuffle=True, seed=seed, threads=threads,
                                n_galaxies=n_train, cache=cache)
        val_ds = vote_dataset(shard_dir, "val", spec, batch_size, threads=threads, n_galaxies=n_val, cache=cache)

    with scope:  # variables (model, optimizer) are created, and mirrored, under the strategy
        with precision_policy(tp["mixed_precision"], gpu) as policy:
            if question is None:
                model = build_tree_model(params, tree, manifest["resolution"])
            else:
                model = build_question_model(params, spec, manifest["resolution"])
        log.info("dtype policy %s; %d trainable parameters; %s learning rate %g, %d-%d epochs", policy,
                 model.count_params(), settings.schedule, settings.learning_rate, settings.min_epochs,
                 settings.max_epochs)
        loss = (DirichletMultinomialLoss(tree.name, tree_question_weights(params, tree),
                                         str(tree_settings(params).get("likelihood", "dirichlet_multinomial")))
                if question is None else None)
        try:
            result = fit(model, train_ds, val_ds, settings=settings, checkpoint=model_path,
                         history=history_path, verbose=_progress_verbosity(progress), loss=loss)
        except TrainingDiverged as exc:
            raise TrainingDiverged(f"training {name}: {exc}; no model saved") from None
    history, kept = result.history, result.kept_epoch
    if figure_path is not None:
        if question is None:
            figure = loss_figure(history, kept, settings.min_epochs,
                                 f"{tree.name} tree: {tree.n_answers()} answers, {n_train} training galaxies",
                                 "Dirichlet-multinomial loss per galaxy (sum over questions, mean)")
        else:
            figure = loss_figure(history, kept, settings.min_epochs,
                                 f"{question}: rho({spec.answer}), {n_train} training galaxies")
        io.save_figure(figure, figure_path, dpi=120)
    log.info("%s: %d epochs (%s), kept epoch %d (val_loss %.4f) -> %s", name, len(history),
             "stopped early" if result.stopped_early else "max_epochs reached", kept + 1,
             history["val_loss"].iloc[kept], model_path)
    return TrainResult(history, kept, n_train, n_val, device, policy, replicas)


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

    p = sub.add_parser("train", help="train one question's Bayesian CNN (or the whole-tree model) on vote counts")
    config.add_params_argument(p)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--question", help="question under train.questions (e.g. bar): its binomial model")
    which.add_argument("--tree", action="store_true",
                       help="the whole-tree Dirichlet-multinomial model of the shards' decision tree (train.tree)")
    p.add_argument("--shards", required=True, help="shard directory from `gzmorph shards`")
    p.add_argument("--model", required=True,
                   help="output model (.keras): the kept epoch (lowest val loss from train.min_epochs on)")
    p.add_argument("--history", required=True, help="output CSV: learning rate, loss and val_loss per epoch")
    p.add_argument("--figure", default=None, help="output loss-curve figure (png/pdf)")
    config.add_threads_argument(p, "TensorFlow ops and the input pipeline")
    p.add_argument("--no-progress", action="store_true", help="no progress display")
    p.set_defaults(func=run)

"""``gzmorph finetune``: new labels on a trained network (transfer learning, Walmsley et al. 2022 / zoobot).

A trained gzmorph model is a trunk (augmentation, convolutions, dense layer, MC dropout) and a head (the last
Dense layer).  Fine-tuning keeps the trunk, puts a fresh head on it for a label the volunteers were never asked
about, trains the head with the trunk frozen, then optionally unfreezes the trunk's last weight layers at a lower
learning rate.  :func:`trunk` cuts at the INPUT of the model's last Dense layer, so it works for any model whose
head ends in a Dense layer (the per-question binomial model; the whole-tree model too).

Labels come from a small catalog (CSV or parquet) of image paths and a label: zoobot's ring layout
``iauname, local_png_loc, ring`` loads as it is (:func:`read_labels`); vote counts (k, N) instead of a 0/1
label train a binomial head (:class:`gzmorph.losses.BinomialLoss`).  An optional ``split`` column (train/test)
fixes the held-out part; without it a seeded, stratified part is held out.  Images are read from disk (PNG/JPEG,
any size) by :func:`gzmorph.shards.load_image`, so they are resampled exactly as the shards the trunk was trained
on (PIL Lanczos to the model's input resolution), with no shards written.

Training is :func:`gzmorph.train.fit` (the one training loop: Adam, early stopping on val loss with best weights
restored), with a per-galaxy sample weight that balances the two classes.  The same architecture trained from
scratch (:func:`scratch_model`: the base model's layers re-initialised) is the baseline of the learning curve.

Sub-commands: ``ring-labels`` (a simulated expert label set with known truth), ``vote-labels`` (a survey's vote
counts of one answer as a label catalog), ``fit``, ``predict``, ``curve`` (fine-tuned vs scratch against the
number of labels) and ``cross-survey`` (a model trained on one survey predicting the other's cross-matched
galaxies).
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from gzmorph.config import UserError

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

HEADS = ("binary", "votes")
RING_LAYOUT = ("iauname", "local_png_loc", "ring")  # zoobot's ring example catalog


# ---------------------------------------------------------------------------------------------- label catalogs


@dataclass(frozen=True)
class LabelColumns:
    """Which catalog columns hold the id, the image path and the label (k and N for vote counts)."""

    id: str = "iauname"
    image: str = "local_png_loc"
    label: str = "ring"  # binary: 0/1; votes: k, the votes for the answer
    total: str | None = None  # votes: N, the volunteers asked; None: binary labels

    @property
    def head(self) -> str:
        return "binary" if self.total is None else "votes"


def _read_table(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such label catalog")
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    if path.suffix in (".csv", ".gz") or path.name.endswith(".csv.gz"):
        return pd.read_csv(path)
    raise UserError(f"{path}: label catalogs are .csv or .parquet")


def _bad_row(path: Path, mask: np.ndarray, column: str, why: str) -> None:
    if mask.any():
        row = int(np.flatnonzero(mask)[0])
        raise UserError(f"{path}: data row {row + 1}, column {column!r}: {why} ({int(mask.sum())} such rows)")


def read_labels(path: str | Path, columns: LabelColumns = LabelColumns(),
                image_root: str | Path | None = None) -> pd.DataFrame:
    """The label catalog as ``id_str, image, label, total, split`` (``split``: train/test or empty).

    Binary labels must be 0/1 (or booleans), vote counts integers with 0 <= k <= N.  Relative image paths are
    taken from ``image_root`` (default: the current directory, the repository root, as catalogs' file_loc).
    A bad row raises :class:`UserError` naming the file, the first bad data row (1-based) and the column.
    """
    path = Path(path)
    df = _read_table(path)
    wanted = [columns.id, columns.image, columns.label] + ([columns.total] if columns.total else [])
    missing = [c for c in wanted if c not in df.columns]
    if missing:
        raise UserError(f"{path}: no column {missing[0]!r}; columns: {', '.join(map(str, df.columns))}")
    if df.empty:
        raise UserError(f"{path}: no rows")
    label = pd.to_numeric(df[columns.label].map(lambda v: int(v) if isinstance(v, bool | np.bool_) else v),
                          errors="coerce").to_numpy(float)
    _bad_row(path, ~np.isfinite(label), columns.label, "not a number")
    if columns.total is None:
        _bad_row(path, ~np.isin(label, (0.0, 1.0)), columns.label, "a binary label must be 0 or 1")
        total = np.ones_like(label)
    else:
        total = pd.to_numeric(df[columns.total], errors="coerce").to_numpy(float)
        _bad_row(path, ~np.isfinite(total), columns.total, "not a number")
        _bad_row(path, (label != np.round(label)) | (label < 0), columns.label, "vote counts are whole numbers >= 0")
        _bad_row(path, (total != np.round(total)) | (total < label), columns.total,
                 f"N must be a whole number >= the votes in {columns.label!r}")
    images = df[columns.image]
    _bad_row(path, images.isna().to_numpy() | (images.astype(str).str.strip() == "").to_numpy(), columns.image,
             "no image path")
    root = Path(image_root) if image_root is not None else Path()
    resolved = [str(p if Path(p).is_absolute() else root / p) for p in images.astype(str)]
    exists = np.array([Path(p).is_file() for p in resolved])
    _bad_row(path, ~exists, columns.image, f"image file not found: {resolved[int(np.argmin(exists))]}")
    split = df["split"].astype(str).to_numpy() if "split" in df.columns else np.full(len(df), "")
    _bad_row(path, ~np.isin(split, ("", "train", "test")), "split", "split must be train or test")
    ids = df[columns.id].astype(str)
    _bad_row(path, ids.duplicated().to_numpy(), columns.id, "duplicate id")
    return pd.DataFrame({"id_str": ids.to_numpy(), "image": resolved, "label": label, "total": total,
                         "split": split})


def positive(labels: pd.DataFrame) -> np.ndarray:
    """The class of each row: the 0/1 label, or the volunteers' majority k/N > 0.5 for vote counts."""
    return labels["label"].to_numpy() / np.maximum(labels["total"].to_numpy(), 1) > 0.5


def load_images(labels: pd.DataFrame, resolution: int, source: str | Path = "catalog",
                threads: int | None = None) -> np.ndarray:
    """uint8 [G, R, R, 3] of the catalog's images, resampled as the shards are (:func:`gzmorph.shards.load_image`)."""
    from gzmorph.shards import ImageError, load_image

    def one(path: str) -> bytes | ImageError:
        try:
            return load_image(path, resolution)
        except ImageError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=max(int(threads or 1), 1)) as pool:  # PIL releases the GIL decoding
        decoded = list(pool.map(one, labels["image"]))
    for row, data in enumerate(decoded):
        if isinstance(data, ImageError):
            raise UserError(f"{source}: data row {row + 1}, column image ({labels['image'].iloc[row]}): {data}")
    return np.frombuffer(b"".join(decoded), np.uint8).reshape(len(decoded), resolution, resolution, 3)


def held_out(labels: pd.DataFrame, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of the evaluation rows: the ``split`` column's test rows, else a stratified seeded draw."""
    if (labels["split"] != "").any():
        return (labels["split"] == "test").to_numpy()
    return stratified_draw(positive(labels), fraction, seed)


def stratified_draw(classes: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Mask choosing round(fraction x count) rows of each class at random (at least one of each when possible)."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(classes), bool)
    for c in (False, True):
        rows = np.flatnonzero(classes == c)
        take = min(max(round(fraction * len(rows)), 1), len(rows) - 1) if len(rows) > 1 else 0
        mask[rng.choice(rows, take, replace=False)] = True
    return mask


def balanced_subset(classes: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Row indices of n labels: half of each class where the classes allow, the rest from the larger one."""
    rng = np.random.default_rng(seed)
    pos, neg = rng.permutation(np.flatnonzero(classes)), rng.permutation(np.flatnonzero(~classes))
    if n > len(classes):
        raise UserError(f"{n} labels asked for, the label set has {len(classes)} training rows")
    n_pos = min(len(pos), max(n // 2, n - len(neg)))
    return np.sort(np.r_[pos[:n_pos], neg[:n - n_pos]])


def class_weights(classes: np.ndarray) -> np.ndarray:
    """Per-row weight n / (2 n_class): both classes weigh the same in the loss (1 each when balanced)."""
    classes = np.asarray(classes, bool)
    n_pos = classes.sum()
    n_neg = len(classes) - n_pos
    if n_pos == 0 or n_neg == 0:
        return np.ones(len(classes), np.float32)
    return np.where(classes, len(classes) / (2 * n_pos), len(classes) / (2 * n_neg)).astype(np.float32)


# ---------------------------------------------------------------------------------------------- the network


def trunk(model: keras.Model) -> keras.Model:
    """The model up to its head: inputs -> the input of its last Dense layer (what the head reads)."""
    import keras

    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    if not dense:
        raise UserError(f"model {model.name}: no Dense layer, so no head to replace")
    return keras.Model(model.inputs, dense[-1].input, name="trunk")


def with_new_head(body: keras.Model, head: str, seed: int) -> keras.Model:
    """``body`` (a trunk, kept as one nested layer so it freezes as one) + a fresh Dense head of ``head``."""
    import keras

    from gzmorph.model import _sub_seed

    if head not in HEADS:
        raise UserError(f"head {head!r}: heads are {', '.join(HEADS)}")
    images = keras.Input(body.input_shape[1:], dtype="uint8", name="image")
    units = 1 if head == "binary" else 2  # one logit; or the two logits rho = softmax(...)[0] of losses.py
    init = keras.initializers.GlorotUniform(seed=_sub_seed(seed, 99))
    logits = keras.layers.Dense(units, dtype="float32", kernel_initializer=init, name=f"{head}_head")(body(images))
    return keras.Model(images, logits, name=f"finetune_{head}")


def scratch_model(base: keras.Model) -> keras.Model:
    """The base model's architecture with freshly initialised weights (the from-scratch baseline)."""
    import keras

    return keras.models.clone_model(base)


def weight_layers(body: keras.Model) -> list[keras.layers.Layer]:
    return [layer for layer in body.layers if layer.weights]


def freeze(body: keras.Model, unfrozen: int = 0) -> None:
    """Freeze the trunk but its last ``unfrozen`` weight layers (convolutions, dense)."""
    body.trainable = True  # (Keras 3 does not pass this on to layers frozen before, so each is set below)
    layers = weight_layers(body)
    first = max(len(layers) - int(unfrozen), 0)
    for i, layer in enumerate(layers):
        layer.trainable = i >= first


def loss_of(head: str) -> keras.losses.Loss:
    import keras

    from gzmorph.losses import BinomialLoss

    return keras.losses.BinaryCrossentropy(from_logits=True) if head == "binary" else BinomialLoss()


def targets(labels: pd.DataFrame, head: str) -> np.ndarray:
    if head == "binary":
        return labels["label"].to_numpy(np.float32)[:, None]
    return labels[["label", "total"]].to_numpy(np.float32)


def probability(logits: np.ndarray, head: str) -> np.ndarray:
    """p(label) from the head's logits: sigmoid of one logit, or rho of the two (losses.rho_from_logits)."""
    from gzmorph.losses import rho_from_logits

    logits = np.asarray(logits, np.float32)
    if head == "binary":
        return 1.0 / (1.0 + np.exp(-logits[:, 0]))
    return np.asarray(rho_from_logits(logits))


# ---------------------------------------------------------------------------------------------- training


@dataclass(frozen=True)
class Settings:
    """``finetune`` params: the two phases' epochs and learning rates, early stopping, batches."""

    head_epochs: int
    unfreeze_epochs: int
    unfreeze_layers: int
    learning_rate: float
    unfreeze_learning_rate: float
    min_epochs: int
    patience: int
    batch_size: int
    min_steps_per_epoch: int
    val_fraction: float

    @classmethod
    def of(cls, params: dict[str, Any]) -> Settings:
        fp = params["finetune"]
        return cls(**{f: fp[f] for f in cls.__dataclass_fields__})


def _dataset(images: np.ndarray, y: np.ndarray, w: np.ndarray, batch: int, seed: int | None, steps: int | None):
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((images, y, w))
    if seed is not None:
        ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True).repeat()
    return ds.batch(batch).prefetch(tf.data.AUTOTUNE) if steps is None else ds.batch(batch).take(steps)


def _fit_phase(model, images, y, w, val, settings: Settings, *, learning_rate: float, epochs: int, seed: int,
               loss) -> Any:
    from gzmorph.train import FitSettings, fit

    steps = max(math.ceil(len(images) / settings.batch_size), settings.min_steps_per_epoch)
    train_ds = _dataset(images, y, w, settings.batch_size, seed, None)
    fs = FitSettings(learning_rate=learning_rate, max_epochs=epochs, min_epochs=min(settings.min_epochs, epochs - 1),
                     patience=settings.patience)
    return fit(model, train_ds, val, settings=fs, steps_per_epoch=steps, loss=loss)


@dataclass
class Trained:
    model: Any
    epochs: int  # trained in all phases
    seconds: float


def train_labels(base: keras.Model | None, images: np.ndarray, labels: pd.DataFrame, head: str,
                 settings: Settings, seed: int, *, scratch_of: keras.Model | None = None) -> Trained:
    """Fine-tune ``base`` (head, then last layers unfrozen) or, with ``scratch_of``, train its fresh clone.

    The rows are split (stratified, seeded) into training and early-stopping (val) rows; classes are balanced by
    sample weights.  Scratch gets the same epochs budget, all layers trainable from the start, at the head phase's
    learning rate.
    """
    from gzmorph.runtime import seed_everything

    start = time.perf_counter()
    seed_everything(seed, gpu=False)
    classes = positive(labels)
    val_mask = stratified_draw(classes, settings.val_fraction, seed + 1)
    y, fit_rows = targets(labels, head), ~val_mask
    # each part balanced among its own rows, so the val loss weighs both classes alike too
    w_fit, w_val = class_weights(classes[fit_rows]), class_weights(classes[val_mask])
    val_ds = _dataset(images[val_mask], y[val_mask], w_val, settings.batch_size, None, None)
    loss = loss_of(head)
    if scratch_of is not None:
        body = trunk(scratch_model(scratch_of))
        model = with_new_head(body, head, seed)
        result = _fit_phase(model, images[fit_rows], y[fit_rows], w_fit, val_ds, settings,
                            learning_rate=settings.learning_rate, seed=seed, loss=loss,
                            epochs=settings.head_epochs + settings.unfreeze_epochs)
        return Trained(model, result.epochs, time.perf_counter() - start)
    body = trunk(base)
    freeze(body, 0)
    model = with_new_head(body, head, seed)
    result = _fit_phase(model, images[fit_rows], y[fit_rows], w_fit, val_ds, settings,
                        learning_rate=settings.learning_rate, epochs=settings.head_epochs, seed=seed, loss=loss)
    epochs = result.epochs
    if settings.unfreeze_epochs > 0 and settings.unfreeze_layers > 0:
        freeze(body, settings.unfreeze_layers)
        result = _fit_phase(model, images[fit_rows], y[fit_rows], w_fit, val_ds, settings,
                            learning_rate=settings.unfreeze_learning_rate, epochs=settings.unfreeze_epochs,
                            seed=seed + 2, loss=loss)
        epochs += result.epochs
    return Trained(model, epochs, time.perf_counter() - start)


def predict_logits(model: keras.Model, images: np.ndarray, passes: int = 0, chunk_size: int = 256
                   ) -> tuple[np.ndarray, np.ndarray | None]:
    """(deterministic logits [G, U], MC logits [G, T, U] or None): T passes of MC dropout + augmentation."""
    from gzmorph.predict import chunk_passes, pass_functions

    mc, point = pass_functions(model)  # T full passes: fine-tuned heads differ from Fig. 3's
    if passes <= 0:
        out = [point(images[i:i + chunk_size]).numpy() for i in range(0, len(images), chunk_size)]
        return np.concatenate(out) if out else np.zeros((0, model.output_shape[-1]), np.float32), None
    points, draws = [], []
    for rho, rho_point, _ in chunk_passes(mc, point, images, passes, chunk_size):
        draws.append(rho)
        points.append(rho_point)
    return np.concatenate(points), np.concatenate(draws)


def evaluate(model: keras.Model, images: np.ndarray, labels: pd.DataFrame, head: str) -> dict[str, Any]:
    """Accuracy, ROC AUC and the confusion matrix (positive: label 1, or the volunteers' majority) on these rows."""
    from gzmorph.evaluate import auc, confusion, rmse, roc_curve

    p = probability(predict_logits(model, images)[0], head)
    actual = positive(labels)
    counts = confusion(actual, p > 0.5)
    out = {"n": counts.n, "n_positive": int(actual.sum()), "accuracy": counts.accuracy,
           "roc_auc": auc(roc_curve(p, actual)), "confusion": counts.as_dict()}
    if head == "votes":
        out["rmse_vote_fraction"] = rmse(p, labels["label"] / labels["total"].clip(lower=1))
    return out


def prediction_frame(model: keras.Model, images: np.ndarray, labels: pd.DataFrame, head: str, passes: int
                     ) -> pd.DataFrame:
    point, draws = predict_logits(model, images, passes)
    frame = pd.DataFrame({"id_str": labels["id_str"].to_numpy(), "p": probability(point, head)})
    if draws is not None:
        t = draws.shape[1]
        p_mc = probability(draws.reshape(-1, draws.shape[-1]), head).reshape(-1, t)
        frame["p_mc_mean"], frame["p_mc_std"] = p_mc.mean(1), p_mc.std(1)
    return frame


# ---------------------------------------------------------------------------------------------- label sets


def ring_labels(catalog: pd.DataFrame, survey: dict[str, Any], params: dict[str, Any]) -> pd.DataFrame:
    """A simulated expert ring label set (zoobot layout + ``split``), labels from the truth.

    A ring is labelled when its visibility (:func:`gzmorph.sim.volunteers.visibility`: ring_strength x resolution of
    0.5 r_eff under the seeing x outer-disk S/N x face-on) reaches ``finetune.ring.min_visibility``; galaxies with
    ring_strength 0 are the negatives, drawn from ``finetune.ring.negatives`` (any galaxy, or disks only).  Rings
    with visibility between 0 and the threshold are left out: an expert could not call them either way.  Training
    rows come from the shards' train split only (up to ``n_labels``, half rings where there are enough), the
    held-out rows from val + test (all visible rings, as many negatives).
    """
    from gzmorph.sim.volunteers import visibility
    from gzmorph.split import assign

    rp = params["finetune"]["ring"]
    truth = {c[len("truth_"):]: catalog[c].to_numpy() for c in catalog.columns
             if c.startswith("truth_") and not c.startswith("truth_rho_")}
    if "ring_strength" not in truth:
        raise UserError("catalog has no truth_ring_strength column: ring labels need a simulated catalog")
    seen = visibility(truth, survey).ring
    ring = seen >= float(rp["min_visibility"])
    negative = truth["ring_strength"] == 0
    if rp["negatives"] == "disk":
        negative &= truth["morphology"] == "disk"
    split = assign(catalog["id_str"], int(params["seed"]), params["shards"]["split"])
    rng_seed = int(params["seed"])
    rows, parts = [], []
    for part, mask, n in (("train", split == "train", int(rp["n_labels"])), ("test", split != "train", None)):
        pos, neg = np.flatnonzero(mask & ring), np.flatnonzero(mask & negative)
        # held out: every visible ring and as many ring-free (at least 2 rows, so a tiny sky still evaluates)
        n = min(max(2 * len(pos), 2) if n is None else n, len(pos) + len(neg))
        if len(pos) == 0:
            log.warning("ring labels, %s: no ring reaches visibility %g; ring-free galaxies only", part,
                        rp["min_visibility"])
        candidates = np.r_[pos, neg]
        chosen = candidates[balanced_subset(np.r_[np.ones(len(pos), bool), np.zeros(len(neg), bool)], n, rng_seed)]
        rows.append(chosen)
        parts += [part] * len(chosen)
        log.info("ring labels, %s: %d rings (visibility >= %g) of %d, %d chosen in all", part, int(ring[chosen].sum()),
                 rp["min_visibility"], len(pos), len(chosen))
    rows = np.concatenate(rows)
    return pd.DataFrame({"iauname": catalog["id_str"].to_numpy()[rows],
                         "local_png_loc": catalog["file_loc"].to_numpy()[rows],
                         "ring": ring[rows].astype(np.int64), "ring_visibility": seen[rows],
                         "split": parts})


def vote_labels(catalog: pd.DataFrame, params: dict[str, Any], question: str, answers: list[str],
                n_labels: int) -> pd.DataFrame:
    """A survey's volunteer votes as a label catalog: k = votes for ``answers`` (summed), N = the question's total.

    Training rows from the shards' train split (at most ``n_labels``, at random), held-out rows from its test split;
    galaxies nobody was asked the question about are left out.
    """
    from gzmorph.split import assign

    total = catalog[f"{question}_total-votes"].to_numpy()
    k = sum(catalog[f"{question}_{a}"].to_numpy() for a in answers)
    split = assign(catalog["id_str"], int(params["seed"]), params["shards"]["split"])
    rng = np.random.default_rng(int(params["seed"]))
    train_rows = rng.permutation(np.flatnonzero((split == "train") & (total > 0)))[:n_labels]
    test_rows = np.flatnonzero((split == "test") & (total > 0))
    rows = np.r_[train_rows, test_rows]
    return pd.DataFrame({"id_str": catalog["id_str"].to_numpy()[rows], "file_loc": catalog["file_loc"].to_numpy()[rows],
                         "k": k[rows], "total": total[rows],
                         "split": ["train"] * len(train_rows) + ["test"] * len(test_rows)})


# ---------------------------------------------------------------------------------------------- stages


def _load_base(path: str | Path) -> keras.Model:
    from gzmorph.train import load_model

    return load_model(path)


def _resolution(model: keras.Model) -> int:
    return int(model.input_shape[1])


def _columns(args: argparse.Namespace) -> LabelColumns:
    return LabelColumns(id=args.id_column, image=args.image_column, label=args.label_column, total=args.total_column)


def fit_stage(params: dict[str, Any], base_path: str | Path, labels_path: str | Path, columns: LabelColumns,
              model_path: str | Path, metrics_path: str | Path, predictions_path: str | Path | None = None, *,
              image_root: str | Path | None = None, threads: int | None = None) -> dict[str, Any]:
    """Fine-tune ``base_path`` on the label catalog; metrics on its held-out part, predictions for all its rows."""
    from gzmorph import io
    from gzmorph.runtime import configure_threads

    configure_threads(threads)
    settings, seed = Settings.of(params), int(params["seed"])
    labels = read_labels(labels_path, columns, image_root)
    base = _load_base(base_path)
    images = load_images(labels, _resolution(base), labels_path, threads)
    test = held_out(labels, settings.val_fraction, seed)
    trained = train_labels(base, images[~test], labels[~test].reset_index(drop=True), columns.head, settings, seed)
    metrics = {"head": columns.head, "n_train": int((~test).sum()), "epochs": trained.epochs,
               "seconds": round(trained.seconds, 1), "held_out": evaluate(trained.model, images[test],
                                                                         labels[test], columns.head)}
    log.info("fine-tuned %s on %d labels in %.0f s: held-out accuracy %.3f, ROC AUC %.3f", base_path,
             metrics["n_train"], trained.seconds, metrics["held_out"]["accuracy"], metrics["held_out"]["roc_auc"])
    with io.atomic_path(model_path) as tmp:
        trained.model.save(tmp)
    io.write_json(metrics_path, metrics)
    if predictions_path is not None:
        frame = prediction_frame(trained.model, images, labels, columns.head, int(params["finetune"]["passes"]))
        frame["label"], frame["total"], frame["held_out"] = labels["label"], labels["total"], test
        io.write_parquet(predictions_path, frame)
    return metrics


def curve(params: dict[str, Any], base: keras.Model, images: np.ndarray, labels: pd.DataFrame, head: str,
          sizes: list[int], seeds: list[int]) -> pd.DataFrame:
    """Fine-tuned vs scratch on n labels of the training rows, scored on the fixed held-out rows; one row per run."""
    settings = Settings.of(params)
    test = held_out(labels, settings.val_fraction, int(params["seed"]))
    pool, pool_images = labels[~test].reset_index(drop=True), images[~test]
    rows = []
    for n in sizes:
        if n > len(pool):
            log.warning("learning curve: %d labels asked for, only %d training rows; size skipped", n, len(pool))
            continue
        for seed in seeds:
            pick = balanced_subset(positive(pool), n, seed)
            subset = pool.iloc[pick].reset_index(drop=True)
            for method in ("finetuned", "scratch"):
                trained = train_labels(base, pool_images[pick], subset, head, settings, seed,
                                       scratch_of=base if method == "scratch" else None)
                scores = evaluate(trained.model, images[test], labels[test], head)
                held = {f"held_out_{k}" if k.startswith("n") else k: v for k, v in scores.items() if k != "confusion"}
                rows.append({"n_labels": n, "n_labels_positive": int(positive(subset).sum()), "seed": seed,
                             "method": method, "epochs": trained.epochs, "seconds": round(trained.seconds, 2), **held})
                log.info("%s, %d labels, seed %d: accuracy %.3f, AUC %.3f (%d epochs, %.0f s)", method, n, seed,
                         scores["accuracy"], scores["roc_auc"], trained.epochs, trained.seconds)
    return pd.DataFrame(rows)


def curve_figure(frame: pd.DataFrame, title: str, metric: str = "accuracy"):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 4), layout="constrained")
    ax = fig.add_subplot()
    for method, style in (("finetuned", "o-"), ("scratch", "s--")):
        part = frame[frame["method"] == method]
        if part.empty:
            continue
        mean = part.groupby("n_labels")[metric].mean()
        ax.plot(mean.index, mean.to_numpy(), style, label=f"{method} (mean of {part['seed'].nunique()} seeds)")
        ax.scatter(part["n_labels"], part[metric], s=10, alpha=0.4, color=ax.lines[-1].get_color())
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(frame["n_labels"].unique()), [str(n) for n in sorted(frame["n_labels"].unique())])
    ax.set(xlabel="labelled galaxies (count)", ylabel=f"held-out {metric.replace('_', ' ')}", title=title)
    ax.legend(fontsize=8)
    return fig


def curve_stage(params: dict[str, Any], base_path: str | Path, labels_path: str | Path, columns: LabelColumns,
                out_csv: str | Path, figure: str | Path, title: str, *, image_root: str | Path | None = None,
                threads: int | None = None) -> pd.DataFrame:
    from gzmorph import io
    from gzmorph.runtime import configure_threads

    configure_threads(threads)
    fp = params["finetune"]["curve"]
    labels = read_labels(labels_path, columns, image_root)
    base = _load_base(base_path)
    images = load_images(labels, _resolution(base), labels_path, threads)
    frame = curve(params, base, images, labels, columns.head, list(fp["sizes"]), list(fp["seeds"]))
    io.write_text(out_csv, frame.to_csv(index=False))
    metric = "accuracy" if columns.head == "binary" else "rmse_vote_fraction"
    io.save_figure(curve_figure(frame, title, metric), figure, dpi=120)
    return frame


# ---------------------------------------------------------------------------------------------- survey to survey

# Answers of the training survey's tree and the other survey's answers that mean the same (W+21 §2: GZ DECaLS
# asks strong / weak / no bar where GZ2 asked yes / no, so strong + weak is "yes").
EQUIVALENT_ANSWERS = {("bar", "yes"): ("strong", "weak")}


def vote_fraction(frame: pd.DataFrame, prefix: str, question: str, answers: tuple[str, ...]) -> tuple[np.ndarray, ...]:
    k = sum(frame[f"{prefix}{question}_{a}"].to_numpy(float) for a in answers)
    n = frame[f"{prefix}{question}_total-votes"].to_numpy(float)
    return np.divide(k, n, out=np.full(len(n), np.nan), where=n > 0), n


def cross_survey_table(observed: dict[str, dict[str, np.ndarray]], predicted: dict[str, dict[str, np.ndarray]],
                       cuts: dict[str, int]) -> pd.DataFrame:
    """Per question: RMSE and mean offset of predictions and of the two surveys' vote fractions, same galaxies.

    ``observed[q]``: ``left, right`` vote fractions and ``n_left, n_right`` totals; ``predicted[q]``: the model's
    ``left`` and ``right`` predictions (on each survey's images).  Galaxies kept: N >= the cut in both surveys.
    """
    from gzmorph.evaluate import rmse

    rows = []
    for q, obs in observed.items():
        keep = (obs["n_left"] >= max(cuts[q], 1)) & (obs["n_right"] >= max(cuts[q], 1))
        left, right = obs["left"][keep], obs["right"][keep]
        p_left, p_right = predicted[q]["left"][keep], predicted[q]["right"][keep]
        rows.append({"question": q, "n": int(keep.sum()),
                     "rmse_pred_right_vs_right": rmse(p_right, right), "offset_pred_right_minus_right":
                         float(np.mean(p_right - right)) if keep.any() else math.nan,
                     "rmse_pred_left_vs_left": rmse(p_left, left),
                     "rmse_pred_right_vs_left": rmse(p_right, left),
                     "rmse_right_vs_left_observed": rmse(right, left),
                     "offset_right_minus_left_observed": float(np.mean(right - left)) if keep.any() else math.nan})
    return pd.DataFrame(rows)


def cross_survey_stage(params: dict[str, Any], matched_path: str | Path, model_dir: str | Path,
                       out_csv: str | Path, figure: str | Path, *, image_root: str | Path | None = None,
                       threads: int | None = None) -> pd.DataFrame:
    """Predict the train survey's models on both surveys' images of the cross-matched galaxies, against the votes.

    Only galaxies outside the train survey's train split are used: the model never saw them (in either survey).
    """
    from gzmorph import io
    from gzmorph.inputs import question_spec
    from gzmorph.losses import rho_from_logits
    from gzmorph.runtime import configure_threads
    from gzmorph.split import assign

    configure_threads(threads)
    left, right = params["train"]["survey"], next(s for s in (params["crossmatch"]["left"],
                                                              params["crossmatch"]["right"])
                                                  if s != params["train"]["survey"])
    matched = pd.read_parquet(matched_path)
    unseen = assign(matched[f"{left}__id_str"], int(params["seed"]), params["shards"]["split"]) != "train"
    matched = matched[unseen].reset_index(drop=True)
    questions = list(params["train"]["questions"])
    models = [Path(model_dir) / f"{q}.keras" for q in questions]  # as gzmorph train writes them
    observed, predicted, cuts, images_of = {}, {}, {}, {}
    passes = int(params["finetune"]["passes"])
    for q, path in zip(questions, models, strict=True):
        spec = question_spec(params, q)
        model = _load_base(path)
        res = _resolution(model)
        pred = {}
        for side, survey in (("left", left), ("right", right)):
            key = (survey, res)
            if key not in images_of:
                frame = pd.DataFrame({"image": matched[f"{survey}__file_loc"], "id_str": matched[f"{survey}__id_str"]})
                root = Path(image_root) if image_root is not None else Path()
                frame["image"] = [str(p if Path(p).is_absolute() else root / p) for p in frame["image"]]
                images_of[key] = load_images(frame, res, f"{matched_path} ({survey} images)", threads)
            point, draws = predict_logits(model, images_of[key], passes)
            rho = np.asarray(rho_from_logits(draws)).mean(axis=1) if draws is not None else \
                np.asarray(rho_from_logits(point))
            pred[side] = rho
        answers_right = EQUIVALENT_ANSWERS.get((q, spec.answer), (spec.answer,))
        f_left, n_left = vote_fraction(matched, f"{left}__", q, (spec.answer,))
        f_right, n_right = vote_fraction(matched, f"{right}__", q, answers_right)
        observed[q] = {"left": f_left, "right": f_right, "n_left": n_left, "n_right": n_right}
        predicted[q], cuts[q] = pred, spec.min_total_votes
    table = cross_survey_table(observed, predicted, cuts)
    table.insert(1, "left", left)
    table.insert(2, "right", right)
    io.write_text(out_csv, table.to_csv(index=False))
    io.save_figure(cross_survey_figure(observed, predicted, cuts, left, right), figure, dpi=120)
    log.info("cross-survey on %d unseen matched galaxies:\n%s", len(matched), table.to_string(index=False))
    return table


def cross_survey_figure(observed, predicted, cuts, left: str, right: str):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2 * len(observed), 4), layout="constrained")
    for ax, (q, obs) in zip(fig.subplots(1, len(observed), squeeze=False)[0], observed.items(), strict=True):
        keep = (obs["n_left"] >= max(cuts[q], 1)) & (obs["n_right"] >= max(cuts[q], 1))
        ax.scatter(obs["left"][keep], obs["right"][keep], s=4, alpha=0.4, label=f"{right} votes")
        ax.scatter(obs["left"][keep], predicted[q]["right"][keep], s=4, alpha=0.4,
                   label=f"{left} model on {right} images")
        ax.plot([0, 1], [0, 1], "k:", lw=1)
        ax.set(xlabel=f"{left} vote fraction", ylabel=f"{right}: vote fraction or prediction", title=q,
               xlim=(0, 1), ylim=(0, 1))
        ax.legend(fontsize=7, markerscale=3)
    return fig


# ---------------------------------------------------------------------------------------------- command line


def run(args: argparse.Namespace) -> None:
    from gzmorph import config, io

    params = config.load(args.params)
    if args.action == "ring-labels":
        survey = params["simulate"]["surveys"][args.survey]
        io.write_text(args.out, ring_labels(pd.read_parquet(args.catalog), survey, params).to_csv(index=False))
    elif args.action == "vote-labels":
        tp = params["finetune"]["transfer"]
        io.write_text(args.out, vote_labels(pd.read_parquet(args.catalog), params, tp["question"],
                                            list(tp["answers"]), int(tp["n_labels"])).to_csv(index=False))
    elif args.action == "fit":
        fit_stage(params, args.base, args.labels, _columns(args), args.model, args.metrics, args.predictions,
                  image_root=args.image_root, threads=args.threads)
    elif args.action == "predict":
        columns = _columns(args)
        model = _load_base(args.model)
        labels = read_labels(args.labels, columns, args.image_root)
        images = load_images(labels, _resolution(model), args.labels, args.threads)
        io.write_parquet(args.out, prediction_frame(model, images, labels, columns.head,
                                                    int(params["finetune"]["passes"])))
    elif args.action == "curve":
        curve_stage(params, args.base, args.labels, _columns(args), args.out, args.figure, args.title,
                    image_root=args.image_root, threads=args.threads)
    else:
        cross_survey_stage(params, args.matched, args.model_dir, args.out, args.figure, image_root=args.image_root,
                           threads=args.threads)


def register(sub: argparse._SubParsersAction) -> None:
    from gzmorph import config

    p = sub.add_parser("finetune", help="fine-tune a trained model on new labels; survey-to-survey transfer")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")

    def common(a: argparse.ArgumentParser, labels: bool = True) -> None:
        config.add_params_argument(a)
        config.add_threads_argument(a, "image decoding and TensorFlow")
        a.add_argument("--image-root", default=None, help="directory relative image paths start from (default: .)")
        if labels:
            a.add_argument("--labels", required=True, help="label catalog (.csv or .parquet)")
            a.add_argument("--id-column", default=RING_LAYOUT[0], help="galaxy id column (default: iauname)")
            a.add_argument("--image-column", default=RING_LAYOUT[1], help="image path column (default: local_png_loc)")
            a.add_argument("--label-column", default=RING_LAYOUT[2],
                           help="0/1 label, or with --total-column the votes k (default: ring)")
            a.add_argument("--total-column", default=None, help="vote counts: the N column (binomial head)")
        a.set_defaults(func=run)

    a = actions.add_parser("ring-labels", help="simulated expert ring labels (zoobot layout) from the truth")
    common(a, labels=False)
    a.add_argument("--catalog", required=True, help="simulated survey catalog (with truth_ columns)")
    a.add_argument("--survey", required=True, help="its survey under simulate.surveys (optics for visibility)")
    a.add_argument("--out", required=True, help="output CSV: iauname, local_png_loc, ring, ring_visibility, split")
    a = actions.add_parser("vote-labels", help="a survey's votes for finetune.transfer's answer as a label catalog")
    common(a, labels=False)
    a.add_argument("--catalog", required=True, help="survey catalog")
    a.add_argument("--out", required=True, help="output CSV: id_str, file_loc, k, total, split")
    a = actions.add_parser("fit", help="replace the head, train it (trunk frozen), then unfreeze the last layers")
    common(a)
    a.add_argument("--base", required=True, help="trained model (.keras) whose trunk is kept")
    a.add_argument("--model", required=True, help="output fine-tuned model (.keras)")
    a.add_argument("--metrics", required=True, help="output JSON: accuracy, ROC AUC, confusion on the held-out rows")
    a.add_argument("--predictions", default=None, help="output parquet: p (and MC mean/std) for every row")
    a = actions.add_parser("predict", help="a fine-tuned model's predictions for a whole catalog")
    common(a)
    a.add_argument("--model", required=True, help="fine-tuned model (.keras)")
    a.add_argument("--out", required=True, help="output parquet: id_str, p, p_mc_mean, p_mc_std")
    a = actions.add_parser("curve", help="fine-tuned vs from scratch against the number of labels")
    common(a)
    a.add_argument("--base", required=True, help="trained model (.keras)")
    a.add_argument("--out", required=True, help="output CSV: one row per size, seed and method")
    a.add_argument("--figure", required=True, help="output figure")
    a.add_argument("--title", default="", help="figure title")
    a = actions.add_parser("cross-survey", help="train survey's models on the other survey's matched galaxies")
    common(a, labels=False)
    a.add_argument("--matched", required=True, help="cross-match output (matched.parquet)")
    a.add_argument("--model-dir", required=True, help="folder of the train.questions models (<question>.keras)")
    a.add_argument("--out", required=True, help="output CSV: RMSE and offsets per question")
    a.add_argument("--figure", required=True, help="output figure")

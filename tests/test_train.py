"""``gzmorph train`` on tiny shards with a learnable signal: brightness of a central blob sets rho.

``learnable_shards`` is shared with test_predict.py.  One model is trained per module (a few
seconds on 2 cores) and the tests inspect its outputs.  The training loop itself (:func:`gzmorph.train.fit`:
schedule, early stopping, what is kept and saved) is tested on a one-layer model and synthetic batches.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from gzmorph import config
from gzmorph.split import assign
from gzmorph.tree import GZ2

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "bar"
RESOLUTION = 32


def blob_image(rng: np.random.Generator, brightness: float, size: int = RESOLUTION) -> np.ndarray:
    """uint8 [size, size, 3]: noise plus a central Gaussian blob of amplitude set by ``brightness`` in [0, 1]."""
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    blob = (30 + 200 * brightness) * np.exp(-(xx**2 + yy**2) / (2 * (size / 6) ** 2))
    img = blob[..., None] + rng.normal(15, 5, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def learnable_catalog(root: Path, n: int, seed: int = 0, min_n: int = 0) -> pd.DataFrame:
    """Catalog with PNGs where rho(bar=yes) = 0.1 + 0.8 * blob brightness and k ~ Binomial(N, rho).

    N(bar) is uniform in [min_n, 40], so some galaxies fall below bar's cut of 10 (and some are 0).
    Other questions' votes are zero: only the bar columns are read.
    """
    rng = np.random.default_rng(seed)
    brightness = rng.uniform(0, 1, n)
    rho = 0.1 + 0.8 * brightness
    out = blob_bar_catalog(root, brightness, rho, rng.integers(min_n, 41, n), rng, first_id=1000000)
    out["rho_true"] = rho
    return out


def blob_bar_catalog(root: Path, brightness: np.ndarray, rho: np.ndarray, total: np.ndarray,
                     rng: np.random.Generator, first_id: int) -> pd.DataFrame:
    """GZ2 catalog of blob PNGs in ``root/images`` (:func:`blob_image` of each brightness) whose bar votes are
    k ~ Binomial(total, rho); every other vote column is zero."""
    n = len(brightness)
    (root / "images").mkdir(parents=True, exist_ok=True)
    k = rng.binomial(total, rho)
    ids = [f"{first_id + i}" for i in range(n)]
    locs = []
    for id_str, b in zip(ids, brightness, strict=True):
        path = root / "images" / f"{id_str}.png"
        Image.fromarray(blob_image(rng, b)).save(path, compress_level=1)
        locs.append(str(path))
    df = pd.DataFrame({"id_str": ids, "ra": 150.5, "dec": 2.0, "survey": "sdss", "tree": GZ2.name, "file_loc": locs})
    votes = {c: np.zeros(n, np.int64) for c in GZ2.vote_columns}
    votes["bar_total-votes"], votes["bar_yes"], votes["bar_no"] = total, k, total - k
    return pd.concat([df, pd.DataFrame(votes)], axis=1)


def learnable_shards(root: Path, n: int = 700, seed: int = 0, fractions: dict | None = None
                     ) -> tuple[Path, pd.DataFrame]:
    """Shards at RESOLUTION of :func:`learnable_catalog`; the catalog gets a ``split`` column."""
    from gzmorph.shards import write_shards

    fractions = fractions or {"train": 0.6, "val": 0.2, "test": 0.2}
    df = learnable_catalog(root, n, seed)
    out = root / "shards"
    write_shards(df, out, tree=GZ2, resolution=RESOLUTION, shard_size=128, fractions=fractions, seed=seed,
                 threads=1, progress=False)
    df["split"] = assign(df["id_str"], seed, fractions)
    return out, df


def tiny_params(root: Path, **train: object) -> dict:
    """params.yaml with a small, fast model (32 px, few epochs, Fig. 3 trunk, float32); ``train`` overrides train.*."""
    override = {"seed": 0, "shards": {"split": {"train": 0.6, "val": 0.2, "test": 0.2}},
                "train": {"input_size": 32, "batch_size": 32, "max_epochs": 6, "min_epochs": 2, "patience": 3,
                          "warmup_epochs": 1, "learning_rate": 0.003, "dropout_rate": 0.2,
                          "val_loss_smoothing": 0.0, "mixed_precision": False, **train},
                "predict": {"augmentations": 3, "dropout_masks": 2, "chunk_size": 64}}
    path = root / "override.yaml"
    path.write_text(yaml.safe_dump(override))
    params = config.load([ROOT / "params.yaml", path])
    if "questions" not in train:  # unless set here, the questions' own epoch counts follow train.max_epochs
        for q in params["train"]["questions"].values():  # and their trunks are the paper's small one
            for key in ("max_epochs", "trunk_filters", "dense_units"):
                q.pop(key, None)
    if "tree" not in train:  # and so does the whole-tree model's; its trunk is the paper's small one
        for key in ("max_epochs", "trunk_filters", "dense_units"):
            params["train"]["tree"].pop(key, None)
    return params


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from gzmorph import train

    root = tmp_path_factory.mktemp("train")
    shards, df = learnable_shards(root)
    params = tiny_params(root)
    out = root / "out"
    result = train.train(params, QUESTION, shards, out / "bar.keras", out / "history.csv", out / "loss.png",
                         threads=2, progress=False)
    return {"root": root, "shards": shards, "df": df, "params": params, "out": out, "result": result}


def _held_out(df: pd.DataFrame, split: str = "test") -> pd.DataFrame:
    sel = df[(df["split"] == split) & (df["bar_total-votes"] >= 10)]
    return sel.sort_values("id_str")


def test_training_loss_falls_and_rho_learns_the_signal(trained):
    from gzmorph.losses import binomial_nll
    from gzmorph.train import load_model

    history = trained["result"].history
    assert history["loss"].iloc[-1] < history["loss"].iloc[0]

    model = load_model(trained["out"] / "bar.keras")
    test = _held_out(trained["df"])
    images = np.stack([np.asarray(Image.open(p)) for p in test["file_loc"]])
    logits = model(images, training=False)
    from gzmorph.losses import rho_from_logits

    rho = np.asarray(rho_from_logits(logits))
    k, n = test["bar_yes"].to_numpy(), test["bar_total-votes"].to_numpy()
    train_df = _held_out(trained["df"], "train")
    constant = train_df["bar_yes"].sum() / train_df["bar_total-votes"].sum()
    nll_model = float(np.mean(binomial_nll(k, n, rho)))
    nll_const = float(np.mean(binomial_nll(k, n, np.full(len(k), constant))))
    nll_true = float(np.mean(binomial_nll(k, n, test["rho_true"].to_numpy())))  # the best any model can do
    # Most of the way from the constant predictor to the truth (seen: ~90%).
    assert nll_model < nll_const - 0.5 * (nll_const - nll_true), (nll_model, nll_const, nll_true)
    rmse = lambda r: float(np.sqrt(np.mean((r - k / n) ** 2)))  # noqa: E731
    assert rmse(rho) < rmse(constant)
    assert np.corrcoef(rho, test["rho_true"])[0, 1] > 0.9


def test_history_has_one_row_per_epoch(trained):
    from gzmorph.train import HISTORY_COLUMNS

    history = pd.read_csv(trained["out"] / "history.csv")
    assert tuple(history.columns) == HISTORY_COLUMNS == ("epoch", "learning_rate", "loss", "val_loss")
    pd.testing.assert_frame_equal(history, trained["result"].history, check_dtype=False)
    assert history["epoch"].tolist() == list(range(len(history)))
    assert 1 <= len(history) <= trained["params"]["train"]["max_epochs"]
    assert np.isfinite(history[["loss", "val_loss"]].to_numpy()).all()
    assert (trained["out"] / "loss.png").stat().st_size > 0
    assert not [p for p in trained["out"].iterdir() if p.name.startswith(".")]  # no temp files left


def test_saved_model_is_the_kept_epoch(trained):
    """The saved model holds the epoch with the lowest val_loss from min_epochs on (what EarlyStopping restores)."""
    from gzmorph.inputs import count_galaxies, question_spec, vote_dataset
    from gzmorph.losses import BinomialLoss
    from gzmorph.train import load_model

    history = trained["result"].history
    best = trained["result"].kept_epoch
    min_epochs = trained["params"]["train"]["min_epochs"]
    assert best >= min_epochs and best == min_epochs + int(history["val_loss"].iloc[min_epochs:].to_numpy().argmin())
    model = load_model(trained["out"] / "bar.keras")
    model.compile(loss=BinomialLoss())
    spec = question_spec(trained["params"], QUESTION)
    n_val = count_galaxies(trained["shards"], "val", spec)[1]
    val = vote_dataset(trained["shards"], "val", spec, trained["params"]["train"]["batch_size"], n_galaxies=n_val)
    assert model.evaluate(val, verbose=0) == pytest.approx(history["val_loss"].iloc[best], rel=1e-4)


def test_vote_cut_counts_galaxies(trained):
    """Galaxies with N < min_total_votes (and N = 0) never reach the model."""
    from gzmorph.inputs import count_galaxies, question_spec, vote_dataset

    df, params = trained["df"], trained["params"]
    spec = question_spec(params, QUESTION)
    assert spec.min_total_votes == 10
    expected = int(((df["split"] == "train") & (df["bar_total-votes"] >= 10)).sum())
    assert expected < int((df["split"] == "train").sum())  # the cut removes some
    assert count_galaxies(trained["shards"], "train", spec) == (int((df["split"] == "train").sum()), expected)
    seen = np.concatenate([c for _, c in vote_dataset(trained["shards"], "train", spec, 32).as_numpy_iterator()])
    assert len(seen) == expected and seen[:, 1].min() >= 10
    assert trained["result"].n_train == expected

    no_cut = question_spec(params | {"train": params["train"] | {"questions": {
        QUESTION: params["train"]["questions"][QUESTION] | {"min_total_votes": 0}}}}, QUESTION)
    expected0 = int(((df["split"] == "train") & (df["bar_total-votes"] > 0)).sum())
    assert count_galaxies(trained["shards"], "train", no_cut)[1] == expected0  # N = 0 always dropped


def test_training_is_repeatable(trained, tmp_path):
    """Same seed and data: identical losses and weights (seeded init, dropout, augmentation, shuffle)."""
    from gzmorph.train import load_model, train

    params = tiny_params(tmp_path, max_epochs=1)
    runs = [train(params, QUESTION, trained["shards"], tmp_path / f"m{i}.keras", tmp_path / f"h{i}.csv",
                  progress=False) for i in range(2)]
    pd.testing.assert_frame_equal(runs[0].history, runs[1].history)
    w0, w1 = (load_model(tmp_path / f"m{i}.keras").get_weights() for i in range(2))
    assert all(np.array_equal(a, b) for a, b in zip(w0, w1, strict=True))


def test_errors(trained, tmp_path):
    from gzmorph.inputs import NoGalaxiesError
    from gzmorph.train import train

    params, shards = trained["params"], trained["shards"]
    with pytest.raises(config.ConfigError, match="no question 'spiral'"):
        train(params, "spiral", shards, tmp_path / "m.keras", tmp_path / "h.csv", progress=False)
    with pytest.raises(FileNotFoundError, match="no manifest"):
        train(params, QUESTION, tmp_path / "missing", tmp_path / "m.keras", tmp_path / "h.csv", progress=False)
    strict = params | {"train": params["train"] | {"questions": {
        QUESTION: params["train"]["questions"][QUESTION] | {"min_total_votes": 1000}}}}
    with pytest.raises(NoGalaxiesError, match="no train galaxies left"):
        train(strict, QUESTION, shards, tmp_path / "m.keras", tmp_path / "h.csv", progress=False)
    assert not list(tmp_path.iterdir())


def test_cli_one_line_errors(trained, tmp_path, capsys):
    from gzmorph.cli import main

    rc = main(["train", "--params", str(ROOT / "params.yaml"), "--question", QUESTION,
               "--shards", str(tmp_path / "nowhere"), "--model", str(tmp_path / "m.keras"),
               "--history", str(tmp_path / "h.csv"), "--threads", "1"])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gzmorph train: error:") and "no manifest" in err and "\n" not in err


# ------------------------------------------------------------------------------------------- the training loop
# One Dense layer on constant inputs; the training batches say rho = 0.99, the validation batch rho = 0.1, so
# every epoch moves rho further from the validation answer (slowly enough not to overshoot 0.99 within 10
# epochs): the val loss rises monotonically and is lowest at epoch 0.  Epochs of STEPS batches of a repeated
# dataset (as active learning feeds them).

STEPS = 4


def _tiny_fit(tmp_path: Path | None = None, **settings: object):
    import keras
    import tensorflow as tf

    from gzmorph.train import FitSettings, fit

    x = np.ones((8, 1), np.float32)
    train_ds = tf.data.Dataset.from_tensors((x, np.tile([[99.0, 100.0]], (8, 1)).astype(np.float32))).repeat()
    val = (x, np.tile([[1.0, 10.0]], (8, 1)).astype(np.float32))
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(2, kernel_initializer="zeros")])
    defaults = {"learning_rate": 0.02, "max_epochs": 6, "min_epochs": 0, "patience": 100, "schedule": "constant"}
    out = {} if tmp_path is None else {"checkpoint": tmp_path / "m.keras", "history": tmp_path / "h.csv"}
    result = fit(model, train_ds, tf.data.Dataset.from_tensors(val), settings=FitSettings(**defaults | settings),
                 steps_per_epoch=STEPS, **out)
    return model, val, result


def _val_loss(model, val) -> float:
    from gzmorph.losses import BinomialLoss

    return float(np.mean(np.asarray(BinomialLoss(reduction=None)(val[1], model(val[0], training=False)))))


def test_tiny_fit_val_loss_is_lowest_at_epoch_0():
    _, _, result = _tiny_fit(max_epochs=10)
    val_loss = result.history["val_loss"].to_numpy()
    assert np.all(np.diff(val_loss) > 0)  # the premise of the early-stopping tests below


def test_cosine_schedule_warms_up_then_decays_to_min_at_max_epochs(tmp_path):
    lr, low, warmup, epochs = 0.01, 1e-4, 2, 6
    _tiny_fit(tmp_path, schedule="cosine", learning_rate=lr, min_learning_rate=low, warmup_epochs=warmup,
              max_epochs=epochs)
    logged = pd.read_csv(tmp_path / "h.csv")["learning_rate"].to_numpy()  # rate at the end of each epoch
    done = np.arange(1, epochs + 1)  # epochs completed
    expected = np.where(done <= warmup, lr * done / warmup,
                        low + (lr - low) * 0.5 * (1 + np.cos(np.pi * (done - warmup) / (epochs - warmup))))
    np.testing.assert_allclose(logged, expected, rtol=1e-5)
    assert logged[0] < logged[1] == pytest.approx(lr) and np.all(np.diff(logged[warmup - 1:]) < 0)
    assert logged[-1] == pytest.approx(low)


def test_plateau_schedule_warms_up_then_halves(tmp_path):
    lr = 0.01
    _tiny_fit(tmp_path, schedule="plateau", learning_rate=lr, min_learning_rate=1e-4, warmup_epochs=2,
              plateau_patience=1)
    logged = pd.read_csv(tmp_path / "h.csv")["learning_rate"].to_numpy()
    # warm-up: lr/2, lr; epoch 3 is the first the plateau watches; each later epoch is worse, so the rate halves
    # after each (the log shows the rate an epoch ended with, before ReduceLROnPlateau acts)
    np.testing.assert_allclose(logged, [lr / 2, lr, lr, lr, lr / 2, lr / 4], rtol=1e-6)


def test_constant_schedule(tmp_path):
    _tiny_fit(tmp_path, learning_rate=0.02)
    np.testing.assert_allclose(pd.read_csv(tmp_path / "h.csv")["learning_rate"], 0.02, rtol=1e-6)


@pytest.mark.parametrize(("settings", "kept", "epochs", "stopped"), [
    ({"min_epochs": 3, "patience": 2, "max_epochs": 10}, 3, 6, True),  # stops after patience, from min_epochs on
    ({"min_epochs": 2, "patience": 100}, 2, 6, False),  # never stopped early: Keras 3 restores anyway
    ({"min_epochs": 5, "max_epochs": 3}, 2, 3, False),  # ended before min_epochs: nothing restored, the last
])
def test_early_stopping_never_stops_or_keeps_before_min_epochs(tmp_path, settings, kept, epochs, stopped):
    """Val loss is lowest at epoch 0, yet the kept epoch is >= min_epochs, and the model (and the saved
    model) hold exactly its weights: they reproduce the val loss logged at that epoch."""
    from gzmorph.train import load_model

    model, val, result = _tiny_fit(tmp_path, **settings)
    val_loss = result.history["val_loss"]
    assert (result.kept_epoch, result.epochs, result.stopped_early) == (kept, epochs, stopped)
    assert int(val_loss.idxmin()) == 0 != result.kept_epoch
    assert _val_loss(model, val) == pytest.approx(val_loss.iloc[kept], rel=1e-6)
    assert _val_loss(load_model(tmp_path / "m.keras"), val) == pytest.approx(val_loss.iloc[kept], rel=1e-6)
    assert result.val_loss == val_loss.iloc[kept] and result.train_loss == result.history["loss"].iloc[kept]
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "h.csv"), result.history, check_dtype=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.csv", "m.keras"]  # no temporary files left


def test_kept_epoch_follows_early_stopping():
    from gzmorph.train import kept_epoch

    val = np.array([5.0, 4.0, 3.0, 6.0, 3.0, 7.0])
    assert kept_epoch(val, 0) == 2  # the first of the tied lowest
    assert kept_epoch(val, 3) == 4  # epochs before min_epochs are never kept
    assert kept_epoch(val[:2], 5) == 1  # stopped before min_epochs: nothing restored, the last epoch
    assert kept_epoch(np.array([1.0, np.nan, 2.0]), 1) == 2  # non-finite val losses are never kept
    assert kept_epoch(np.array([1.0, np.inf, np.nan]), 1) == 2  # none finite from min_epochs on: the last


def test_smoothed_val_loss_by_hand():
    from gzmorph.train import smoothed

    np.testing.assert_allclose(smoothed([4.0, 2.0, 3.0], 0.5), [4.0, 3.0, 3.0])  # 0.5 * 4 + 0.5 * 2, ...
    np.testing.assert_allclose(smoothed([np.nan, 2.0, np.inf, 4.0], 0.75), [np.nan, 2.0, 2.0, 2.5])
    np.testing.assert_array_equal(smoothed([3.0, 1.0], 0.0), [3.0, 1.0])


def test_smoothing_keeps_a_slowly_falling_loss_from_stopping_on_one_lucky_epoch():
    """A val loss falling 0.01 an epoch under +-0.05 noise, with one epoch 0.2 low by chance: with patience 5 the
    raw loss stops 5 epochs after the lucky one; its moving average keeps falling to the last epoch."""
    from gzmorph.train import kept_epoch, smoothed

    epochs = np.arange(40)
    val = 2.0 - 0.01 * epochs + np.where(epochs == 6, -0.2, 0.05 * np.sin(epochs * 2.5))

    def stop(series, patience=5):  # the epoch EarlyStopping(patience) stops at, watching from epoch 0
        best, waited = np.inf, 0
        for t, v in enumerate(series):
            best, waited = (v, 0) if v < best else (best, waited + 1)
            if waited >= patience:
                return t
        return len(series) - 1

    assert stop(val) == 11 and kept_epoch(val[:12], 0) == 6
    assert stop(smoothed(val, 0.7)) == 39 and kept_epoch(smoothed(val, 0.7), 0) >= 35


def test_fit_with_smoothing_keeps_the_smoothed_minimum(tmp_path):
    model, val, result = _tiny_fit(tmp_path, min_epochs=1, patience=2, max_epochs=6, smoothing=0.5)
    from gzmorph.train import kept_epoch, smoothed

    history = result.history
    np.testing.assert_allclose(history["val_loss_smoothed"], smoothed(history["val_loss"], 0.5), rtol=1e-6)
    assert result.kept_epoch == kept_epoch(history["val_loss_smoothed"], 1)
    assert _val_loss(model, val) == pytest.approx(history["val_loss"].iloc[result.kept_epoch], rel=1e-6)


def test_fit_settings_of_each_section():
    from gzmorph.train import FitSettings, fit_settings

    params = config.load(ROOT / "params.yaml")
    tp, al = params["train"], params["active_learning"]
    assert fit_settings(params) == FitSettings(
        learning_rate=tp["learning_rate"], max_epochs=tp["max_epochs"], min_epochs=tp["min_epochs"],
        patience=tp["patience"], schedule=tp["schedule"], warmup_epochs=tp["warmup_epochs"],
        min_learning_rate=tp["min_learning_rate"], plateau_patience=tp["plateau_patience"],
        smoothing=tp["val_loss_smoothing"])
    own = fit_settings(params, "active_learning")  # own epoch counts, train's rates and schedule
    assert (own.max_epochs, own.min_epochs, own.patience, own.warmup_epochs, own.plateau_patience) == (
        al["max_epochs"], al["min_epochs"], al["patience"], al["warmup_epochs"], al["plateau_patience"])
    assert (own.learning_rate, own.schedule, own.min_learning_rate) == (
        tp["learning_rate"], tp["schedule"], tp["min_learning_rate"])
    # a question's own max_epochs overrides train.max_epochs for that question only
    params["train"]["questions"]["bar"]["max_epochs"] = 77
    params["train"]["questions"]["smooth-or-featured"].pop("max_epochs", None)
    assert fit_settings(config.validate(params), "train", "bar").max_epochs == 77
    assert fit_settings(params, "train", "smooth-or-featured").max_epochs == tp["max_epochs"]
    assert fit_settings(params, "active_learning", "bar").max_epochs == al["max_epochs"]
    with pytest.raises(config.ConfigError, match="min_learning_rate"):
        FitSettings(learning_rate=1e-3, max_epochs=5, min_learning_rate=1e-2)
    with pytest.raises(config.ConfigError, match="schedule"):
        FitSettings(learning_rate=1e-3, max_epochs=5, schedule="step")


def test_a_question_model_trunk_comes_from_its_own_settings(tmp_path):
    from gzmorph.inputs import question_spec
    from gzmorph.train import build_question_model

    params = tiny_params(tmp_path)
    for q in params["train"]["questions"].values():  # whatever params.yaml ships, start from Fig. 3's trunk
        for key in ("trunk_filters", "dense_units"):
            q.pop(key, None)
    bar, smooth = question_spec(params, "bar"), question_spec(params, "smooth-or-featured")
    paper = build_question_model(params, bar, RESOLUTION)
    assert [paper.get_layer(f"conv{b}_2").filters for b in (1, 2, 3)] == [32, 32, 16]
    assert paper.get_layer("dense").units == 128
    params["train"]["questions"]["bar"].update(trunk_filters=[8, 12, 24], dense_units=20)
    config.validate(params)
    wide = build_question_model(params, bar, RESOLUTION)
    assert [wide.get_layer(f"conv{b}_2").filters for b in (1, 2, 3)] == [8, 12, 24]
    assert wide.get_layer("dense").units == 20 and wide.output.shape == paper.output.shape
    other = build_question_model(params, smooth, RESOLUTION)  # another question keeps its own (Fig. 3's)
    assert other.get_layer("conv3_2").filters == 16 and other.get_layer("dense").units == 128
    params["train"]["questions"]["bar"]["trunk_filters"] = [8, 12]
    with pytest.raises(config.ConfigError, match="trunk_filters"):
        config.validate(params)

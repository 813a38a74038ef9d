"""``gzmorph train`` on tiny shards with a learnable signal: brightness of a central blob sets rho.

``learnable_shards`` is shared with test_predict.py.  One model is trained per module (a few
seconds on 2 cores) and the tests inspect its outputs.
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
    (root / "images").mkdir(parents=True, exist_ok=True)
    brightness = rng.uniform(0, 1, n)
    rho = 0.1 + 0.8 * brightness
    total = rng.integers(min_n, 41, n)
    k = rng.binomial(total, rho)
    ids = [f"{1000000 + i}" for i in range(n)]
    locs = []
    for id_str, b in zip(ids, brightness, strict=True):
        path = root / "images" / f"{id_str}.png"
        Image.fromarray(blob_image(rng, b)).save(path, compress_level=1)
        locs.append(str(path))
    df = pd.DataFrame({"id_str": ids, "ra": 150.5, "dec": 2.0, "survey": "sdss", "tree": GZ2.name, "file_loc": locs})
    votes = {c: np.zeros(n, np.int64) for c in GZ2.vote_columns}
    votes["bar_total-votes"], votes["bar_yes"], votes["bar_no"] = total, k, total - k
    out = pd.concat([df, pd.DataFrame(votes)], axis=1)
    out["rho_true"] = rho
    return out


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
    """params.yaml with a small, fast model: input 32 px, few epochs; ``train`` overrides train.* keys."""
    override = {"seed": 0, "shards": {"split": {"train": 0.6, "val": 0.2, "test": 0.2}},
                "train": {"input_size": 32, "batch_size": 32, "max_epochs": 6, "patience": 3,
                          "learning_rate": 0.003, "dropout_rate": 0.2, **train},
                "predict": {"passes": 5, "chunk_size": 64}}
    path = root / "override.yaml"
    path.write_text(yaml.safe_dump(override))
    return config.load([ROOT / "params.yaml", path])


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
    history = pd.read_csv(trained["out"] / "history.csv")
    assert {"epoch", "loss", "val_loss"} <= set(history.columns)
    assert history["epoch"].tolist() == list(range(len(history)))
    assert 1 <= len(history) <= trained["params"]["train"]["max_epochs"]
    assert np.isfinite(history[["loss", "val_loss"]].to_numpy()).all()
    assert (trained["out"] / "loss.png").stat().st_size > 0
    assert not [p for p in trained["out"].iterdir() if p.name.startswith(".")]  # no temp files left


def test_saved_model_is_the_best_epoch(trained):
    """EarlyStopping restores, and the checkpoint holds, the epoch with the lowest val_loss."""
    from gzmorph.losses import BinomialLoss
    from gzmorph.train import count_galaxies, load_model, question_spec, vote_dataset

    history = trained["result"].history
    best = trained["result"].best_epoch
    assert best == int(history["val_loss"].idxmin())
    model = load_model(trained["out"] / "bar.keras")
    model.compile(loss=BinomialLoss())
    spec = question_spec(trained["params"], QUESTION)
    n_val = count_galaxies(trained["shards"], "val", spec)[1]
    val = vote_dataset(trained["shards"], "val", spec, trained["params"]["train"]["batch_size"], n_galaxies=n_val)
    assert model.evaluate(val, verbose=0) == pytest.approx(history["val_loss"].iloc[best], rel=1e-4)


def test_vote_cut_counts_galaxies(trained):
    """Galaxies with N < min_total_votes (and N = 0) never reach the model."""
    from gzmorph.train import count_galaxies, question_spec, vote_dataset

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
    from gzmorph.train import NoGalaxiesError, train

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

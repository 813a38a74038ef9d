"""``gzmorph evaluate``: calibration (eqs. 11-13), ROC/AUC, confusion matrices and the CLI end to end."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pandas as pd
import pytest
import yaml
from test_train import QUESTION, RESOLUTION, learnable_shards, tiny_params

from gzmorph import evaluate as ev
from gzmorph.config import UserError
from gzmorph.posterior import mixture_pmf, single_pass_pmf

# ------------------------------------------------------------------------------------------- calibration


def _hand_case():
    """N = 2 for all: A rho 0.5 (pmf .25/.5/.25, k̂ 1, k 0), B rho 0.9 (.01/.18/.81, k̂ 2, k 2),
    C rho 0.2 (.64/.32/.04, k̂ 0, k 1)."""
    rho = np.array([0.5, 0.9, 0.2])
    return single_pass_pmf(rho, np.array([2, 2, 2])), np.array([0, 2, 1]), np.array([2, 2, 2])


def test_coverage_counts_by_hand():
    pmf, k, n = _hand_case()
    np.testing.assert_array_equal(np.argmax(pmf, axis=1), [1, 2, 0])
    cov = ev.coverage_counts(pmf, k, n, [0.0, 0.25, 0.5, 0.51, 1.0])
    # eps 0: empty window; 0.25 and 0.5: N eps = 0.5 and 1 -> strict bounds leave only j = k̂;
    # 0.51 and 1.0: N eps = 1.02 and 2 -> |j - k̂| <= 1.
    np.testing.assert_allclose(cov.expected, [0.0, 1.95, 1.95, 2.95, 2.95], atol=1e-12)
    np.testing.assert_array_equal(cov.actual, [0, 1, 1, 3, 3])
    err = cov.coverage_error
    assert math.isnan(err[0])
    np.testing.assert_allclose(err[1:], [0.95, 0.95, -0.05 / 3, -0.05 / 3], atol=1e-12)


def test_window_uses_each_galaxys_n_and_survives_float_round_off():
    # 0.28 * 25 = 7.000000000000001 in floats: the strict bound must still exclude |j - k̂| = 7.
    assert 0.28 * 25 > 7
    np.testing.assert_array_equal(ev.window_radius(np.array([25, 40, 2]), np.array([0.28, 0.0])),
                                  [[6, -1], [11, -1], [0, -1]])
    pmf = single_pass_pmf(np.array([0.48, 0.5]), np.array([25, 10]))
    cov = ev.coverage_counts(pmf, np.array([5, 2]), np.array([25, 10]), [0.28])  # k̂ = 12 and 5
    assert cov.actual[0] == 0  # |5 - 12| = 7 is not < 7; |2 - 5| = 3 is not < 2.8
    assert cov.expected[0] == pytest.approx(pmf[0, 6:19].sum() + pmf[1, 3:8].sum())


def test_explicit_k_hat_overrides_mode():
    pmf, k, n = _hand_case()
    cov = ev.coverage_counts(pmf, k, n, [0.25], k_hat=np.array([0, 0, 0]))
    assert cov.expected[0] == pytest.approx(0.25 + 0.01 + 0.64)
    assert cov.actual[0] == 1  # only A (k = 0)


def _synthetic(seed: int, g: int = 3000, n_votes: int = 40):
    rng = np.random.default_rng(seed)
    rho_true = rng.uniform(0.05, 0.95, g)
    n = np.full(g, n_votes)
    return rng, rho_true, n, rng.binomial(n, rho_true)


def test_perfectly_calibrated_posterior_has_small_coverage_error():
    _, rho_true, n, k = _synthetic(0)
    pmf = mixture_pmf(np.repeat(rho_true[:, None], 3, axis=1), n)
    cov = ev.coverage_counts(pmf, k, n, ev.TABLE_EPSILONS)
    assert np.all(np.abs(cov.coverage_error[1:]) < 0.03), cov.coverage_error  # eps 0.05, 0.10, 0.20
    assert abs(cov.coverage_error[0]) < 0.06, cov.coverage_error  # eps 0.02: window of one k, ~350 galaxies


@pytest.mark.parametrize("kind", ["noisy", "biased"])
def test_overconfident_posterior_has_positive_coverage_error(kind):
    rng, rho_true, n, k = _synthetic(1)
    shift = rng.normal(0, 0.1, len(k)) if kind == "noisy" else 0.1
    pmf = single_pass_pmf(np.clip(rho_true + shift, 0, 1), n)
    err = ev.coverage_counts(pmf, k, n, ev.TABLE_EPSILONS).coverage_error
    assert np.all(err > 0.1), err


def test_underconfident_mixture_has_negative_coverage_error():
    _, rho_true, n, k = _synthetic(2)
    rho_true = 0.25 + rho_true / 2  # in [0.275, 0.725]: the passes below stay inside [0, 1]
    k = np.random.default_rng(2).binomial(n, rho_true)
    rho = rho_true[:, None] + np.linspace(-0.15, 0.15, 11)  # centred on the truth but wider than it
    err = ev.coverage_counts(mixture_pmf(rho, n), k, n, ev.TABLE_EPSILONS).coverage_error
    assert np.all(err < 0), err


def test_epsilon_grid_and_calibration_table():
    grid = ev.epsilon_grid()
    assert grid[0] == 0 and grid[-1] == 0.5 and len(grid) == 51
    assert np.all(np.diff(grid) > 0) and set(ev.TABLE_EPSILONS) <= set(grid.tolist())
    pmf, k, n = _hand_case()
    rho = np.array([[0.5, 0.5], [0.9, 0.9], [0.2, 0.2]])
    post = ev.posteriors(k, n, rho, rho[:, 0])
    table = ev.calibration_table(post, [0.0, 0.25, 0.51])
    assert list(table.columns) == list(ev.CALIBRATION_COLUMNS)
    np.testing.assert_allclose(table["expected_mc"], [0, 1.95, 2.95])
    np.testing.assert_allclose(table["expected_single"], [0, 1.95, 2.95])
    np.testing.assert_array_equal(table["actual_single"], [0, 1, 3])
    assert table["coverage_error_mc"].isna().tolist() == [True, False, False]


# ------------------------------------------------------------------------------------------- ROC / AUC


def test_roc_hand_case_with_tie():
    curve = ev.roc_curve(np.array([0.9, 0.8, 0.8, 0.3]), np.array([1, 0, 1, 0]))
    np.testing.assert_allclose(curve.tpr, [0, 0.5, 1, 1])
    np.testing.assert_allclose(curve.fpr, [0, 0, 0.5, 1])
    np.testing.assert_allclose(curve.thresholds, [np.inf, 0.9, 0.8, 0.3])
    assert ev.auc(curve) == pytest.approx(0.875)  # pairs: 1 + 1 + 0.5 (tie) + 1 of 4


def test_auc_extremes_and_ties():
    scores, labels = np.array([0.1, 0.2, 0.7, 0.9]), np.array([0, 0, 1, 1])
    assert ev.auc(ev.roc_curve(scores, labels)) == 1.0
    assert ev.auc(ev.roc_curve(scores, 1 - labels)) == 0.0
    assert ev.auc(ev.roc_curve(np.full(6, 0.4), np.array([0, 1, 0, 1, 1, 0]))) == 0.5
    assert math.isnan(ev.auc(ev.roc_curve(scores, np.ones(4))))  # one class: undefined


def test_auc_equals_mann_whitney_with_ties():
    rng = np.random.default_rng(3)
    scores, labels = rng.integers(0, 5, 200).astype(float), rng.integers(0, 2, 200).astype(bool)
    pos, neg = scores[labels], scores[~labels]
    u = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert ev.auc(ev.roc_curve(scores, labels)) == pytest.approx(u / (len(pos) * len(neg)))


# ------------------------------------------------------------------------------------------- confusion


def test_confusion_and_majorities():
    k, n = np.array([30, 20, 21, 5, 0]), np.array([40, 40, 40, 40, 10])
    actual = ev.human_majority(k, n)
    np.testing.assert_array_equal(actual, [True, False, True, False, False])  # 20/40 is not a majority
    predicted = ev.model_majority(np.array([0.8, 0.6, 0.4, 0.5, 0.1]))
    c = ev.confusion(actual, predicted)
    assert (c.true_positive, c.false_positive, c.false_negative, c.true_negative) == (1, 2, 1, 1)
    assert c.accuracy == pytest.approx(0.4) and c.as_dict()["n"] == 5
    frame = ev.confusion_frame(actual, predicted, ev.class_labels("smooth-or-featured", "smooth"))
    assert list(frame.columns) == ["actual", "predicted"]
    assert frame.iloc[1].tolist() == ["not smooth", "smooth"]
    assert ev.class_labels("bar", "yes") == ("bar", "not bar")


def test_high_confidence_is_about_8_percent_of_each_predicted_class():
    rng = np.random.default_rng(4)
    rho = np.r_[rng.uniform(0.5, 1, 700), rng.uniform(0, 0.5, 300)]
    mask = ev.high_confidence_mask(rho)
    assert mask[:700].sum() == 56 and mask[700:].sum() == 24
    assert rho[:700][mask[:700]].min() >= rho[:700][~mask[:700]].max()  # the most extreme of each class
    assert rho[700:][mask[700:]].max() <= rho[700:][~mask[700:]].min()
    assert ev.high_confidence_mask(np.array([0.9, 0.2, 0.3])).tolist() == [True, True, False]  # >= 1 per class


# ------------------------------------------------------------------------------------------- CLI end to end


@pytest.fixture(scope="module")
def stage_inputs(tmp_path_factory):
    """Tiny shards, an untrained (but saved) model, a catalog with truth and a predictions parquet."""
    import pyarrow.parquet as pq

    from gzmorph import train
    from gzmorph.predict import chunk_table, prediction_schema

    root = tmp_path_factory.mktemp("evaluate")
    shards, df = learnable_shards(root, n=90, seed=5)
    params = tiny_params(root)
    spec = train.question_spec(params, QUESTION)
    train.build_question_model(params, spec, RESOLUTION).save(root / "bar.keras")
    df["truth_rho_bar_yes"] = df.pop("rho_true")
    catalog = root / "catalog.parquet"
    df.drop(columns=["split"]).to_parquet(catalog, index=False)

    test = df[(df["split"] == "test") & (df["bar_total-votes"] >= 10)].reset_index(drop=True)
    rng = np.random.default_rng(6)
    passes = 4
    rho = np.clip(test["truth_rho_bar_yes"].to_numpy()[:, None] + rng.normal(0, 0.1, (len(test), passes)), 0, 1)
    schema = prediction_schema({"question": QUESTION, "answer": "yes", "passes": passes})
    table = chunk_table(test["id_str"].to_numpy().astype(bytes), test[["bar_yes", "bar_total-votes"]].to_numpy(),
                        rho, rho.mean(axis=1), schema)
    predictions = root / "bar.parquet"
    pq.write_table(table, predictions)
    params_file = root / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    return {"root": root, "shards": shards, "model": root / "bar.keras", "catalog": catalog,
            "predictions": predictions, "params": params_file, "test": test, "rho": rho}


def _cli(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    ev.register(parser.add_subparsers())
    args = parser.parse_args(["evaluate", *argv])
    args.func(args)


def _argv(s: dict, out, images: bool) -> list[str]:
    argv = ["--params", str(s["params"]), "--question", QUESTION, "--predictions", str(s["predictions"]),
            "--catalog", str(s["catalog"]), "--out-dir", str(out), "--threads", "1"]
    return argv + (["--shards", str(s["shards"]), "--model", str(s["model"])] if images else [])


@pytest.mark.parametrize("images", [False, True])
def test_cli_end_to_end(stage_inputs, tmp_path, images):
    s, out = stage_inputs, tmp_path / "out"
    _cli(_argv(s, out, images))
    test, rho = s["test"], s["rho"]
    g = len(test)
    assert g >= 8

    table = pd.read_csv(out / "calibration.csv")
    assert list(table.columns) == list(ev.CALIBRATION_COLUMNS)
    assert table["epsilon"].is_monotonic_increasing and table["epsilon"].is_unique
    assert set(ev.TABLE_EPSILONS) <= set(np.round(table["epsilon"], 10))
    assert math.isnan(table["coverage_error_mc"].iloc[0]) and table["actual_mc"].iloc[0] == 0
    k, n = test["bar_yes"].to_numpy(), test["bar_total-votes"].to_numpy()
    expect = ev.coverage_counts(mixture_pmf(rho, n), k, n, table["epsilon"].to_numpy())
    np.testing.assert_allclose(table["expected_mc"], expect.expected, rtol=1e-5)
    np.testing.assert_array_equal(table["actual_mc"], expect.actual)
    assert (table["actual_mc"] <= g).all() and (table["expected_single"] <= g + 1e-6).all()

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_galaxies"] == g and metrics["passes"] == 4
    assert metrics["rmse_vs_vote_fraction"]["mc_mean_rho"] == pytest.approx(
        np.sqrt(np.mean((rho.mean(axis=1) - k / n) ** 2)), rel=1e-5)
    truth = metrics["rmse_vs_true_rho"]
    assert truth["n_galaxies"] == g
    assert truth["mc_mean_rho"] == pytest.approx(
        np.sqrt(np.mean((rho.mean(axis=1) - test["truth_rho_bar_yes"]) ** 2)), rel=1e-5)
    assert set(metrics["coverage_error"]["mc"]) == {"eps_0p02", "eps_0p05", "eps_0p10", "eps_0p20"}
    row = table.set_index(np.round(table["epsilon"], 10)).loc[0.1]
    assert metrics["coverage_error"]["single"]["eps_0p10"] == pytest.approx(row["coverage_error_single"], rel=1e-4)
    conf = metrics["confusion"]["all"]
    assert conf["n"] == g and 0 <= conf["accuracy"] <= 1
    assert 2 <= metrics["confusion"]["high_confidence"]["n"] <= max(2, round(0.08 * g) + 2)
    assert 0 <= metrics["roc_auc"]["all"] <= 1 or metrics["roc_auc"]["all"] is None

    frame = pd.read_csv(out / "confusion.csv")
    assert list(frame.columns) == ["actual", "predicted"] and len(frame) == g
    assert set(frame["actual"]) <= {"bar", "not bar"}
    assert (frame["actual"] == "bar").sum() == int((k / n > 0.5).sum())
    for name in ("calibration", "confusion", "roc", "distributions", "posteriors"):
        assert (out / f"{name}.png").stat().st_size > 10_000
    assert not list(out.glob(".*"))  # no temporary files left


def test_network_images_are_the_deterministic_preprocess(stage_inputs):
    from gzmorph import config

    s = stage_inputs
    ids = s["test"]["id_str"].tolist()[:3]
    images = ev.network_images(config.load(s["params"]), QUESTION, s["shards"], s["model"], ids, threads=1)
    assert set(images) == set(ids)
    img = images[ids[0]]
    assert img.shape == (32, 32, 1) and 0 <= img.min() and img.max() <= 1
    again = ev.network_images(config.load(s["params"]), QUESTION, s["shards"], s["model"], ids[:1], threads=1)
    np.testing.assert_array_equal(again[ids[0]], img)


def test_cli_errors(stage_inputs, tmp_path):
    s = stage_inputs
    argv = _argv(s, tmp_path / "out", False)
    with pytest.raises(UserError, match="--shards and --model"):
        _cli([*argv, "--shards", str(s["shards"])])
    with pytest.raises(UserError, match="not 'smooth-or-featured'"):
        _cli([a if a != QUESTION else "smooth-or-featured" for a in argv])

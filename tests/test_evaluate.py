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
from gzmorph.sim.population import sample_population

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


def test_bootstrap_interval_of_the_coverage_error():
    """Per-galaxy terms sum to coverage_counts; resampling identical galaxies gives no spread, and the interval
    of a mixed sample brackets its coverage error."""
    pmf, k, n = _hand_case()
    expected, hit = ev.coverage_per_galaxy(pmf, k, n, [0.25, 1.0])
    cov = ev.coverage_counts(pmf, k, n, [0.25, 1.0])
    np.testing.assert_allclose(expected.sum(axis=0), cov.expected)
    np.testing.assert_array_equal(hit.sum(axis=0), cov.actual)
    same = ev.bootstrap_coverage_error(np.tile(expected[1], (50, 1)), np.tile(hit[1], (50, 1)), resamples=200)
    np.testing.assert_allclose(same[0], same[1])
    np.testing.assert_allclose(same[0], ev.coverage_error(expected[1], hit[1]))
    rng = np.random.default_rng(0)
    many_e, many_h = rng.uniform(0.3, 0.9, (400, 1)), rng.uniform(size=(400, 1)) < 0.6
    lo, hi = ev.bootstrap_coverage_error(many_e, many_h)[:, 0]
    assert lo < ev.coverage_error(many_e.sum(0), many_h.sum(0))[0] < hi and hi - lo < 0.2


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
    assert list(table.columns) == ["epsilon"] + [f"{w}_{kind}" for kind in ("mc", "t1", "deterministic")
                                                 for w in ("expected", "actual", "coverage_error")]
    for kind in ev.KINDS:
        np.testing.assert_allclose(table[f"expected_{kind}"], [0, 1.95, 2.95])
        np.testing.assert_array_equal(table[f"actual_{kind}"], [0, 1, 3])
    assert table["coverage_error_mc"].isna().tolist() == [True, False, False]


def test_calibration_table_oracle_columns_use_the_true_rho():
    """The truth columns are the binomial posterior of the true rho, over galaxies with a finite truth only."""
    pmf, k, n = _hand_case()
    rho = np.array([[0.1, 0.1], [0.1, 0.1], [0.9, 0.9]])  # far from the hand case: differs from the oracle
    post = ev.posteriors(k, n, rho, rho[:, 0])
    truth = np.array([0.5, 0.9, 0.2])  # the hand case's rho
    table = ev.calibration_table(post, [0.0, 0.25, 0.51], truth=truth)
    assert list(table.columns) == [*ev.CALIBRATION_COLUMNS, *ev.TRUTH_CALIBRATION_COLUMNS]
    np.testing.assert_allclose(table["expected_truth"], [0, 1.95, 2.95])
    np.testing.assert_array_equal(table["actual_truth"], [0, 1, 3])
    assert not np.allclose(table["expected_mc"], table["expected_truth"])
    # a galaxy without truth is left out of the oracle, not counted as a miss
    partial = ev.calibration_table(post, [0.51], truth=np.array([0.5, np.nan, 0.2]))
    assert partial["actual_truth"].tolist() == [2]
    assert "coverage_error_truth" not in ev.calibration_table(post, [0.51]).columns


def test_t1_uses_only_the_first_pass():
    """Pass 0 is the hand case (rho .5/.9/.2, N = 2); pass 1 and rho_point differ, so only t1 matches it."""
    _, k, n = _hand_case()
    rho = np.array([[0.5, 0.1], [0.9, 0.1], [0.2, 0.9]])
    rho_point = np.array([0.9, 0.1, 0.9])  # k̂ = 2, 0, 2: never the observed k
    post = ev.posteriors(k, n, rho, rho_point)
    np.testing.assert_allclose(post.pmf_t1, [[0.25, 0.5, 0.25], [0.01, 0.18, 0.81], [0.64, 0.32, 0.04]], atol=1e-12)
    np.testing.assert_array_equal(post.k_hat("t1"), [1, 2, 0])
    np.testing.assert_array_equal(post.k_hat("deterministic"), [2, 0, 2])
    table = ev.calibration_table(post, [0.25])  # window = k̂ alone
    assert table["expected_t1"].iloc[0] == pytest.approx(0.5 + 0.81 + 0.64)
    assert table["actual_t1"].iloc[0] == 1  # only B: k = k̂ = 2
    assert table["expected_deterministic"].iloc[0] == pytest.approx(0.81 + 0.81 + 0.81)
    assert table["actual_deterministic"].iloc[0] == 0
    metrics = ev.point_metrics(post, table, np.array([0.4, 0.9, 0.2]), np.ones(3, bool))
    v = np.array([0.0, 1.0, 0.5])
    assert metrics["rmse_vs_vote_fraction"]["t1_rho"] == pytest.approx(np.sqrt(np.mean((rho[:, 0] - v) ** 2)))
    assert metrics["rmse_vs_vote_fraction"]["t1_most_likely"] == pytest.approx(np.sqrt((0.25 + 0 + 0.25) / 3))
    assert metrics["rmse_vs_vote_fraction"]["deterministic_rho"] == pytest.approx(
        np.sqrt(np.mean((rho_point - v) ** 2)))
    assert metrics["rmse_vs_true_rho"]["t1_rho"] == pytest.approx(np.sqrt(0.01 / 3))
    assert set(metrics["coverage_error"]) == {"mc", "t1", "deterministic"}
    assert set(metrics["roc_auc"]) == {"all", "high_confidence", "t1_all", "deterministic_all"}


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


# ------------------------------------------------------------------------------------------- learnability


def test_bins_and_keys():
    values = np.array([0.0, 0.05, 0.1, 0.29, 0.3, 0.5, 1.0, 1.2, -0.1, np.nan])
    np.testing.assert_array_equal(ev.bin_index(values), [0, 0, 1, 1, 2, 3, 3, 3, 0, -1])
    assert ev.bin_labels() == ["0-0.1", "0.1-0.3", "0.3-0.5", "0.5-1"]
    assert ev.group_key("arms 0.3-0.5") == "arms_0p3_0p5" and ev.group_key("disk") == "disk"


def test_group_rmse_keeps_nan_inside_its_groups():
    masks = np.array([[1, 1, 1], [1, 1, 0], [0, 0, 0]], bool)
    out = ev.group_rmse(np.array([0.1, 0.4, np.nan]), np.array([0.0, 0.0, 0.5]), masks)
    assert math.isnan(out[0]) and out[1] == pytest.approx(np.sqrt((0.01 + 0.16) / 2)) and math.isnan(out[2])


def test_class_mean_prediction():
    pred = ev.class_mean_prediction(np.array(["smooth", "smooth", "disk"], object), np.array([0.2, 0.4, 0.9]),
                                    np.array(["disk", "smooth", "merger", np.nan], object))
    np.testing.assert_allclose(pred, [0.9, 0.3, np.nan, np.nan])


LEARN_PARAMS = {"train": {"questions": {"bar": {"answer": "yes", "min_total_votes": 5}}},
                "simulate": {"surveys": {"sdss": {"seeing_fwhm": 1.4}}}}


def _six_galaxies(rho: np.ndarray):
    """Reference R1 smooth 0.2, R2 smooth 0.4, R3 disk 0.9 (N = 10), R4 disk 0.1 with N = 3 < the cut 5;
    test T1 smooth (true 0.1, k = 2 of 10), T2 disk (true 0.6, 5 of 10; arm amplitude 0.35).

    Class-only predicts 0.3 / 0.9 (R4 is cut), the constant 0.5; the catalog lists T2 before T1.
    """
    catalog = pd.DataFrame({
        "id_str": ["R1", "R2", "T2", "R3", "R4", "T1"], "survey": "sdss", "tree": "gz2",
        "bar_total-votes": [10, 10, 10, 10, 3, 10],
        "bar_yes": [2, 4, 5, 9, 0, 2], "bar_no": [8, 6, 5, 1, 3, 8],  # N (the answer sum) as the totals
        "truth_rho_bar_yes": [0.2, 0.4, 0.6, 0.9, 0.1, 0.1],
        "truth_morphology": ["smooth", "smooth", "disk", "disk", "disk", "smooth"],
        "truth_arm_amplitude": [0.0, 0.0, 0.35, 0.8, 0.8, 0.0],
        "truth_bar_strength": [0.0, 0.0, 0.05, 0.0, 0.0, 0.0],
        "truth_bulge_to_total": [0.9, 0.9, 0.2, 0.5, 0.5, 0.9],
    })
    predictions = pd.DataFrame({"id_str": ["T1", "T2"]})
    predictions.attrs.update({"answer": "yes", "min_total_votes": "5", "total_column": "bar_total-votes"})
    post = ev.posteriors(np.array([2, 5]), np.array([10, 10]), rho, rho[:, 0])
    truth = ev.truth_for(catalog, predictions["id_str"], "bar", "yes")
    return catalog, predictions, post, truth


@pytest.fixture()
def fake_visibility(monkeypatch):
    """volunteers.visibility replaced by the raw truth: arms = amplitude, bar = strength, disk = 1 - B/T."""
    from types import SimpleNamespace

    from gzmorph.sim import volunteers

    calls = []

    def fake(g, survey):
        calls.append((dict(g), survey))
        return SimpleNamespace(arms=np.asarray(g["arm_amplitude"]), bar=np.asarray(g["bar_strength"]),
                               disk=1 - np.asarray(g["bulge_to_total"]), featured=None)

    monkeypatch.setattr(volunteers, "visibility", fake)
    return calls


def test_learnability_six_galaxies_by_hand(fake_visibility):
    catalog, predictions, post, truth = _six_galaxies(np.array([[0.3, 0.1], [0.7, 0.5]]))  # mean 0.2, 0.6
    result = ev.learnability(LEARN_PARAMS, "bar", predictions, post, catalog, truth)
    assert result.has_truth and result.vote_cut == 5 and result.reference_galaxies == 3
    (g, survey), = fake_visibility
    assert survey is LEARN_PARAMS["simulate"]["surveys"]["sdss"]
    np.testing.assert_array_equal(g["morphology"], ["smooth", "disk"])  # prefix stripped, predictions' order
    table = result.table.set_index("group")
    bins = [f"{f} {b}" for f in ("arms", "bar", "disk") for b in ev.bin_labels()]
    assert table.index.tolist() == ["all", "smooth", "disk", *bins]
    expected = {  # errors T1, T2: model .1/0, t1 .2/.1, class-only .2/.3, constant .4/.1, floor .1/.1
        "all": [2, np.sqrt(0.005), np.sqrt(0.025), np.sqrt(0.065), np.sqrt(0.085), 0.1, 1 - np.sqrt(1 / 13)],
        "smooth": [1, 0.1, 0.2, 0.2, 0.4, 0.1, 0.5],
        "disk": [1, 0.0, 0.1, 0.3, 0.1, 0.1, 1.0],
        "arms 0.3-0.5": [1, 0.0, 0.1, 0.3, 0.1, 0.1, 1.0],
        "bar 0-0.1": [1, 0.0, 0.1, 0.3, 0.1, 0.1, 1.0],
        "disk 0.5-1": [1, 0.0, 0.1, 0.3, 0.1, 0.1, 1.0],
    }
    for group, row in expected.items():
        np.testing.assert_allclose(table.loc[group, list(ev.LEARNABILITY_COLUMNS[1:])].to_numpy(float), row,
                                   atol=1e-12, err_msg=group)
    assert table.loc["arms 0-0.1", "n_galaxies"] == 0 and math.isnan(table.loc["arms 0-0.1", "rmse_model"])
    assert table.loc[[b for b in bins if b.startswith("arms")], "n_galaxies"].sum() == 1  # the smooth T1 is in none

    section = ev.learnability_metrics(result)
    assert section["all"]["rmse_class_only"] == pytest.approx(np.sqrt(0.065))
    assert section["disk"]["n_galaxies"] == 1 and isinstance(section["disk"]["n_galaxies"], int)
    assert section["visibility"]["arms_0p3_0p5"] == {"n_galaxies": 1, "rmse_model": 0.0,
                                                     "rmse_class_only": pytest.approx(0.3), "gain_over_class": 1.0}
    assert section["visibility"]["arms_0_0p1"]["rmse_model"] is None  # NaN -> null

    def keys(obj):
        return [k for key, v in obj.items() for k in [key, *(keys(v) if isinstance(v, dict) else [])]]

    assert not [k for k in keys(section) if "." in k]  # DVC flattens nested keys with dots
    assert "bar" in ev.learnability_summary("bar", result) and "class-only 0.300" in ev.learnability_summary(
        "bar", result)


def test_gain_is_zero_for_the_class_mean_and_positive_for_the_truth(fake_visibility):
    smooth = np.mean([0.2, 0.4])  # the reference smooth galaxies' mean, as the class-only predictor rounds it
    catalog, predictions, post, truth = _six_galaxies(np.array([[smooth, smooth], [0.9, 0.9]]))  # the class means
    table = ev.learnability(LEARN_PARAMS, "bar", predictions, post, catalog, truth).table.set_index("group")
    assert (table.loc[["all", "smooth", "disk"], "gain_over_class"] <= 0).all()
    _, _, post, _ = _six_galaxies(np.array([[0.1, 0.1], [0.6, 0.6]]))  # the truth
    table = ev.learnability(LEARN_PARAMS, "bar", predictions, post, catalog, truth).table.set_index("group")
    assert (table.loc[["all", "smooth", "disk"], "gain_over_class"] > 0).all()
    np.testing.assert_allclose(table.loc[["all", "smooth", "disk"], "rmse_model"], 0, atol=1e-12)


def test_learnability_without_truth_or_visibility(fake_visibility):
    catalog, predictions, post, truth = _six_galaxies(np.array([[0.3, 0.1], [0.7, 0.5]]))
    result = ev.learnability(LEARN_PARAMS, "bar", predictions, post, None, None)  # real data
    assert not result.has_truth and result.table["group"].tolist() == ["all"]
    assert result.table["n_galaxies"].tolist() == [0] and result.table.iloc[0, 2:].isna().all()
    assert ev.learnability_metrics(result) is None
    assert "no simulated truth" in ev.learnability_summary("bar", result)
    unknown = {**LEARN_PARAMS, "simulate": {"surveys": {}}}  # no optics for the catalog's survey: no bins
    table = ev.learnability(unknown, "bar", predictions, post, catalog, truth).table
    assert table["group"].tolist() == ["all", "smooth", "disk"]


# ------------------------------------------------------------------------------------------- CLI end to end


@pytest.fixture(scope="module")
def stage_inputs(tmp_path_factory):
    """Tiny shards, an untrained (but saved) model, a catalog with truth and a predictions parquet."""
    import pyarrow.parquet as pq

    from gzmorph import inputs, train
    from gzmorph.predict import chunk_table, prediction_schema

    root = tmp_path_factory.mktemp("evaluate")
    shards, df = learnable_shards(root, n=90, seed=5)
    params = tiny_params(root)
    spec = inputs.question_spec(params, QUESTION)
    train.build_question_model(params, spec, RESOLUTION).save(root / "bar.keras")
    df["truth_rho_bar_yes"] = df.pop("rho_true")
    catalog = root / "catalog.parquet"
    df.drop(columns=["split"]).to_parquet(catalog, index=False)
    df.drop(columns=["split", "truth_rho_bar_yes"]).to_parquet(root / "catalog_real.parquet", index=False)
    sky = sample_population(len(df), params["simulate"]["sky"], 5).iloc[: len(df)]  # a simulated sky's truth
    assert len(sky) == len(df)
    sim = df.drop(columns=["split"]).assign(**{f"truth_{c}": sky[c].to_numpy() for c in sky.columns
                                              if c not in ("ra", "dec")})
    sim.to_parquet(root / "catalog_sim.parquet", index=False)

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
            "predictions": predictions, "params": params_file, "test": test, "rho": rho, "catalog_df": df,
            "catalog_real": root / "catalog_real.parquet", "catalog_sim": root / "catalog_sim.parquet",
            "sim_df": sim}


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
    assert list(table.columns) == [*ev.CALIBRATION_COLUMNS, *ev.TRUTH_CALIBRATION_COLUMNS]  # simulated: oracle too
    assert table["epsilon"].is_monotonic_increasing and table["epsilon"].is_unique
    assert set(ev.TABLE_EPSILONS) <= set(np.round(table["epsilon"], 10))
    assert math.isnan(table["coverage_error_mc"].iloc[0]) and table["actual_mc"].iloc[0] == 0
    k, n = test["bar_yes"].to_numpy(), test["bar_total-votes"].to_numpy()
    expect = ev.coverage_counts(mixture_pmf(rho, n), k, n, table["epsilon"].to_numpy())
    np.testing.assert_allclose(table["expected_mc"], expect.expected, rtol=1e-5)
    np.testing.assert_array_equal(table["actual_mc"], expect.actual)
    assert (table["actual_mc"] <= g).all() and (table["expected_deterministic"] <= g + 1e-6).all()
    expect_t1 = ev.coverage_counts(single_pass_pmf(rho[:, 0], n), k, n, table["epsilon"].to_numpy())
    np.testing.assert_allclose(table["expected_t1"], expect_t1.expected, rtol=1e-5)
    np.testing.assert_array_equal(table["actual_t1"], expect_t1.actual)

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_galaxies"] == g and metrics["passes"] == 4
    assert metrics["rmse_vs_vote_fraction"]["mc_mean_rho"] == pytest.approx(
        np.sqrt(np.mean((rho.mean(axis=1) - k / n) ** 2)), rel=1e-5)
    truth = metrics["rmse_vs_true_rho"]
    assert truth["n_galaxies"] == g
    assert truth["mc_mean_rho"] == pytest.approx(
        np.sqrt(np.mean((rho.mean(axis=1) - test["truth_rho_bar_yes"]) ** 2)), rel=1e-5)
    assert truth["t1_rho"] == pytest.approx(np.sqrt(np.mean((rho[:, 0] - test["truth_rho_bar_yes"]) ** 2)), rel=1e-5)
    for kind in ev.KINDS:
        assert set(metrics["coverage_error"][kind]) == {"eps_0p02", "eps_0p05", "eps_0p10", "eps_0p20"}
    truth_rho = test["truth_rho_bar_yes"].to_numpy()
    expect_truth = ev.coverage_counts(single_pass_pmf(truth_rho, n), k, n, table["epsilon"].to_numpy())
    np.testing.assert_array_equal(table["actual_truth"], expect_truth.actual)
    np.testing.assert_allclose(table["expected_truth"], expect_truth.expected, rtol=1e-5)
    assert set(metrics["coverage_error"]["truth"]) == {"eps_0p02", "eps_0p05", "eps_0p10", "eps_0p20"}
    row = table.set_index(np.round(table["epsilon"], 10)).loc[0.1]
    assert metrics["coverage_error"]["t1"]["eps_0p10"] == pytest.approx(row["coverage_error_t1"], rel=1e-4)
    assert metrics["coverage_error"]["deterministic"]["eps_0p10"] == pytest.approx(
        row["coverage_error_deterministic"], rel=1e-4)
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

    # truth rho but no truth_morphology: only the `all` row; no class, so no class-only predictor
    learn = pd.read_csv(out / "learnability.csv")
    assert list(learn.columns) == list(ev.LEARNABILITY_COLUMNS) and learn["group"].tolist() == ["all"]
    assert learn["n_galaxies"].iloc[0] == g
    assert learn["rmse_model"].iloc[0] == pytest.approx(truth["mc_mean_rho"], rel=1e-4)
    assert learn["rmse_floor"].iloc[0] == pytest.approx(truth["observed_vote_fraction"], rel=1e-4)
    assert math.isnan(learn["rmse_class_only"].iloc[0]) and math.isnan(learn["gain_over_class"].iloc[0])
    train_val = s["catalog_df"][~s["catalog_df"]["id_str"].isin(test["id_str"])
                                & (s["catalog_df"]["bar_total-votes"] >= 10)]
    assert metrics["learnability"]["reference_galaxies"] == len(train_val)
    assert metrics["learnability"]["all"]["rmse_constant"] == pytest.approx(
        np.sqrt(np.mean((train_val["truth_rho_bar_yes"].mean() - test["truth_rho_bar_yes"]) ** 2)), rel=1e-4)


def test_cli_learnability_with_simulated_truth(stage_inputs, tmp_path):
    from gzmorph import config
    from gzmorph.sim.volunteers import visibility

    s, out = stage_inputs, tmp_path / "out"
    argv = _argv(s, out, False)
    argv[argv.index("--catalog") + 1] = str(s["catalog_sim"])
    _cli(argv)
    g = len(s["test"])
    learn = pd.read_csv(out / "learnability.csv").set_index("group")
    bins = [f"{f} {b}" for f in ev.VISIBILITY_FEATURES for b in ev.bin_labels()]
    assert learn.index.tolist() == ["all", "smooth", "disk", *bins]
    assert learn.loc["all", "n_galaxies"] == g == learn.loc["smooth", "n_galaxies"] + learn.loc["disk", "n_galaxies"]
    test = s["sim_df"].set_index("id_str").loc[s["test"]["id_str"]]
    disk = (test["truth_morphology"] == "disk").to_numpy()
    assert learn.loc["disk", "n_galaxies"] == disk.sum() > 0
    sky = {c[len("truth_"):]: test[c].to_numpy() for c in test.columns if c.startswith("truth_")}
    vis = visibility(sky, config.load(s["params"])["simulate"]["surveys"]["sdss"])
    for f in ev.VISIBILITY_FEATURES:
        counts = np.bincount(ev.bin_index(getattr(vis, f)[disk]), minlength=len(ev.bin_labels()))
        np.testing.assert_array_equal(learn.loc[[f"{f} {b}" for b in ev.bin_labels()], "n_galaxies"], counts)
    assert learn.loc["all", "rmse_class_only"] > 0 and math.isfinite(learn.loc["all", "gain_over_class"])
    metrics = json.loads((out / "metrics.json").read_text())["learnability"]
    assert {"all", "smooth", "disk", "visibility", "vote_cut", "reference_galaxies"} <= set(metrics)
    assert metrics["vote_cut"] == 10 and set(metrics["visibility"]) == {ev.group_key(b) for b in bins}
    assert metrics["all"]["gain_over_class"] == pytest.approx(learn.loc["all", "gain_over_class"], rel=1e-4)


def test_cli_without_truth_writes_the_all_row(stage_inputs, tmp_path):
    s, out = stage_inputs, tmp_path / "out"
    argv = _argv(s, out, False)
    argv[argv.index("--catalog") + 1] = str(s["catalog_real"])
    _cli(argv)
    learn = pd.read_csv(out / "learnability.csv")
    assert learn["group"].tolist() == ["all"] and learn["n_galaxies"].tolist() == [0]
    assert learn.drop(columns=["group", "n_galaxies"]).isna().all(axis=None)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["learnability"] is None and metrics["rmse_vs_true_rho"] is None


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

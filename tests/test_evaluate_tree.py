"""Evaluation of every question of a whole-tree (Dirichlet-multinomial) model, and its galleries."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from test_train import RESOLUTION, blob_image

from gzmorph import evaluate_tree as et
from gzmorph.cli import main
from gzmorph.config import UserError
from gzmorph.tree import DECALS_DR5, GZ2


def _model(g: int, t: int, a: int, rng: np.random.Generator, spread: float = 0.3) -> np.ndarray:
    """alpha [G, T, A] in (1, 101): a galaxy centre plus pass-to-pass noise (logits)."""
    logits = rng.normal(0, 1.5, size=(g, 1, a)) + rng.normal(0, spread, size=(g, t, a))
    return 1.0 + 100.0 / (1.0 + np.exp(-logits))


def _votes_from(alpha: np.ndarray, n: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Votes drawn from the model's own posterior: a random pass, rho ~ Dir(alpha_t), k ~ Mult(N, rho)."""
    pick = alpha[np.arange(len(n)), rng.integers(0, alpha.shape[1], len(n))]
    rho = rng.standard_gamma(pick)
    return rng.multinomial(n, rho / rho.sum(axis=1, keepdims=True))


# ---------------------------------------------------------------------------------------------- hand cases

def test_majority_confusion_and_agreement_by_hand():
    k = np.array([[5, 1, 0], [0, 4, 1], [2, 2, 1], [0, 0, 3]])  # volunteers: 0, 1, 0 (tie -> first), 2
    f = np.array([[0.6, 0.3, 0.1], [0.5, 0.4, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]])  # model: 0, 0, 1, 2
    matrix = et.majority_confusion(k, f)
    np.testing.assert_array_equal(matrix, [[1, 1, 0], [1, 0, 0], [0, 0, 1]])
    assert et.agreement(matrix) == 0.5
    assert math.isnan(et.agreement(np.zeros((2, 2), int)))


def test_question_metrics_by_hand():
    q = DECALS_DR5.question("disk-edge-on")
    # two passes per galaxy; expected fractions 0.75/0.25 and 0.5/0.5; third galaxy never asked
    alpha = np.array([[[3.0, 1.0], [3.0, 1.0]], [[2.0, 2.0], [1.0, 1.0]], [[5.0, 1.0], [5.0, 1.0]]])
    counts = np.array([[2, 2], [1, 3], [0, 0]])
    truth = np.array([[0.7, np.nan], [0.4, np.nan], [0.9, np.nan]])  # the simulator gave 'yes' only
    r = et.evaluate_question(q, alpha, counts, truth=truth, confusion_min_votes=1)
    m = r.metrics
    assert m["n_galaxies"] == 2
    # errors: galaxy 0 (0.75 - 0.5), galaxy 1 (0.5 - 0.25), both answers -> all 0.25
    assert math.isclose(m["rmse_vs_vote_fraction"]["mc"], 0.25)
    assert math.isclose(m["rmse_vs_true_rho"]["mc"], math.sqrt((0.05**2 + 0.1**2) / 2))
    assert math.isclose(m["rmse_vs_true_rho"]["observed_vote_fraction"], math.sqrt((0.2**2 + 0.15**2) / 2))
    assert m["rmse_vs_true_rho"]["answers"] == ["yes"]
    # volunteers: galaxy 0 ties -> yes, galaxy 1 no; model: yes, yes (0.5/0.5 tie -> yes)
    assert m["confusion"]["matrix"] == [[1, 0], [1, 0]] and m["confusion"]["agreement"] == 0.5
    assert set(m["coverage_error"]) == {"mc", "t1", "truth"}  # truth: the oracle Bin(k | N, true rho)
    per = r.per_answer.set_index("answer")
    assert math.isclose(per.loc["yes", "rmse_true_rho_mc"], m["rmse_vs_true_rho"]["mc"])
    assert "rmse_true_rho_mc" not in per.columns or math.isnan(per.loc["no", "rmse_true_rho_mc"])


def test_coverage_pools_answers_and_uses_the_beta_binomial_marginal():
    from gzmorph.evaluate import coverage_counts
    from gzmorph.posterior import answer_mixture_pmf

    rng = np.random.default_rng(0)
    q = DECALS_DR5.question("bar")
    alpha = _model(40, 5, 3, rng)
    n = rng.integers(0, 30, 40)
    counts = _votes_from(alpha, n, rng)
    eps = np.array([0.0, 0.1, 0.2])
    r = et.evaluate_question(q, alpha, counts, epsilons=eps)
    asked = n >= 1
    cal = r.calibration.set_index(["answer", "epsilon"])
    total_expected = 0.0
    for j, answer in enumerate(q.answer_names):
        want = coverage_counts(answer_mixture_pmf(alpha[asked], n[asked], j), counts[asked, j], n[asked], eps)
        np.testing.assert_allclose(cal.loc[answer]["expected_mc"].to_numpy(), want.expected)
        np.testing.assert_array_equal(cal.loc[answer]["actual_mc"].to_numpy(), want.actual)
        total_expected += want.expected
    np.testing.assert_allclose(cal.loc["all"]["expected_mc"].to_numpy(), total_expected)
    t1 = coverage_counts(answer_mixture_pmf(alpha[asked, :1], n[asked], 0), counts[asked, 0], n[asked], eps)
    np.testing.assert_allclose(cal.loc["strong"]["expected_t1"].to_numpy(), t1.expected)


def test_oracle_uses_the_true_rho_of_the_answers_that_have_one():
    from gzmorph.evaluate import coverage_counts
    from gzmorph.posterior import single_pass_pmf

    rng = np.random.default_rng(4)
    q = DECALS_DR5.question("bar")
    rho = rng.dirichlet([2, 2, 2], 400)
    n = rng.integers(0, 40, 400)
    counts = rng.multinomial(n, rho)
    truth = rho.copy()
    truth[:, 1] = np.nan  # the simulator stored no true rho for 'weak'
    truth[:7, 0] = np.nan  # nor for a few galaxies' 'strong'
    eps = np.array([0.02, 0.05, 0.1, 0.2])
    r = et.evaluate_question(q, _model(400, 3, 3, rng), counts, truth=truth, epsilons=eps)
    cal = r.calibration.set_index(["answer", "epsilon"])
    ok = (n >= 1) & np.isfinite(truth[:, 0])
    want = coverage_counts(single_pass_pmf(rho[ok, 0], n[ok]), counts[ok, 0], n[ok], eps)
    np.testing.assert_allclose(cal.loc["strong"]["expected_truth"].to_numpy(), want.expected)
    assert cal.loc["weak"]["expected_truth"].isna().all()
    no = coverage_counts(single_pass_pmf(rho[n >= 1, 2], n[n >= 1]), counts[n >= 1, 2], n[n >= 1], eps)
    np.testing.assert_allclose(cal.loc["all"]["actual_truth"].to_numpy(), want.actual + no.actual)
    # multinomial votes of the true rho: the oracle is calibrated
    assert all(abs(v) < 0.06 for v in r.metrics["coverage_error"]["truth"].values())


# ---------------------------------------------------------------------------------------------- calibration

def _calibrated_case(scale: float = 1.0, g: int = 1500, seed: int = 1):
    """Votes drawn from the posterior of alpha; the model reports alpha * scale (scale > 1: overconfident)."""
    rng = np.random.default_rng(seed)
    alpha = _model(g, 10, 3, rng)
    n = rng.integers(20, 41, g)
    return alpha * scale, _votes_from(alpha, n, rng)


def test_calibrated_model_has_small_coverage_error_and_overconfident_positive():
    """Votes from the MC mixture: MC is calibrated (|error| < 6 %, measured 0.5-5 %), one pass alone (T = 1)
    is overconfident; concentrations x 20 make MC overconfident too (measured +2 to +12 %)."""
    q = DECALS_DR5.question("bar")
    alpha, counts = _calibrated_case()
    good = et.evaluate_question(q, alpha, counts).metrics["coverage_error"]
    assert all(abs(v) < 0.06 for v in good["mc"].values()), good
    assert all(v > 0.02 for v in good["t1"].values()), good
    alpha, counts = _calibrated_case(scale=20.0)
    bad = et.evaluate_question(q, alpha, counts).metrics["coverage_error"]["mc"]
    assert all(bad[e] > good["mc"][e] + 0.01 for e in bad), bad
    assert bad["eps_0p05"] > 0.05


# ---------------------------------------------------------------------------------------------- galleries

def test_gallery_rows_rank_asked_galaxies():
    q = DECALS_DR5.question("disk-edge-on")
    alpha = np.array([[[9.0, 1.0]], [[5.0, 5.0]], [[99.0, 1.0]], [[1.0, 9.0]], [[2.0, 2.0]]])
    asked = np.array([True, True, False, True, True])  # galaxy 2 is the most 'yes' but was never asked
    g = et.question_gallery(q, alpha, asked, 2)
    np.testing.assert_array_equal(g.rows["yes"], [0, 1])
    np.testing.assert_array_equal(g.rows["no"], [3, 1])
    np.testing.assert_allclose(g.scores["yes"], [0.9, 0.5])
    # std of a Beta(a, b) fraction: sqrt(ab / ((a+b)^2 (a+b+1))); two answers -> sqrt(2) x that
    np.testing.assert_array_equal(g.rows["most uncertain"], [4, 1])
    np.testing.assert_allclose(g.scores["most uncertain"][0], math.sqrt(2 * 4 / (16 * 5)))


# ---------------------------------------------------------------------------------------------- stage

def _survey(root, g: int = 48, t: int = 6, seed: int = 3):
    """A small GZ2 survey: catalog with votes from a synthetic whole-tree model and truth, its posterior
    catalog, and shards with blob images."""
    from gzmorph.shards import write_shards

    rng = np.random.default_rng(seed)
    tree = GZ2
    alpha = _model(g, t, tree.n_answers(), rng).astype(np.float32)
    ids = [f"{2000000 + i}" for i in range(g)]
    (root / "images").mkdir()
    locs = []
    for i in ids:
        path = root / "images" / f"{i}.png"
        Image.fromarray(blob_image(rng, rng.uniform())).save(path, compress_level=1)
        locs.append(str(path))
    df = pd.DataFrame({"id_str": ids, "ra": 150.0, "dec": 2.0, "survey": "sdss", "tree": tree.name,
                       "file_loc": locs})
    for q in tree.questions:
        sl = tree.answer_slices[q.name]
        n = rng.integers(0, 30, g)
        n[:3] = 25  # some galaxies asked every question
        counts = _votes_from(alpha[:, :, sl].astype(float), n, rng)
        for j, col in enumerate(q.answer_columns):
            df[col] = counts[:, j]
            df[f"truth_rho_{col}"] = (alpha[:, :, sl] / alpha[:, :, sl].sum(axis=2, keepdims=True)).mean(axis=1)[:, j]
        df[q.total_column] = n
    catalog = root / "catalog.parquet"
    df.to_parquet(catalog, index=False)
    columns = {"id_str": pa.array(ids)}
    for j, col in enumerate(tree.answer_columns):
        columns[f"{col}_concentration"] = pa.array(list(alpha[:, :, j]), pa.list_(pa.float32()))
    posteriors = root / "posteriors.parquet"
    pq.write_table(pa.table(columns), posteriors)
    shards = root / "shards"
    write_shards(df, shards, tree=tree, resolution=RESOLUTION, shard_size=32,
                 fractions={"train": 0.5, "val": 0.25, "test": 0.25}, seed=0, threads=1, progress=False)
    return {"catalog": catalog, "posteriors": posteriors, "shards": shards, "df": df, "alpha": alpha, "ids": ids}


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    return _survey(tmp_path_factory.mktemp("tree_survey"))


def test_load_concentrations_round_trip_and_bad_input(survey, tmp_path):
    ids, alpha = et.load_concentrations(survey["posteriors"], GZ2)
    np.testing.assert_array_equal(ids, survey["ids"])
    np.testing.assert_array_equal(alpha, survey["alpha"])
    assert et.load_deterministic(survey["posteriors"], GZ2) is None
    table = pq.read_table(survey["posteriors"]).drop_columns(["bar_yes_concentration"])
    pq.write_table(table, tmp_path / "bad.parquet")
    with pytest.raises(UserError, match="bar_yes_concentration"):
        et.load_concentrations(tmp_path / "bad.parquet", GZ2)


def test_cli_end_to_end(survey, tmp_path, capsys):
    out = tmp_path / "tree" / "sdss"
    rc = main(["evaluate-tree", "--posteriors", str(survey["posteriors"]), "--catalog", str(survey["catalog"]),
               "--shards", str(survey["shards"]), "--out-dir", str(out), "--gallery-size", "4"])
    assert rc == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_questions"] == 11 and metrics["n_answers"] == 37 and metrics["passes"] == 6
    df, alpha = survey["df"], survey["alpha"].astype(float)
    for q in GZ2.questions:
        m = metrics["questions"][q.name]
        sl = GZ2.answer_slices[q.name]
        k = df[list(q.answer_columns)].to_numpy()
        n = k.sum(axis=1)
        asked = n >= 1
        f = (alpha[:, :, sl] / alpha[:, :, sl].sum(axis=2, keepdims=True)).mean(axis=1)
        assert m["n_galaxies"] == asked.sum()
        want = np.sqrt(np.mean((f[asked] - k[asked] / n[asked, None]) ** 2))
        assert math.isclose(m["rmse_vs_vote_fraction"]["mc"], want, rel_tol=1e-5)
        assert m["rmse_vs_true_rho"]["mc"] < 1e-6  # the truth is the model's own expected fraction here
        assert m["rmse_vs_true_rho"]["answers"] == list(q.answer_names)
        matrix = np.array(m["confusion"]["matrix"])
        assert matrix.sum() == (n >= et.CONFUSION_MIN_VOTES).sum()
        saved = pd.read_csv(out / "confusion" / f"{q.name}.csv", index_col=0)
        np.testing.assert_array_equal(saved.to_numpy(), matrix)
        assert (out / "galleries" / f"{q.name}.png").stat().st_size > 5000
    per_q = pd.read_csv(out / "per_question.csv")
    assert list(per_q["question"]) == list(GZ2.question_names)
    cal = pd.read_csv(out / "calibration.csv")
    assert len(cal) == (37 + 11) * len(et.epsilon_grid())
    assert {"expected_mc", "actual_t1", "coverage_error_mc"} <= set(cal.columns)
    with Image.open(out / "questions.png") as im:
        assert im.size[0] > 1000 and im.size[1] > 1000


def test_cli_votes_from_shards_match_catalog(survey, tmp_path):
    a = et.evaluate_tree(survey["posteriors"], tmp_path / "a", catalog=survey["catalog"], gallery_size=0)
    b = et.evaluate_tree(survey["posteriors"], tmp_path / "b", shards=survey["shards"], gallery_size=0)
    for q in GZ2.question_names:
        assert a["questions"][q]["rmse_vs_vote_fraction"] == b["questions"][q]["rmse_vs_vote_fraction"]
        assert a["questions"][q]["confusion"] == b["questions"][q]["confusion"]
    assert b["questions"]["bar"]["rmse_vs_true_rho"] is None
    assert not (tmp_path / "a" / "galleries").exists()


def test_cli_errors_name_the_problem(survey, tmp_path, capsys):
    assert main(["evaluate-tree", "--posteriors", str(survey["posteriors"]), "--out-dir", str(tmp_path)]) == 2
    assert "--catalog or --shards" in capsys.readouterr().err
    small = survey["df"].iloc[:10]
    small.to_parquet(tmp_path / "small.parquet", index=False)
    assert main(["evaluate-tree", "--posteriors", str(survey["posteriors"]), "--catalog",
                 str(tmp_path / "small.parquet"), "--out-dir", str(tmp_path)]) == 2
    assert "have no votes, e.g. id '2000010'" in capsys.readouterr().err


def test_deterministic_concentrations_are_a_third_posterior(survey, tmp_path):
    table = pq.read_table(survey["posteriors"])
    point = survey["alpha"].mean(axis=1) * 2  # any positive values: one per galaxy and answer
    for j, col in enumerate(GZ2.answer_columns):
        table = table.append_column(f"{col}_concentration_deterministic", pa.array(point[:, j]))
    pq.write_table(table, tmp_path / "with_point.parquet")
    metrics = et.evaluate_tree(tmp_path / "with_point.parquet", tmp_path / "out", catalog=survey["catalog"],
                               gallery_size=0)
    assert metrics["kinds"] == ["mc", "t1", "deterministic"]
    q = GZ2.question("bar")
    k = survey["df"][list(q.answer_columns)].to_numpy()
    n = k.sum(axis=1)
    p = point[:, GZ2.answer_slices["bar"]]
    f = p / p.sum(axis=1, keepdims=True)
    want = np.sqrt(np.mean((f[n > 0] - k[n > 0] / n[n > 0, None]) ** 2))
    assert math.isclose(metrics["questions"]["bar"]["rmse_vs_vote_fraction"]["deterministic"], want, rel_tol=1e-5)
    assert set(metrics["questions"]["bar"]["coverage_error"]) == {"mc", "t1", "deterministic", "truth"}


def test_non_positive_concentration_is_named(survey, tmp_path):
    table = pq.read_table(survey["posteriors"])
    values = table.column("bar_no_concentration").to_pylist()
    values[5][2] = 0.0
    i = table.column_names.index("bar_no_concentration")
    table = table.set_column(i, "bar_no_concentration", pa.array(values, pa.list_(pa.float32())))
    pq.write_table(table, tmp_path / "bad.parquet")
    with pytest.raises(UserError, match="'bar_no_concentration', row 5"):
        et.load_concentrations(tmp_path / "bad.parquet", GZ2)

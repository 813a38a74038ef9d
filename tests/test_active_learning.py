"""``gzmorph active-learning``: labels-saved arithmetic, the BALD verdict, a tiny end-to-end run and the summary."""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import pytest
import yaml
from test_train import QUESTION, ROOT, learnable_shards

from gzmorph import active_learning as al
from gzmorph import config

INITIAL, PER_ITERATION, ITERATIONS = 16, 8, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gzmorph")
    al.register(parser.add_subparsers(dest="stage", required=True))
    return parser


# ------------------------------------------------------------------------------- BALD saves labels

# A sky of one common kind of galaxy (85 %, rho 0.8) and 15 rare kinds (1 % each, rho 0.05 ... 0.95), with a
# model that is exactly Bayesian: a Beta(1, 1) prior on each kind's rho, updated by the labelled galaxies'
# votes; its T "passes" are posterior draws.  What a network must learn from pixels is replaced by knowing
# the kind, so the loop is the paper's acquisition and its summary alone, fast and without noise from training.
# Small models for fast tests: Fig. 3's trunk for every question, whatever params.yaml ships.
PAPER_TRUNKS = {q: {"trunk_filters": [32, 32, 16], "dense_units": 128} for q in ("smooth-or-featured", "bar")}
KIND_RHO = np.r_[0.8, np.linspace(0.05, 0.95, 15)]
KIND_SHARE = np.r_[0.85, np.full(15, 0.01)]


def _conjugate_run(strategy: str, seed: int, score=None, n_pool: int = 2000, n_test: int = 1000,
                   initial: int = 20, per_iteration: int = 5, iterations: int = 10, votes: int = 40,
                   passes: int = 30) -> pd.DataFrame:
    """One active-learning run on the kinds sky; ``score`` (rho passes [G, T], N) -> [G] replaces BALD."""
    from gzmorph.acquisition import acquire, mutual_information

    score = score or mutual_information
    rng = np.random.default_rng(seed)
    kind = rng.choice(len(KIND_RHO), n_pool, p=KIND_SHARE)
    test_kind = rng.choice(len(KIND_RHO), n_test, p=KIND_SHARE)
    k = rng.binomial(votes, KIND_RHO[kind])
    labelled = np.zeros(n_pool, bool)
    labelled[rng.choice(n_pool, initial, replace=False)] = True
    rows = []
    for iteration in range(iterations + 1):
        a = 1 + np.bincount(kind[labelled], weights=k[labelled], minlength=len(KIND_RHO))
        b = 1 + np.bincount(kind[labelled], weights=votes - k[labelled], minlength=len(KIND_RHO))
        rmse = float(np.sqrt(np.mean(((a / (a + b))[test_kind] - KIND_RHO[test_kind]) ** 2)))  # vs the true rho
        rows.append({"question": QUESTION, "strategy": strategy, "seed": seed, "iteration": iteration,
                     "n_labelled": int(labelled.sum()), "n_acquired": int(labelled.sum()) - initial,
                     "eval_rmse": rmse})
        if iteration == iterations:
            break
        if strategy == "bald":
            rho = rng.beta(a[:, None], b[:, None], (len(KIND_RHO), passes))[kind]
            pick = acquire(score(rho, votes), per_iteration, exclude=labelled)
        else:
            pick = rng.choice(np.flatnonzero(~labelled), per_iteration, replace=False)
        labelled[pick] = True
    return pd.DataFrame(rows)


def _conjugate_runs(score=None, seeds=range(4)) -> pd.DataFrame:
    return pd.concat([_conjugate_run(strategy, seed, score) for seed in seeds for strategy in al.STRATEGIES],
                     ignore_index=True)


def test_bald_reaches_random_rmse_with_fewer_labels():
    """BALD (eq. 24 on posterior draws) finds the rare kinds; random meets one in 100 draws.  Through the
    summary's own arithmetic: BALD reaches random's best RMSE with over half fewer new labels (measured
    0.68) and ends lower in all 4 repeats."""
    summary = al.summarize_question(_conjugate_runs())
    assert summary["bald_wins_all_repeats"] and summary["n_repeats"] == 4
    assert summary["labels_saved_best"] > 0.5 and summary["labels_saved_end"] > 0.5
    assert summary["rmse_bald_end"] < 0.6 * summary["rmse_random_end"]


def test_acquiring_the_least_informative_saves_no_labels():
    """The control that shows the test above can fail: the same loop taking the galaxies of lowest mutual
    information (the common kind, already known) never reaches random's best RMSE."""
    from gzmorph.acquisition import mutual_information

    summary = al.summarize_question(_conjugate_runs(lambda rho, n: -mutual_information(rho, n)))
    assert not summary["bald_wins_all_repeats"]
    assert not summary["labels_saved_best"] > 0


# ------------------------------------------------------------------------------------------- arithmetic


def test_first_reach_interpolates_linearly():
    n = np.array([0, 100, 200, 300])
    assert al.first_reach(n, [0.3, 0.20, 0.18, 0.17], 0.20) == 100
    assert al.first_reach(n, [0.3, 0.22, 0.18, 0.17], 0.20) == pytest.approx(150)
    assert al.first_reach(n, [0.3, 0.20, 0.18, 0.17], 0.30) == 0
    assert np.isnan(al.first_reach(n, [0.3, 0.25, 0.24, 0.23], 0.20))


def test_labels_saved_on_hand_made_curves():
    n = [0, 100, 200, 300]
    runs = pd.concat([
        pd.DataFrame({"question": "bar", "strategy": "random", "seed": 0, "iteration": range(4), "n_acquired": n,
                      "eval_rmse": [0.30, 0.25, 0.20, 0.21]}),
        pd.DataFrame({"question": "bar", "strategy": "bald", "seed": 0, "iteration": range(4), "n_acquired": n,
                      "eval_rmse": [0.30, 0.20, 0.18, 0.17]}),
    ])
    row = al.summarize_question(runs)
    # random's best: 0.20 at 200 new labels; BALD reaches 0.20 at 100 -> half the labels
    assert row["labels_saved_best"] == pytest.approx(0.5)
    assert (row["rmse_random_best"], row["n_random_best"]) == (pytest.approx(0.20), 200)
    # random's end: 0.21 at 300; BALD crosses 0.21 between 0 (0.30) and 100 (0.20) at 90 -> 1 - 90 / 300
    assert row["labels_saved_end"] == pytest.approx(0.7)
    assert row["bald_wins_all_repeats"] and row["n_repeats"] == 1 and row["bald_wins"] == 1
    assert np.isnan(al.labels_saved(0, 50)) and np.isnan(al.labels_saved(100, float("nan")))


def test_labels_saved_averages_repeats():
    n = [0, 100, 200]
    frames = [pd.DataFrame({"question": "q", "strategy": s, "seed": seed, "iteration": range(3), "n_acquired": n,
                            "eval_rmse": r})
              for s, seed, r in [("random", 0, [0.3, 0.26, 0.22]), ("random", 1, [0.3, 0.24, 0.18]),
                                 ("bald", 0, [0.3, 0.22, 0.2]), ("bald", 1, [0.3, 0.18, 0.16])]]
    row = al.summarize_question(pd.concat(frames))
    # mean random: 0.30, 0.25, 0.20 (best = end = 0.20 at 200); mean BALD: 0.30, 0.20 -> 100 labels
    assert row["labels_saved_best"] == pytest.approx(0.5) and row["labels_saved_end"] == pytest.approx(0.5)


@pytest.mark.parametrize(("bald_final", "expected"), [([0.1, 0.2], (True, 2, 2)), ([0.1, 0.4], (False, 2, 1)),
                                                      ([0.4, 0.4], (False, 2, 0))])
def test_bald_wins_pairs_by_seed(bald_final, expected):
    rows = []
    for seed, (b, r) in enumerate(zip(bald_final, [0.3, 0.3], strict=True)):
        rows += [{"strategy": "bald", "seed": seed, "iteration": 0, "eval_rmse": 0.5},
                 {"strategy": "bald", "seed": seed, "iteration": 1, "eval_rmse": b},
                 {"strategy": "random", "seed": seed, "iteration": 0, "eval_rmse": 0.05},
                 {"strategy": "random", "seed": seed, "iteration": 1, "eval_rmse": r}]
    rows.append({"strategy": "bald", "seed": 7, "iteration": 1, "eval_rmse": 0.9})  # unpaired: ignored
    assert al.bald_wins(pd.DataFrame(rows)) == expected


# ------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("active_learning")
    shards, df = learnable_shards(root, n=300, seed=2)
    override = {"seed": 0, "shards": {"split": {"train": 0.6, "val": 0.2, "test": 0.2}},
                "train": {"input_size": 32, "learning_rate": 0.003, "dropout_rate": 0.2, "questions": PAPER_TRUNKS},
                "active_learning": {"augmentations": 1, "dropout_masks": 2,
                                    "max_epochs": 1, "min_epochs": 0, "warm_start": False,
                                    "patience": 1, "warmup_epochs": 0, "min_steps_per_epoch": 2,
                                    "batch_size": 16, "questions": {QUESTION: {
                                        "initial": INITIAL, "per_iteration": PER_ITERATION,
                                        "iterations": ITERATIONS}}}}
    path = root / "override.yaml"
    path.write_text(yaml.safe_dump(override))
    params = config.load([ROOT / "params.yaml", path])
    warm = {**params, "active_learning": {**params["active_learning"], "warm_start": True}}

    recorded: list[np.ndarray] = []
    rng = np.random.default_rng(0)

    def fake_scores(rho, n):  # known scores, so the test can check BALD takes the highest
        assert rho.shape[1] == 2 and n >= 1
        scores = rng.uniform(size=len(rho))
        recorded.append(scores)
        return scores

    # (init, trained model, its weights then) per iteration, for the run in progress
    trainings: dict[str, list[tuple]] = {"bald": [], "random": []}
    running = ["bald"]
    train_model = al._train_model

    def spy(*args, init=None, **kwargs):
        result = train_model(*args, init=init, **kwargs)
        trainings[running[0]].append((init, result[0], [w.copy() for w in result[0].get_weights()]))
        return result

    load, bald_scores = config.load, al.bald_scores

    def load_cold(paths):
        params = load(paths)
        params["active_learning"]["warm_start"] = False
        return params

    out = root / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(al, "bald_scores", fake_scores)
        mp.setattr(al, "_train_model", spy)
        # BALD warm-starts every iteration from the last model; random trains fresh ones (whatever params.yaml says)
        mp.setattr(config, "load", load_cold)
        al.simulate(warm, QUESTION, "bald", 0, shards, out / "bald_0.csv", out / "bald_0.parquet", threads=2)
        running[0] = "random"
        mp.setattr(al, "bald_scores", bald_scores)
        args = _parser().parse_args(["active-learning", "run", "--params", str(ROOT / "params.yaml"), "--params",
                                     str(path), "--question", QUESTION, "--strategy", "random", "--seed", "0",
                                     "--shards", str(shards), "--out", str(out / "random_0.csv"), "--acquired",
                                     str(out / "random_0.parquet"), "--threads", "2"])
        args.func(args)
    keep = df["bar_total-votes"] >= 10
    return {"root": root, "shards": shards, "params": params, "params_files": [ROOT / "params.yaml", path],
            "out": out, "recorded": recorded, "trainings": trainings,
            "train_ids": set(df.loc[keep & (df["split"] == "train"), "id_str"]),
            "test_ids": set(df.loc[keep & (df["split"] == "test"), "id_str"])}


@pytest.mark.parametrize("strategy", ["bald", "random"])
def test_run_table(tiny, strategy):
    runs = pd.read_csv(tiny["out"] / f"{strategy}_0.csv")
    assert tuple(runs.columns) == al.RUN_COLUMNS
    assert runs["iteration"].tolist() == list(range(ITERATIONS + 1))
    assert runs["n_labelled"].tolist() == [INITIAL + PER_ITERATION * i for i in range(ITERATIONS + 1)]
    assert runs["n_acquired"].tolist() == [PER_ITERATION * i for i in range(ITERATIONS + 1)]
    assert (runs["question"] == QUESTION).all() and (runs["strategy"] == strategy).all() and (runs["seed"] == 0).all()
    assert np.isfinite(runs[["train_loss", "val_loss", "eval_loss", "eval_rmse"]].to_numpy()).all()
    assert ((runs["eval_rmse"] > 0) & (runs["eval_rmse"] < 1)).all()


@pytest.mark.parametrize("strategy", ["bald", "random"])
def test_acquired_galaxies_come_from_the_pool_once(tiny, strategy):
    acq = pd.read_parquet(tiny["out"] / f"{strategy}_0.parquet")
    assert tuple(acq.columns) == al.ACQUIRED_COLUMNS
    got = acq[acq["role"] == "acquired"]
    assert len(got) == PER_ITERATION * ITERATIONS
    assert got.groupby("iteration").size().to_dict() == dict.fromkeys(range(ITERATIONS), PER_ITERATION)
    assert got["id_str"].is_unique
    assert set(got["id_str"]) <= tiny["train_ids"] and not set(got["id_str"]) & tiny["test_ids"]
    np.testing.assert_allclose(got["vote_fraction"], got["votes"] / got["total_votes"])
    test = acq[acq["role"] == "test"]  # final-model scores of every test galaxy
    assert set(test["id_str"]) == tiny["test_ids"] and (test["iteration"] == ITERATIONS).all()


def test_same_seed_gives_the_same_initial_set_and_first_model(tiny):
    bald = pd.read_csv(tiny["out"] / "bald_0.csv")
    rand = pd.read_csv(tiny["out"] / "random_0.csv")
    np.testing.assert_allclose(bald.loc[0, ["train_loss", "eval_rmse"]].to_numpy(float),
                               rand.loc[0, ["train_loss", "eval_rmse"]].to_numpy(float), rtol=1e-5)


def test_bald_acquires_the_highest_scores(tiny):
    acq = pd.read_parquet(tiny["out"] / "bald_0.parquet")
    got = acq[acq["role"] == "acquired"]
    recorded = tiny["recorded"]
    assert len(recorded) == ITERATIONS + 1  # one pool scoring per acquisition, then the test set
    pool = len(tiny["train_ids"])
    for i in range(ITERATIONS):
        assert len(recorded[i]) == pool - INITIAL - PER_ITERATION * i  # only unlabelled galaxies are scored
        top = np.sort(recorded[i])[::-1][:PER_ITERATION]
        np.testing.assert_allclose(got.loc[got["iteration"] == i, "score"].to_numpy(), top)
    assert acq[acq["role"] == "random"].empty
    assert pd.read_parquet(tiny["out"] / "random_0.parquet").query("role == 'acquired'")["score"].isna().all()


def test_summarize_cli(tiny):
    out = tiny["out"]
    figures = out / "figures"
    argv = ["active-learning", "summarize", "--runs", str(out / "bald_0.csv"), str(out / "random_0.csv"),
            "--acquired", str(out / "bald_0.parquet"), str(out / "random_0.parquet"), "--summary",
            str(out / "summary.csv"), "--figures", str(figures), "--shards", str(tiny["shards"])]
    for p in tiny["params_files"]:
        argv += ["--params", str(p)]
    args = _parser().parse_args(argv)
    args.func(args)
    summary = pd.read_csv(out / "summary.csv")
    assert tuple(summary.columns) == al.SUMMARY_COLUMNS
    assert summary["question"].tolist() == [QUESTION] and summary["n_repeats"].tolist() == [1]
    for name in ("curves", "acquired", "informative"):
        assert (figures / f"{QUESTION}_{name}.png").stat().st_size > 0
    assert not [p for p in out.rglob(".*")]  # no temporary files left


def test_summarize_fake_runs_without_shards(tmp_path):
    rng = np.random.default_rng(0)
    runs, acquired = [], []
    for q in ("bar", "smooth-or-featured"):
        for strategy in al.STRATEGIES:
            for seed in (0, 1):
                n_acq = np.arange(4) * 10
                rmse = 0.3 - n_acq * (0.002 if strategy == "bald" else 0.001)
                path = tmp_path / f"{q}_{strategy}_{seed}.csv"
                pd.DataFrame({"question": q, "strategy": strategy, "seed": seed, "iteration": range(4),
                              "n_labelled": 20 + n_acq, "n_acquired": n_acq, "train_loss": 5.0, "val_loss": 5.0,
                              "eval_loss": 6 - n_acq / 100, "eval_rmse": rmse}).to_csv(path, index=False)
                runs.append(path)
                a = pd.DataFrame({"question": q, "strategy": strategy, "seed": seed, "role": "acquired",
                                  "iteration": np.repeat(np.arange(3), 10), "id_str": [f"{q}{seed}{i}" for i in
                                                                                       range(30)],
                                  "score": rng.uniform(size=30), "votes": 3, "total_votes": 10,
                                  "vote_fraction": rng.uniform(size=30)})
                path = tmp_path / f"{q}_{strategy}_{seed}.parquet"
                a.to_parquet(path)
                acquired.append(path)
    summary = al.summarize(config.load(ROOT / "params.yaml"), runs, acquired, tmp_path / "s.csv", tmp_path / "fig")
    assert summary["question"].tolist() == ["bar", "smooth-or-featured"]
    # random ends at 0.27 with 30 labels; BALD (0.002 per label) gets there with 15
    np.testing.assert_allclose(summary["labels_saved_end"], 0.5)
    np.testing.assert_allclose(summary["labels_saved_best"], 0.5)
    assert summary["bald_wins_all_repeats"].all() and (summary["n_repeats"] == 2).all()
    assert (summary["bald_wins"] == 2).all()
    assert sorted(p.name for p in (tmp_path / "fig").iterdir()) == [
        "bar_acquired.png", "bar_curves.png", "smooth-or-featured_acquired.png", "smooth-or-featured_curves.png"]


def test_warm_start_fine_tunes_the_previous_model(tiny):
    bald, rand = tiny["trainings"]["bald"], tiny["trainings"]["random"]
    assert len(bald) == len(rand) == ITERATIONS + 1
    assert bald[0][0] is None  # the first model is always fresh
    for i in range(1, ITERATIONS + 1):
        init, model, _ = bald[i]
        assert init is bald[i - 1][1] and model is init  # trained further, not rebuilt
    # it really was trained on: the weights moved away from where the previous iteration left them
    assert any(not np.allclose(a, b) for a, b in zip(bald[0][2], bald[1][2], strict=True))
    assert all(init is None for init, _, _ in rand)
    assert len({id(model) for _, model, _ in rand}) == ITERATIONS + 1


class _FitCalled(Exception):
    pass


def test_train_and_active_learning_share_fit(tiny, tmp_path, monkeypatch):
    """``gzmorph train`` and every active-learning iteration train through the one loop, train.fit."""
    from gzmorph import train
    from gzmorph.inputs import question_spec

    calls = []

    def fake_fit(model, train_ds, val_ds, *, settings, steps_per_epoch=None, **kwargs):
        calls.append((settings, steps_per_epoch, kwargs))
        raise _FitCalled

    monkeypatch.setattr(train, "fit", fake_fit)
    params = tiny["params"]
    with pytest.raises(_FitCalled):
        train.train(params, QUESTION, tiny["shards"], tmp_path / "m.keras", tmp_path / "h.csv", progress=False)
    assert calls[-1][0] == train.fit_settings(params, "train", QUESTION)
    assert calls[-1][2]["checkpoint"] == tmp_path / "m.keras" and calls[-1][2]["history"] == tmp_path / "h.csv"

    import tensorflow as tf

    rng = np.random.default_rng(0)
    data = tf.data.Dataset.from_tensor_slices((rng.integers(0, 255, (20, 32, 32, 3), dtype=np.uint8),
                                               np.tile(np.float32([3, 10]), (20, 1))))
    with pytest.raises(_FitCalled):
        al._train_model(params, question_spec(params, QUESTION), 32, 0, data, 20, data.batch(8))
    settings, steps, _ = calls[-1]
    assert settings == train.fit_settings(params, "active_learning") != train.fit_settings(params, "train")
    assert steps == max(-(-20 // params["active_learning"]["batch_size"]),
                        params["active_learning"]["min_steps_per_epoch"])
    assert len(calls) == 2


def test_mc_rho_runs_predicts_passes(monkeypatch):
    """Active learning scores with predict's passes (rho_functions + chunk_passes), chunk by chunk."""
    import tensorflow as tf

    from gzmorph import predict

    draws = iter(range(1000))
    seen = []

    def fake_pass(x):  # one augmented pass, one dropout mask: a new value per call for every galaxy of the chunk x
        seen.append(len(x))
        return tf.fill([len(x), 1], next(draws) / 1000)

    monkeypatch.setattr(predict, "rho_functions", lambda model, dropout_masks: (fake_pass, None))
    rho = al.mc_rho(object(), np.zeros((10, 2, 2, 3), np.uint8), predict.MCSampling(3, 1), chunk=4)
    assert rho.shape == (10, 3) and rho.dtype == np.float64
    assert seen == [4] * 3 + [4] * 3 + [2] * 3  # all T passes of a chunk, then the next chunk
    np.testing.assert_allclose(rho[0], [0, 0.001, 0.002], atol=1e-7)
    np.testing.assert_allclose(rho[-1], [0.006, 0.007, 0.008], atol=1e-7)
    assert al.mc_rho(object(), np.zeros((0, 2, 2, 3), np.uint8), predict.MCSampling(3, 1)).shape == (0, 3)


def test_pool_index_holds_no_images_and_streams_filter_by_id(tiny):
    """The pool in memory is ids, k and N only (sorted by id); images come from the shards, filtered by id."""
    from gzmorph.inputs import question_spec

    params, shards = tiny["params"], tiny["shards"]
    spec = question_spec(params, QUESTION)
    pool = al.load_split(shards, "train", spec)
    assert set(vars(pool)) == {"ids", "k", "n"} and set(pool.ids) == tiny["train_ids"]
    assert pool.ids.tolist() == sorted(pool.ids) and (pool.n >= 10).all()
    np.testing.assert_array_equal(pool.positions([pool.ids[3].encode(), pool.ids[0]]), [3, 0])
    with pytest.raises(KeyError):
        pool.positions(["no-such-id"])
    chosen = pool.ids[::7]
    got = [(i.decode(), c) for _, cs, ids in al.split_stream(shards, "train", spec, chosen, batch_size=5)
           .as_numpy_iterator() for i, c in zip(ids, cs, strict=True)]
    assert sorted(i for i, _ in got) == sorted(chosen)
    for i, c in got:
        np.testing.assert_array_equal(c, [pool.k[pool.positions([i])[0]], pool.n[pool.positions([i])[0]]])
    rest = {i.decode() for *_, ids in al.split_stream(shards, "train", spec, chosen, keep=False)
            .as_numpy_iterator() for i in ids}
    assert rest == set(pool.ids) - set(chosen)
    cached = list(al.labelled_dataset(shards, spec, chosen).as_numpy_iterator())
    assert len(cached) == len(chosen) and cached[0][0].shape == (32, 32, 3)
    assert len(list(al.labelled_dataset(shards, spec, np.array([], str)).as_numpy_iterator())) == 0


def test_stream_rho_keeps_ids_with_their_passes(monkeypatch):
    import tensorflow as tf

    from gzmorph import predict

    monkeypatch.setattr(predict, "rho_functions", lambda model, dropout_masks: (lambda x: tf.reduce_mean(
        tf.cast(x, tf.float32), axis=[1, 2, 3])[:, None] / 255, None))
    split = al.Split(np.array(["a", "b", "c"]), np.ones(3, np.float32), np.full(3, 2, np.float32))
    images = np.stack([np.full((2, 2, 3), v, np.uint8) for v in (51, 102, 255)])
    batches = [(images[[2, 0]], np.ones((2, 2), np.float32), np.array([b"c", b"a"])),
               (images[[1]], np.ones((1, 2), np.float32), np.array([b"b"]))]
    pos, rho = al.split_rho(object(), batches, predict.MCSampling(2, 1), split)
    np.testing.assert_array_equal(pos, [0, 1, 2])
    np.testing.assert_allclose(rho, [[0.2, 0.2], [0.4, 0.4], [1.0, 1.0]], rtol=1e-6)


def test_repeats_share_no_model_or_layer_seed():
    """The seed collision: repeats 1000 apart once gave repeat 0's conv2_1 the seed of repeat 1's conv1_2."""
    from gzmorph.model import _sub_seed

    seeds = [al.iteration_seed(42, s, i) for s in range(4) for i in range(21)]
    assert len(set(seeds)) == len(seeds)
    layers = [_sub_seed(m, offset) for m in seeds for offset in range(1, 20)]
    assert len(set(layers)) == len(layers)


def test_unknown_question_is_a_config_error(tiny):
    with pytest.raises(config.ConfigError, match="active_learning.questions"):
        al.check_question(tiny["params"], "spiral-winding", "bald")


# ------------------------------------------------------------------------- BALD works (real acquisition)

RARE_FRACTION, PLANTED_SEEDS = 0.15, (0, 1)


def planted_shards(root, n: int, seed: int = 0):
    """Shards where a few galaxies carry the information: most are bright blobs with rho = 0.5 (the easy class:
    one constant), a rare ``RARE_FRACTION`` are dim (brightness 0-0.4) with rho = 0.05-0.25 rising with
    brightness; N(bar) = 100 for all.  A model that has seen few dim ones predicts them badly, so the test RMSE
    falls as they are labelled.  (The easy class sits at rho = 0.5 because the binomial mutual information of a
    given spread of rho is largest near 0 and 1: an easy class near 0 would out-score everything.)"""
    from test_train import blob_bar_catalog

    from gzmorph.shards import write_shards
    from gzmorph.split import assign
    from gzmorph.tree import GZ2

    rng = np.random.default_rng(seed)
    rare = rng.uniform(size=n) < RARE_FRACTION
    brightness = np.where(rare, rng.uniform(0.0, 0.4, n), 1.0)
    rho = np.where(rare, 0.05 + 0.5 * brightness, 0.5)
    total = np.full(n, 100)  # many votes: k/N close to rho, so the test RMSE shows what the model learned
    df = blob_bar_catalog(root, brightness, rho, total, rng, first_id=2000000)
    fractions = {"train": 0.6, "val": 0.2, "test": 0.2}
    write_shards(df, root / "shards", tree=GZ2, resolution=32, shard_size=128, fractions=fractions, seed=seed,
                 threads=1, progress=False)
    df["split"], df["rare"] = assign(df["id_str"], seed, fractions), rare
    return root / "shards", df


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Real BALD (``bald_scores``, MC passes) and random runs through the real training path, per seed."""
    root = tmp_path_factory.mktemp("planted")
    shards, df = planted_shards(root, n=600)
    override = {"seed": 0, "train": {"input_size": 32, "learning_rate": 0.003, "dropout_rate": 0.3,
                          "questions": PAPER_TRUNKS},
                "active_learning": {"augmentations": 4, "dropout_masks": 2,
                                    "max_epochs": 8, "min_epochs": 3, "warm_start": True,
                                    "patience": 2, "warmup_epochs": 1, "min_steps_per_epoch": 4, "batch_size": 16,
                                    "questions": {QUESTION: {"initial": 16, "per_iteration": 8, "iterations": 2}}}}
    path = root / "override.yaml"
    path.write_text(yaml.safe_dump(override))
    params = config.load([ROOT / "params.yaml", path])
    runs, acquired = [], []
    for seed in PLANTED_SEEDS:
        for strategy in al.STRATEGIES:
            runs.append(al.simulate(params, QUESTION, strategy, seed, shards, root / f"{strategy}_{seed}.csv",
                                    root / f"{strategy}_{seed}.parquet", threads=2))
            acquired.append(pd.read_parquet(root / f"{strategy}_{seed}.parquet"))
    return {"df": df, "runs": pd.concat(runs, ignore_index=True), "acquired": pd.concat(acquired, ignore_index=True)}


def test_bald_acquires_the_informative_galaxies(planted):
    """BALD takes the rare galaxies (seed 0, 3 iterations: 24 of 24 acquired; random 3 of 24, their pool share).
    Both curves then reach the RMSE floor (k/N noise, ~0.05) within one acquisition, so this problem shows the
    choice, not labels saved; the RMSE check is only that BALD learns and does no worse at the end."""
    df = planted["df"]
    rare = set(df.loc[df["rare"], "id_str"])
    acq = planted["acquired"].query("role == 'acquired'")
    share = acq.assign(rare=acq["id_str"].isin(rare)).groupby("strategy")["rare"].mean()
    pool_share = df.loc[df["split"] == "train", "rare"].mean()
    assert share["random"] < 2 * pool_share  # random takes them at about their pool share
    assert share["bald"] > 3 * pool_share and share["bald"] > 2 * share["random"]
    runs = planted["runs"]
    end = runs[runs["iteration"] == runs["iteration"].max()].groupby("strategy")["eval_rmse"].mean()
    start = runs[runs["iteration"] == 0]["eval_rmse"].mean()
    assert end["bald"] < start and end["bald"] <= end["random"] + 0.005



def test_validation_subsample_is_the_first_val_galaxies_every_time(tiny):
    """active_learning.val_galaxies: early stopping sees a fixed, cached subsample of the val split (0: all)."""
    from gzmorph.inputs import question_spec, require_galaxies

    params, shards = tiny["params"], tiny["shards"]
    spec = question_spec(params, QUESTION)
    n_val = require_galaxies(shards, "val", spec)

    def val_counts(limit):
        ds, n = al.validation_dataset(shards, spec, n_val, limit)
        counts = [c for _, cs in ds.as_numpy_iterator() for c in cs]
        return n, len(counts), np.concatenate([cs for _, cs in ds.as_numpy_iterator()])

    n, seen, first = val_counts(5)
    assert n == seen == 5
    np.testing.assert_array_equal(first, val_counts(5)[2])  # the same galaxies in every iteration and run
    assert val_counts(0)[:2] == (n_val, n_val) and val_counts(10 * n_val)[:2] == (n_val, n_val)

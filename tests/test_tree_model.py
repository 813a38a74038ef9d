"""The whole-tree model: Dirichlet head, training through ``train.fit``, the posterior catalog of any input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from _fake_catalog import make_catalog
from test_train import ROOT, tiny_params

from gzmorph import config
from gzmorph.tree import GZ2

RESOLUTION = 32
PASSES = 3


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from gzmorph import train
    from gzmorph.shards import write_shards

    root = tmp_path_factory.mktemp("tree")
    df = make_catalog(root, 120, image_size=RESOLUTION, seed=3)
    catalog = root / "catalog.parquet"
    df.to_parquet(catalog)
    shards = root / "shards"
    write_shards(df, shards, tree=GZ2, resolution=RESOLUTION, shard_size=32,
                 fractions={"train": 0.6, "val": 0.2, "test": 0.2}, seed=0, threads=1, progress=False)
    params = tiny_params(root, max_epochs=2, min_epochs=1, warmup_epochs=0)
    params["predict"].update(augmentations=PASSES, dropout_masks=1)
    model = root / "tree.keras"
    result = train.train(params, None, shards, model, root / "history.csv", root / "loss.png", threads=2,
                         progress=False)
    return {"root": root, "df": df, "catalog": catalog, "shards": shards, "params": params, "model": model,
            "result": result}


def _predict(setup, out, **kw):
    from gzmorph.predict import predict_tree

    kw.setdefault("shards", setup["shards"])
    return predict_tree(setup["params"], setup["model"], out, progress=False, threads=1, **kw)


@pytest.fixture(scope="module")
def catalog_run(setup):
    out = setup["root"] / "posteriors" / "sdss.parquet"
    summary = _predict(setup, out, split="all", catalog=setup["catalog"], chunk_size=16)
    return out, summary


def test_training_cut_and_history(setup):
    result = setup["result"]
    asked = int((setup["df"]["smooth-or-featured_total-votes"] > 0).sum())
    assert (setup["df"]["smooth-or-featured_total-votes"] == 0).any()  # the cut drops someone
    assert result.n_train + result.n_val < asked  # the test split is held out, no unvoted galaxy kept
    assert len(result.history) == 2 and np.isfinite(result.history["val_loss"]).all()
    assert (setup["root"] / "loss.png").stat().st_size > 0


def test_model_gives_bounded_concentrations_for_every_answer(setup):
    from gzmorph.train import load_model

    model = load_model(setup["model"])
    images = np.random.default_rng(0).integers(0, 255, (4, RESOLUTION, RESOLUTION, 3), dtype=np.uint8)
    alpha = np.asarray(model(images, training=True))
    assert alpha.shape == (4, GZ2.n_answers())
    assert np.all(alpha >= 1.0) and np.all(alpha <= 101.0)
    a, b = np.asarray(model(images, training=True)), np.asarray(model(images, training=True))
    assert not np.allclose(a, b)  # MC dropout stays on at prediction


def test_catalog_layout_of_the_published_automated_catalog(setup, catalog_run):
    from gzmorph.tree_catalog import (
        asked_columns,
        concentration_columns,
        deterministic_columns,
        fraction_columns,
        load_concentrations,
        mutual_information_columns,
    )

    out, summary = catalog_run
    table = pq.read_table(out)
    assert table.column_names == ["id_str", "ra", "dec", *concentration_columns(GZ2), *fraction_columns(GZ2),
                                  *asked_columns(GZ2), *deterministic_columns(GZ2), *mutual_information_columns(GZ2)]
    assert "smooth-or-featured_smooth_concentration" in table.column_names
    assert "bar_proportion_volunteers_asked" in table.column_names
    assert len(table) == len(setup["df"]) == summary["n_galaxies"]  # every galaxy, voted on or not
    assert summary["chunks"] > 1 and not out.with_name(out.name + ".chunks").exists()
    df = table.to_pandas().set_index("id_str")
    cat = setup["df"].set_index("id_str").loc[df.index]
    np.testing.assert_allclose(df["ra"], cat["ra"])
    np.testing.assert_allclose(df["dec"], cat["dec"])

    ids, alpha = load_concentrations(out, GZ2)
    assert alpha.shape == (len(table), PASSES, GZ2.n_answers()) and alpha.dtype == np.float32
    assert list(ids) == table.column("id_str").to_pylist()
    first = np.stack(table.column("bar_no_concentration").to_numpy(zero_copy_only=False))
    np.testing.assert_array_equal(alpha[:, :, GZ2.answer_slices["bar"].stop - 1], first)
    # fractions: mean over passes of alpha / sum over the question's answers
    s = GZ2.answer_slices["smooth-or-featured"]
    expected = (alpha[:, :, s] / alpha[:, :, s].sum(-1, keepdims=True)).mean(1)
    got = df[[f"smooth-or-featured_{a}_fraction" for a in GZ2.question("smooth-or-featured").answer_names]]
    np.testing.assert_allclose(got.to_numpy(), expected, rtol=1e-5)
    assert (df["smooth-or-featured_proportion_volunteers_asked"] == 1).all()
    np.testing.assert_allclose(df["disk-edge-on_proportion_volunteers_asked"],
                               df["smooth-or-featured_featured-or-disk_fraction"], rtol=1e-5)


def test_catalog_ranks_galaxies_by_tree_bald(catalog_run):
    """mutual_information is the tree BALD of the catalog's own concentrations at predict.expected_votes,
    its per-question parts the unweighted MI; the same numbers whichever chunk a galaxy fell in."""
    from gzmorph.acquisition import dm_mutual_information
    from gzmorph.tree_catalog import load_concentrations

    out, _ = catalog_run
    table = pq.read_table(out)
    n_votes = int(table.schema.metadata[b"expected_votes"])
    assert n_votes == config.load([ROOT / "params.yaml"])["predict"]["expected_votes"]
    df = table.to_pandas()
    _, alpha = load_concentrations(out, GZ2)
    alpha = alpha.astype(np.float64)
    total = np.zeros(len(df))
    for q in GZ2.questions:
        sl = GZ2.answer_slices[q.name]
        mi = df[f"{q.name}_mutual_information"].to_numpy()
        if len(q.answer_names) <= 3:  # exact sums: the same numbers recomputed galaxy by galaxy
            np.testing.assert_allclose(mi, [dm_mutual_information(a[None, :, sl], n_votes)[0] for a in alpha],
                                       rtol=1e-4, atol=1e-7)
        assert np.all(mi > -1e-3)
        total += df[f"{q.name}_proportion_volunteers_asked"].to_numpy() * mi
    np.testing.assert_allclose(df["mutual_information"], total, rtol=1e-4, atol=1e-6)
    assert df["mutual_information"].std() > 0


def test_deterministic_concentrations_are_the_network_without_dropout(setup, catalog_run):
    from gzmorph.shards import make_dataset
    from gzmorph.train import load_model
    from gzmorph.tree_catalog import load_deterministic

    out, _ = catalog_run
    ids = pq.read_table(out, columns=["id_str"]).column("id_str").to_pylist()
    point = load_deterministic(out, GZ2)
    assert point.shape == (len(ids), GZ2.n_answers()) and (point >= 1).all()
    images, _, batch_ids = next(make_dataset(setup["shards"], "test", columns=("smooth-or-featured_total-votes",),
                                             batch_size=8, with_ids=True).as_numpy_iterator())
    direct = np.asarray(load_model(setup["model"])(images, training=False))
    rows = [ids.index(i.decode()) for i in batch_ids]
    np.testing.assert_allclose(point[rows], direct, rtol=1e-5)


def test_resume_keeps_finished_chunks_and_gives_the_same_catalog(setup, catalog_run, monkeypatch):
    from gzmorph import tree_catalog

    reference, _ = catalog_run
    out = setup["root"] / "resumed.parquet"
    real, calls = tree_catalog.catalog_table, []

    def crash_on_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(tree_catalog, "catalog_table", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        _predict(setup, out, split="all", catalog=setup["catalog"], chunk_size=16)
    assert not out.exists() and len(list(out.with_name(out.name + ".chunks").glob("chunk-*.parquet"))) == 2
    monkeypatch.setattr(tree_catalog, "catalog_table", real)
    summary = _predict(setup, out, split="all", catalog=setup["catalog"], chunk_size=16)
    assert summary["chunks_resumed"] == 2
    assert pq.read_table(out).equals(pq.read_table(reference))


def test_images_without_votes_give_the_same_posteriors_as_their_shards(setup, tmp_path):
    """A table of ids and image paths (no votes): the test split's galaxies in shard order, the same chunks."""
    from gzmorph.shards import read_columns

    batches = read_columns(setup["shards"], "test", [GZ2.questions[0].total_column])
    ids = np.concatenate([i for i, _ in batches]).astype(str)
    rows = setup["df"].set_index("id_str").loc[ids].reset_index()
    table = tmp_path / "new_survey.csv"
    rows[["id_str", "file_loc"]].to_csv(table, index=False)  # no coordinates, no votes
    from_images = tmp_path / "images.parquet"
    from_shards = tmp_path / "shards.parquet"
    _predict(setup, from_images, shards=None, images=table, chunk_size=8)
    _predict(setup, from_shards, split="test", chunk_size=8)
    a, b = pq.read_table(from_images).to_pandas(), pq.read_table(from_shards).to_pandas()
    assert a["id_str"].tolist() == list(ids) and a["ra"].isna().all()
    fractions = [c for c in a.columns if c.endswith("_fraction")]
    np.testing.assert_allclose(a[fractions].to_numpy(), b[fractions].to_numpy(), rtol=1e-5, atol=1e-6)


def test_bad_image_table_errors_name_row_and_column(setup, tmp_path, capsys):
    from gzmorph.cli import main

    table = tmp_path / "bad.csv"
    pd.DataFrame({"id_str": ["a", "b"], "file_loc": [setup["df"]["file_loc"].iloc[0], str(tmp_path / "gone.png")]}
                 ).to_csv(table, index=False)
    base = ["predict", "--params", str(ROOT / "params.yaml"), "--tree", "--model", str(setup["model"]),
            "--out", str(tmp_path / "p.parquet"), "--threads", "1", "--no-progress"]
    assert main(base + ["--images", str(table)]) == 2
    err = capsys.readouterr().err.strip()
    assert "row 1: column file_loc" in err and "not found" in err and "\n" not in err
    pd.DataFrame({"id_str": ["a"]}).to_csv(table, index=False)
    assert main(base + ["--images", str(table)]) == 2
    assert "lacks column(s) file_loc" in capsys.readouterr().err
    assert not (tmp_path / "p.parquet").exists()


def test_mean_concentration_head_trains_and_predicts_the_catalog(setup, tmp_path):
    """train.tree.head: mean_concentration through the real train -> catalog path; per question the total
    concentration lies in [n, 101 n] and the catalog reads fractions from it like the bounded head's."""
    import copy

    from gzmorph import train
    from gzmorph.model import MeanConcentration
    from gzmorph.tree_catalog import load_concentrations

    params = copy.deepcopy(setup["params"])
    params["train"]["tree"]["head"] = "mean_concentration"
    params["train"]["max_epochs"], params["train"]["min_epochs"] = 1, 0
    config.validate(params)
    model = tmp_path / "tree.keras"
    result = train.train(params, None, setup["shards"], model, tmp_path / "history.csv", threads=1, progress=False)
    assert np.isfinite(result.history["val_loss"]).all()
    assert isinstance(train.load_model(model).get_layer("concentrations"), MeanConcentration)

    from gzmorph.predict import predict_tree

    out = tmp_path / "posteriors.parquet"
    predict_tree(params, model, out, shards=setup["shards"], split="test", catalog=setup["catalog"],
                 progress=False, threads=1)
    _, alpha = load_concentrations(out, GZ2)
    for q, s in GZ2.answer_slices.items():
        n = s.stop - s.start
        total = alpha[:, :, s].sum(-1)
        assert np.all(total >= n * (1 - 1e-5)) and np.all(total <= 101 * n * (1 + 1e-5)), q


def test_tree_trunk_widths_come_from_train_tree(tmp_path):
    from gzmorph.train import build_tree_model

    params = tiny_params(tmp_path, max_epochs=1)  # without trunk_filters / dense_units: Fig. 3's trunk
    paper = build_tree_model(params, GZ2, RESOLUTION)
    assert paper.get_layer("conv3_2").filters == 16 and paper.get_layer("dense").units == 128
    shipped = config.load(ROOT / "params.yaml")["train"]["tree"]
    params["train"]["tree"].update(trunk_filters=shipped["trunk_filters"], dense_units=shipped["dense_units"])
    default = build_tree_model(params, GZ2, RESOLUTION)
    assert [default.get_layer(f"conv{b}_2").filters for b in (1, 2, 3)] == shipped["trunk_filters"]
    assert default.get_layer("dense").units == shipped["dense_units"]
    params["train"]["tree"].update(trunk_filters=[8, 12, 24], dense_units=20)
    config.validate(params)
    wide = build_tree_model(params, GZ2, RESOLUTION)
    assert [wide.get_layer(f"conv{b}_2").filters for b in (1, 2, 3)] == [8, 12, 24]
    assert wide.get_layer("dense").units == 20
    assert wide.output.shape[-1] == GZ2.n_answers()

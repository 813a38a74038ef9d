"""``gzmorph predict``: MC-dropout predictions streamed to parquet, on a model trained for one epoch."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_train import QUESTION, ROOT, learnable_shards, tiny_params

PASSES = 6  # tiny_params: 3 augmentations x 2 dropout masks


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from gzmorph import train

    root = tmp_path_factory.mktemp("predict")
    shards, df = learnable_shards(root, n=400, seed=1)
    params = tiny_params(root, max_epochs=1)
    model = root / "bar.keras"
    train.train(params, QUESTION, shards, model, root / "history.csv", threads=2, progress=False)
    return {"root": root, "shards": shards, "df": df, "params": params, "model": model}


def _predict(setup, name: str, **kw):
    from gzmorph.predict import predict

    out = setup["root"] / f"{name}.parquet"
    predict(setup["params"], QUESTION, setup["shards"], setup["model"], out, progress=False, **kw)
    return out


@pytest.fixture(scope="module")
def default_run(setup):
    return _predict(setup, "default", chunk_size=16)  # 63 galaxies -> 4 chunks


def test_parquet_columns_and_dtypes(setup, default_run):
    table = pq.read_table(default_run)
    assert table.column_names == ["id_str", "votes", "total_votes", "rho", "rho_point"]
    assert table.schema.field("id_str").type == pa.string()
    assert table.schema.field("votes").type == pa.int64()
    assert table.schema.field("total_votes").type == pa.int64()
    assert table.schema.field("rho").type == pa.list_(pa.float32())
    assert table.schema.field("rho_point").type == pa.float32()
    meta = {k.decode(): v.decode() for k, v in table.schema.metadata.items()}
    assert meta["question"] == QUESTION and meta["answer"] == "yes" and meta["passes"] == str(PASSES)
    assert (meta["augmentations"], meta["dropout_masks"], meta["precision"]) == ("3", "2", "float32")
    assert meta["model"] == str(setup["model"])
    assert pq.ParquetFile(default_run).metadata.num_row_groups > 1  # streamed chunk by chunk
    assert not [p for p in setup["root"].iterdir() if p.name.startswith(".")]  # no temp files left

    from gzmorph.predict import load_predictions

    df, rho = load_predictions(default_run)
    assert rho.shape == (len(df), PASSES) and rho.dtype == np.float32
    assert list(df.columns) == ["id_str", "votes", "total_votes", "rho_point"]
    assert df.attrs["question"] == QUESTION
    assert np.all((rho > 0) & (rho < 1)) and np.all((df["rho_point"] > 0) & (df["rho_point"] < 1))
    assert (df["votes"] <= df["total_votes"]).all()


def test_ids_are_the_test_split_after_the_cut(setup, default_run):
    from gzmorph.predict import load_predictions

    df, _ = load_predictions(default_run)
    cat = setup["df"]
    expected = cat[(cat["split"] == "test") & (cat["bar_total-votes"] >= 10)].set_index("id_str")
    assert (cat[cat["split"] == "test"]["bar_total-votes"] < 10).any()  # the cut removes some
    assert sorted(df["id_str"]) == sorted(expected.index)
    assert df["id_str"].is_unique
    got = df.set_index("id_str").loc[expected.index]
    assert (got["votes"] == expected["bar_yes"]).all()
    assert (got["total_votes"] == expected["bar_total-votes"]).all()


def test_mc_passes_differ_and_point_pass_is_reproducible(setup, default_run):
    from gzmorph.predict import load_predictions

    df, rho = load_predictions(default_run)
    assert np.all(rho.std(axis=1) > 0)  # every galaxy: the T passes are not all equal
    assert not np.allclose(rho[:, 0], rho[:, 1])
    df2, rho2 = load_predictions(_predict(setup, "again", chunk_size=16))
    np.testing.assert_array_equal(df["rho_point"], df2["rho_point"])
    np.testing.assert_array_equal(rho, rho2)  # same seed, same chunks: same MC draws


@pytest.mark.parametrize("chunk_size", [7, 1000])
def test_chunk_size_does_not_change_results(setup, default_run, chunk_size):
    from gzmorph.predict import MCSampling, load_predictions

    ref, _ = load_predictions(default_run)
    df, rho = load_predictions(_predict(setup, f"chunk{chunk_size}", chunk_size=chunk_size,
                                        sampling=MCSampling(3, 1)))
    assert rho.shape == (len(ref), 3)
    assert df["id_str"].tolist() == ref["id_str"].tolist()
    assert df["votes"].tolist() == ref["votes"].tolist()
    assert df["total_votes"].tolist() == ref["total_votes"].tolist()
    np.testing.assert_allclose(df["rho_point"], ref["rho_point"], rtol=0, atol=1e-6)


def test_cli_errors_are_one_line(setup, tmp_path, capsys):
    from gzmorph.cli import main

    base = ["predict", "--params", str(ROOT / "params.yaml"), "--question", QUESTION,
            "--out", str(tmp_path / "p.parquet"), "--threads", "1", "--no-progress"]
    for extra, needle in [
        (["--shards", str(setup["shards"]), "--model", str(tmp_path / "none.keras")], "no such model"),
        (["--shards", str(tmp_path / "none"), "--model", str(setup["model"])], "no manifest"),
    ]:
        assert main(base + extra) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("gzmorph predict: error:") and needle in err and "\n" not in err
    assert not list(tmp_path.iterdir())


def test_any_split_or_all(setup, default_run):
    """--split all: train, val and test in turn, each after the cut; the test part equals the default run."""
    from gzmorph.predict import load_predictions

    out = _predict(setup, "all", chunk_size=64, split="all")
    df, rho = load_predictions(out)
    cat = setup["df"]
    kept = cat[cat["bar_total-votes"] >= 10]
    assert sorted(df["id_str"]) == sorted(kept["id_str"]) and df.attrs["split"] == "all"
    assert set(kept["split"]) == {"train", "val", "test"} and rho.shape == (len(kept), PASSES)
    test_ids = set(cat.loc[cat["split"] == "test", "id_str"])
    tail = df[df["id_str"].isin(test_ids)]
    ref, _ = load_predictions(default_run)
    assert tail["id_str"].tolist() == ref["id_str"].tolist()  # test comes last, in the same order

import numpy as np
import pandas as pd
import pytest

from gzmorph import catalog
from gzmorph.tree import GZ2


def make_catalog(n: int = 5, seed: int = 0) -> pd.DataFrame:
    """A small valid GZ2 catalog whose votes follow the tree's totals."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "id_str": [str(587722981741363200 + i) for i in range(n)],
        "ra": rng.uniform(150, 151, n),
        "dec": rng.uniform(1, 2, n),
        "survey": "sdss",
        "tree": "gz2",
        "file_loc": [f"img/{i}.png" for i in range(n)],
    })
    for q in GZ2.questions:
        parts = rng.integers(0, 10, size=(n, len(q.answers)))
        for col, values in zip(q.answer_columns, parts.T, strict=True):
            df[col] = values
        df[q.total_column] = parts.sum(axis=1)
    return df


def write(tmp_path, df):
    path = tmp_path / "cat.parquet"
    df.to_parquet(path, index=False)
    return path


def test_valid_catalog_loads_with_integer_counts(tmp_path):
    df = catalog.load(write(tmp_path, make_catalog()))
    assert df["bar_yes"].dtype == np.int64
    k, n = catalog.votes(df, GZ2, "bar", "yes")
    assert (k <= n).all()


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d.drop(columns=["file_loc"]), "column 'file_loc': required column is missing"),
        (lambda d: d.drop(columns=["bar_yes"]), "column 'bar_yes': required vote column"),
        (lambda d: d.assign(ra=[1.0, 2.0, np.nan, 4.0, 5.0]), "column 'ra', row 2: nan is not a finite"),
        (lambda d: d.assign(dec=[1.0, 95.0, 1.0, 1.0, 1.0]), "column 'dec', row 1: 95.0 is not a finite"),
        (lambda d: d.assign(id_str=["a", "b", "c", "b", "e"]), "column 'id_str', row 3: duplicate id 'b'"),
        (lambda d: d.assign(tree="gz3"), "column 'tree', row 0: unknown decision tree"),
    ],
)
def test_bad_catalog_names_file_column_row(tmp_path, mutate, expected):
    path = write(tmp_path, mutate(make_catalog()))
    with pytest.raises(catalog.CatalogError) as info:
        catalog.load(path)
    msg = str(info.value)
    assert msg.startswith(str(path)) and expected in msg
    assert "\n" not in msg


def test_negative_and_fractional_counts_rejected(tmp_path):
    df = make_catalog()
    df["bar_no"] = df["bar_no"].astype(float)
    df.loc[3, "bar_no"] = 2.5
    with pytest.raises(catalog.CatalogError, match=r"column 'bar_no', row 3: 2.5 is not a non-negative integer"):
        catalog.load(write(tmp_path, df))
    df = make_catalog()
    df.loc[1, "bar_no"] = -1
    with pytest.raises(catalog.CatalogError, match=r"column 'bar_no', row 1: -1 is not"):
        catalog.load(write(tmp_path, df))


def test_total_above_its_answers_is_real_data_and_n_is_the_answer_sum(tmp_path):
    """As GZ DECaLS ``merging``: the published total also counts answers retired during the campaign."""
    df = make_catalog()
    df.loc[[1, 4], "bar_total-votes"] += [30, 3]
    loaded = catalog.load(write(tmp_path, df))
    assert loaded["bar_total-votes"].tolist() == df["bar_total-votes"].tolist()  # kept as published
    bar = GZ2.question("bar")
    k, n = catalog.votes(loaded, GZ2, "bar", "yes")
    np.testing.assert_array_equal(n, loaded["bar_yes"] + loaded["bar_no"])  # N = answer sum, not the total
    np.testing.assert_array_equal(catalog.answer_sum(loaded, bar), n)
    assert n.dtype == np.int64 and (n[[1, 4]] == loaded["bar_total-votes"].to_numpy()[[1, 4]] - [30, 3]).all()
    excess = catalog.total_excess(loaded, GZ2)
    assert excess["bar"] == {"rows": 2, "max_excess": 30}
    assert all(e == {"rows": 0, "max_excess": 0} for q, e in excess.items() if q != "bar")


def test_total_below_its_answers_fails(tmp_path):
    df = make_catalog()
    df.loc[:, "bar_yes"] = 4
    df.loc[:, "bar_no"] = 3
    df.loc[:, "bar_total-votes"] = 7
    df.loc[4, "bar_total-votes"] = 6
    path = write(tmp_path, df)
    with pytest.raises(catalog.CatalogError) as info:
        catalog.load(path)
    assert str(info.value) == f"{path}: column 'bar_total-votes', row 4: total 6 is below the sum of its answers 7"


def test_unreadable_file(tmp_path):
    path = tmp_path / "junk.parquet"
    path.write_text("not parquet")
    with pytest.raises(catalog.CatalogError, match="not a readable parquet"):
        catalog.load(path)
    with pytest.raises(catalog.CatalogError, match="no such catalog"):
        catalog.load(tmp_path / "missing.parquet")

"""gzmorph finetune: label catalogs, the trunk and its new head, freezing, a planted signal, ring labels, transfer."""

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from gzmorph import config, finetune
from gzmorph.config import UserError

ROOT_PARAMS = "params.yaml"


def tiny_params(**overrides):
    params = config.load(ROOT_PARAMS)
    params["finetune"].update({"head_epochs": 12, "unfreeze_epochs": 4, "unfreeze_layers": 2, "min_epochs": 2,
                               "patience": 4, "batch_size": 16, "min_steps_per_epoch": 4, "val_fraction": 0.25,
                               "passes": 2, **overrides})
    return params


def base_model(seed=0, kind="binomial"):
    """A tiny trained-model architecture: the per-question binomial model, or the whole-tree Dirichlet one."""
    from gzmorph.model import build_model

    return build_model(input_size=32, crop_zoom=(1.0, 1.0), crop_mode="central", output_size=16, seed=seed,
                       concentrations=7 if kind == "tree" else None)


KINDS = ["binomial", "tree"]


def blob_image(bright: bool, rng, size=40):
    """Noise, with a bright central blob when ``bright``: the planted signal."""
    img = rng.normal(40, 12, (size, size))
    if bright:
        yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
        img += 150 * np.exp(-(xx**2 + yy**2) / (2 * (size / 8) ** 2))
    return np.repeat(np.clip(img, 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def write_ring_catalog(tmp_path, n=80, seed=0, fmt="csv"):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        ring = i % 2
        path = tmp_path / f"J{i:04d}.png"
        Image.fromarray(blob_image(bool(ring), rng)).save(path)
        rows.append({"iauname": f"J{i:04d}", "local_png_loc": str(path), "ring": ring})
    df = pd.DataFrame(rows)
    out = tmp_path / f"rings.{fmt}"
    df.to_csv(out, index=False) if fmt == "csv" else df.to_parquet(out, index=False)
    return out, df


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_zoobot_ring_layout_loads_as_it_is(tmp_path, fmt):
    path, df = write_ring_catalog(tmp_path, n=6, fmt=fmt)
    labels = finetune.read_labels(path)
    assert labels["id_str"].tolist() == df["iauname"].tolist()
    assert labels["label"].tolist() == [0, 1, 0, 1, 0, 1]
    assert labels["image"].tolist() == df["local_png_loc"].tolist()
    images = finetune.load_images(labels, 32)
    assert images.shape == (6, 32, 32, 3) and images.dtype == np.uint8
    assert images[1, 16, 16, 0] > images[0, 16, 16, 0] + 60  # the blob survived the 40 -> 32 px resampling


def test_relative_paths_start_at_the_image_root(tmp_path):
    path, df = write_ring_catalog(tmp_path, n=2)
    df["local_png_loc"] = [p.split("/")[-1] for p in df["local_png_loc"]]
    df.to_csv(path, index=False)
    assert finetune.read_labels(path, image_root=tmp_path)["image"].tolist() == [str(tmp_path / "J0000.png"),
                                                                               str(tmp_path / "J0001.png")]


@pytest.mark.parametrize("change, message", [
    (lambda df: df.drop(columns="ring"), "no column 'ring'"),
    (lambda df: df.assign(ring=[0, 1, 2, 1]), "data row 3, column 'ring': a binary label must be 0 or 1"),
    (lambda df: df.assign(ring=[0, 1, "x", 1]), "data row 3, column 'ring': not a number"),
    (lambda df: df.assign(local_png_loc=[*df.local_png_loc[:3], "/nope.png"]),
     "data row 4, column 'local_png_loc': image file not found: /nope.png"),
    (lambda df: df.assign(iauname=["a", "b", "a", "c"]), "data row 3, column 'iauname': duplicate id"),
])
def test_bad_rows_name_file_row_and_column(tmp_path, change, message):
    path, df = write_ring_catalog(tmp_path, n=4)
    change(df).to_csv(path, index=False)
    with pytest.raises(UserError, match=message.replace("(", r"\(")) as exc:
        finetune.read_labels(path)
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)


def test_bad_vote_counts_and_corrupt_images(tmp_path):
    path, df = write_ring_catalog(tmp_path, n=3)
    df.assign(k=[1, 5, 2], n=[3, 4, 2]).to_csv(path, index=False)
    with pytest.raises(UserError, match="data row 2, column 'n': N must be a whole number >= the votes in 'k'"):
        finetune.read_labels(path, finetune.LabelColumns(label="k", total="n"))
    (tmp_path / "J0001.png").write_bytes(b"not a png")
    labels = finetune.read_labels(path)
    with pytest.raises(UserError, match=r"data row 2, column image \(.*J0001.png\): not a PNG or JPEG image"):
        finetune.load_images(labels, 32, path)


def test_votes_catalog_reads_k_and_n(tmp_path):
    path, df = write_ring_catalog(tmp_path, n=3)
    df.assign(k=[1, 3, 0], n=[3, 4, 2]).to_csv(path, index=False)
    labels = finetune.read_labels(path, finetune.LabelColumns(label="k", total="n"))
    assert labels["label"].tolist() == [1, 3, 0] and labels["total"].tolist() == [3, 4, 2]
    assert finetune.positive(labels).tolist() == [False, True, False]  # k/N > 0.5


def test_class_weights_balance_the_classes():
    w = finetune.class_weights(np.array([True, False, False, False]))
    np.testing.assert_allclose(w, [2.0, 2 / 3, 2 / 3, 2 / 3])  # n / (2 n_class): each class sums to n / 2
    assert finetune.class_weights(np.array([True, True])).tolist() == [1.0, 1.0]


def test_balanced_subset_takes_half_of_each_class_while_it_can():
    classes = np.array([True] * 3 + [False] * 20)
    four = finetune.balanced_subset(classes, 4, seed=0)
    assert classes[four].sum() == 2 and len(four) == 4
    ten = finetune.balanced_subset(classes, 10, seed=0)
    assert classes[ten].sum() == 3 and len(set(ten)) == 10  # all 3 positives, the rest negatives
    with pytest.raises(UserError, match="24 labels asked for"):
        finetune.balanced_subset(classes, 24, seed=0)


def test_stratified_draw_holds_out_each_class():
    classes = np.array([True] * 10 + [False] * 30)
    mask = finetune.stratified_draw(classes, 0.2, seed=3)
    assert classes[mask].sum() == 2 and (~classes[mask]).sum() == 6


@pytest.mark.parametrize("kind", KINDS)
def test_trunk_ends_where_the_head_began(kind):
    base = base_model(kind=kind)
    body = finetune.trunk(base)
    assert body.output_shape == (None, 128)  # the input of the logits / concentration layer (after MC dropout)
    assert [w.name for w in body.weights] == [w.name for w in base.weights[:-2]]  # everything but the head
    assert base.layers[-1 if kind == "binomial" else -2].name in ("logits", "concentration_sigmoid")
    for head, units in (("binary", 1), ("votes", 2)):
        model = finetune.with_new_head(body, head, seed=0)
        assert model.output_shape == (None, units)
    x = np.random.default_rng(0).integers(0, 255, (2, 32, 32, 3)).astype(np.uint8)
    inner = base.get_layer("mc_dropout").output
    import keras

    np.testing.assert_array_equal(body(x, training=False), keras.Model(base.inputs, inner)(x, training=False))


@pytest.mark.parametrize("kind", KINDS)
def test_a_saved_model_of_either_kind_reloads_with_its_trunk(tmp_path, kind):
    base = base_model(kind=kind)
    base.save(tmp_path / "base.keras")
    again = finetune.trunk(finetune._load_base(tmp_path / "base.keras"))
    x = np.random.default_rng(1).integers(0, 255, (3, 32, 32, 3)).astype(np.uint8)
    np.testing.assert_allclose(again(x, training=False), finetune.trunk(base)(x, training=False), rtol=1e-6)


def _snapshot(layers):
    return [np.array(w) for layer in layers for w in layer.get_weights()]


@pytest.mark.parametrize("kind", KINDS)
def test_frozen_trunk_stays_frozen_and_the_head_learns(tmp_path, kind):
    path, _ = write_ring_catalog(tmp_path, n=32)
    labels = finetune.read_labels(path)
    images = finetune.load_images(labels, 32)
    base = base_model(kind=kind)
    before = _snapshot(finetune.weight_layers(finetune.trunk(base)))
    settings = finetune.Settings.of(tiny_params(unfreeze_epochs=0, head_epochs=3))
    trained = finetune.train_labels(base, images, labels, "binary", settings, seed=0)
    body = trained.model.get_layer("trunk")
    after = _snapshot(finetune.weight_layers(body))
    assert len(before) == len(after) == 14
    for b, a in zip(before, after, strict=True):
        np.testing.assert_array_equal(a, b)  # bit-identical
    head = trained.model.get_layer("binary_head").get_weights()[0]
    fresh = finetune.with_new_head(finetune.trunk(base_model(kind=kind)), "binary", seed=0).get_layer("binary_head")
    assert not np.array_equal(head, fresh.get_weights()[0])  # same initial head, so training moved it


def test_unfreezing_trains_only_the_last_layers(tmp_path):
    path, _ = write_ring_catalog(tmp_path, n=32)
    labels = finetune.read_labels(path)
    images = finetune.load_images(labels, 32)
    base = base_model()
    layers = finetune.weight_layers(finetune.trunk(base))
    before = [_snapshot([layer]) for layer in layers]
    settings = finetune.Settings.of(tiny_params(head_epochs=2, unfreeze_epochs=2, unfreeze_layers=2, min_epochs=0))
    finetune.train_labels(base, images, labels, "binary", settings, seed=0)
    changed = [not all(np.array_equal(a, b) for a, b in zip(_snapshot([layer]), old, strict=True))
               for layer, old in zip(layers, before, strict=True)]
    assert changed == [False] * (len(layers) - 2) + [True, True]  # conv3_2 and dense; conv1_1 .. conv3_1 frozen


@pytest.fixture(scope="module")
def pretrained_base(tmp_path_factory):
    """A base model trained (train.fit, binomial votes) on other images of the blob: its trunk knows the feature.

    A random trunk's features are ~1e-3 and barely differ between classes; a trained one is what is fine-tuned.
    """
    import tensorflow as tf

    from gzmorph.train import FitSettings, fit

    rng = np.random.default_rng(7)
    bright = np.arange(128) % 2 == 1
    images = np.stack([np.asarray(Image.fromarray(blob_image(b, rng)).resize((32, 32))) for b in bright])
    votes = np.stack([np.where(bright, 9.0, 1.0), np.full(128, 10.0)], axis=1).astype(np.float32)
    ds = tf.data.Dataset.from_tensor_slices((images, votes)).shuffle(128, seed=0).repeat().batch(32)
    val = tf.data.Dataset.from_tensor_slices((images[:32], votes[:32])).batch(32)
    model = base_model()
    fit(model, ds, val, settings=FitSettings(learning_rate=3e-3, max_epochs=10), steps_per_epoch=8)
    path = tmp_path_factory.mktemp("base") / "base.keras"
    model.save(path)
    return path


def test_fine_tune_learns_a_planted_signal(tmp_path, pretrained_base):
    from gzmorph import cli

    path, _ = write_ring_catalog(tmp_path, n=96, seed=1)
    params_path = tmp_path / "params.yaml"
    import yaml

    params_path.write_text(yaml.safe_dump(tiny_params()))
    base = pretrained_base
    out = tmp_path / "out"
    rc = cli.main(["finetune", "fit", "--params", str(params_path), "--base", str(base), "--labels", str(path),
                   "--model", str(out / "ft.keras"), "--metrics", str(out / "m.json"),
                   "--predictions", str(out / "p.parquet"), "--threads", "2"])
    assert rc == 0
    metrics = json.loads((out / "m.json").read_text())
    held = metrics["held_out"]
    assert held["n"] == 24 and held["n_positive"] == 12  # 25 % of each class held out
    assert held["accuracy"] >= 0.9 and held["roc_auc"] >= 0.95
    c = held["confusion"]
    assert c["true_positive"] + c["false_negative"] == 12 and c["n"] == 24
    pred = pd.read_parquet(out / "p.parquet")
    assert len(pred) == 96 and pred["held_out"].sum() == 24
    assert ((pred["p"] > 0.5) == (pred["label"] == 1))[pred["held_out"]].mean() == held["accuracy"]
    assert pred["p_mc_std"].gt(0).any()  # MC dropout passes differ
    again = tmp_path / "again.parquet"
    assert cli.main(["finetune", "predict", "--params", str(params_path), "--model", str(out / "ft.keras"),
                     "--labels", str(path), "--out", str(again)]) == 0
    np.testing.assert_allclose(pd.read_parquet(again)["p"], pred["p"], atol=1e-6)


def test_curve_pairs_fine_tuned_and_scratch_on_the_same_labels(tmp_path, pretrained_base):
    path, _ = write_ring_catalog(tmp_path, n=48, seed=2)
    labels = finetune.read_labels(path)
    images = finetune.load_images(labels, 32)
    params = tiny_params(head_epochs=2, unfreeze_epochs=1, min_epochs=0, val_fraction=0.25)
    frame = finetune.curve(params, finetune._load_base(pretrained_base), images, labels, "binary", [8, 16, 99], [0])
    assert frame[["n_labels", "method"]].values.tolist() == [[8, "finetuned"], [8, "scratch"], [16, "finetuned"],
                                                             [16, "scratch"]]  # 99 > the 36 training rows: skipped
    assert frame["n_labels_positive"].tolist() == [4, 4, 8, 8]  # balanced subsets of the training rows
    assert (frame["held_out_n"] == 12).all() and (frame["held_out_n_positive"] == 6).all()  # one fixed held-out part
    assert frame["accuracy"].between(0, 1).all() and (frame["epochs"] <= 3).all()


def test_cli_reports_a_bad_catalog_in_one_line(tmp_path, capsys):
    from gzmorph import cli

    path, df = write_ring_catalog(tmp_path, n=2)
    df.drop(columns="ring").to_csv(path, index=False)
    base = tmp_path / "base.keras"
    base_model().save(base)
    rc = cli.main(["finetune", "fit", "--base", str(base), "--labels", str(path), "--model", str(tmp_path / "m.keras"),
                   "--metrics", str(tmp_path / "m.json")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err == f"gzmorph finetune: error: {path}: no column 'ring'; columns: iauname, local_png_loc"


def test_ring_labels_come_from_visible_rings_in_the_train_split():
    from gzmorph.sim.population import sample_population
    from gzmorph.sim.volunteers import visibility
    from gzmorph.split import assign

    params = config.load(ROOT_PARAMS)
    params["finetune"]["ring"].update(n_labels=30, min_visibility=0.1)
    sky = sample_population(3000, params["simulate"]["sky"], 1)
    catalog = sky.add_prefix("truth_").assign(id_str=[f"g{i}" for i in range(len(sky))],
                                              file_loc=[f"img/g{i}.png" for i in range(len(sky))])
    survey = params["simulate"]["surveys"]["decals"]
    labels = finetune.ring_labels(catalog, survey, params)
    split = dict(zip(catalog["id_str"], assign(catalog["id_str"], params["seed"], params["shards"]["split"]),
                     strict=True))
    train, test = labels[labels["split"] == "train"], labels[labels["split"] == "test"]
    assert len(train) == 30 and train["ring"].sum() == 15  # balanced
    assert {split[i] for i in train["iauname"]} == {"train"} and "train" not in {split[i] for i in test["iauname"]}
    assert test["ring"].sum() * 2 == len(test)
    seen = pd.Series(visibility(sky.to_dict("series"), survey).ring, index=catalog["id_str"])
    rings = labels[labels["ring"] == 1]
    assert (seen[rings["iauname"]] >= 0.1).all()
    assert (sky.set_index(catalog["id_str"])["ring_strength"][labels[labels["ring"] == 0]["iauname"]] == 0).all()
    assert labels["local_png_loc"].str.startswith("img/").all()


def test_cross_survey_table_by_hand():
    observed = {"bar": {"left": np.array([0.2, 0.4, 0.9]), "right": np.array([0.4, 0.4, 0.1]),
                        "n_left": np.array([10, 10, 3]), "n_right": np.array([12, 10, 10])}}
    predicted = {"bar": {"left": np.array([0.3, 0.4, 0.5]), "right": np.array([0.1, 0.6, 0.5])}}
    table = finetune.cross_survey_table(observed, predicted, {"bar": 10}).iloc[0]
    assert table["n"] == 2  # the third has N = 3 < 10 in the left survey
    assert table["rmse_pred_right_vs_right"] == pytest.approx(np.sqrt((0.3**2 + 0.2**2) / 2))
    assert table["offset_pred_right_minus_right"] == pytest.approx((-0.3 + 0.2) / 2)
    assert table["rmse_pred_left_vs_left"] == pytest.approx(np.sqrt(0.1**2 / 2))
    assert table["offset_right_minus_left_observed"] == pytest.approx(0.1)


def test_vote_labels_sum_equivalent_answers():
    params = config.load(ROOT_PARAMS)
    cat = pd.DataFrame({"id_str": [f"g{i}" for i in range(200)], "file_loc": "x.png",
                        "bar_strong": 1, "bar_weak": 2, "bar_no": 3, "bar_total-votes": [6] * 199 + [0]})
    labels = finetune.vote_labels(cat, params, "bar", ["strong", "weak"], n_labels=20)
    assert (labels["k"] == 3).all() and (labels["total"] == 6).all()
    assert (labels["split"] == "train").sum() == 20 and "g199" not in set(labels["id_str"])

"""Fig. 3 CNN and §2.5.3 augmentations: shapes, parameter count, fresh randomness per example and pass."""

from __future__ import annotations

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

from gzmorph.losses import rho_from_logits
from gzmorph.model import (
    ZoomCropResize,
    build_augmentation,
    build_model,
    crop_and_resize,
    expected_param_count,
)

SIZE, OUT = 48, 32  # tiny images keep the tests fast


def _np(x) -> np.ndarray:
    return keras.ops.convert_to_numpy(x)


def _images(batch: int, size: int = SIZE, channels: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (batch, size, size, channels), dtype=np.uint8)


def _ramp(batch: int, size: int, axis: int) -> np.ndarray:
    """Float images whose value is the pixel-centre coordinate / size along axis (1 = rows, 2 = cols)."""
    ramp = (np.arange(size, dtype="float32") + 0.5) / size
    img = np.broadcast_to(ramp[:, None] if axis == 1 else ramp[None, :], (size, size))
    return np.broadcast_to(img[None, :, :, None], (batch, size, size, 1)).copy()


def _zoom_and_centre_from_ramp(out: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Recover each crop's zoom and centre from a resampled column ramp [B, o, o, 1]."""
    o = out.shape[2]
    prof = out[:, o // 2, :, 0]  # values along the sampled columns = input coordinate / size
    j0, j1 = 4, o - 5  # away from edges, where the clamp-to-edge would bias the kernel
    slope = (prof[:, j1] - prof[:, j0]) / (j1 - j0)  # = crop / (o * size)
    return 1.0 / (slope * o), prof.mean(axis=1)


def _distinct_rows(x: np.ndarray) -> bool:
    flat = x.reshape(len(x), -1)
    return all(not np.allclose(a, b) for a, b in itertools.combinations(flat, 2))


# ---------------------------------------------------------------- architecture


def test_param_count_matches_paper_architecture():
    # by hand: convs 320 + 9248 + 9248 + 9248 + 4624 + 2320; dense 16*16*16*128 + 128; logits 258
    assert expected_param_count(128) == 559_682
    model = build_model(256, output_size=128)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == expected_param_count(128)
    shapes = {layer.name: tuple(layer.output.shape[1:]) for layer in model.layers}
    assert shapes["preprocess"] == (128, 128, 1)
    assert shapes["conv1_2"] == (128, 128, 32)
    assert shapes["conv2_2"] == (64, 64, 32)
    assert shapes["conv3_2"] == (32, 32, 16)
    assert shapes["flatten"] == (16 * 16 * 16,)
    assert shapes["logits"] == (2,)
    assert model.get_layer("logits").dtype_policy.compute_dtype == "float32"
    assert model.get_layer("mc_dropout").rate == 0.5


def test_a_wider_trunk_has_the_widths_asked_for():
    # by hand, greyscale input, output 32 -> flatten 4 x 4 x 48: convs (1->8, 8->8, 8->24, 24->24, 24->48, 48->48),
    # dense 768 -> 20, logits 20 -> 2
    convs = [(1, 8), (8, 8), (8, 24), (24, 24), (24, 48), (48, 48)]
    by_hand = sum(9 * a * b + b for a, b in convs) + (4 * 4 * 48 * 20 + 20) + (20 * 2 + 2)
    model = build_model(SIZE, output_size=OUT, filters=(8, 24, 48), dense_units=20)
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == by_hand
    assert tuple(model.get_layer("conv3_2").output.shape[1:]) == (OUT // 4, OUT // 4, 48)
    assert model.get_layer("dense").units == 20


@pytest.mark.parametrize("kwargs", [{"filters": (32, 32)}, {"filters": (32, 0, 16)}, {"dense_units": 0}])
def test_trunk_width_errors(kwargs):
    with pytest.raises(ValueError, match="filters"):
        build_model(SIZE, output_size=OUT, **kwargs)


def test_forward_pass_uint8_to_float32_logits():
    model = build_model(SIZE, output_size=OUT, seed=0)
    logits = model(_images(3), training=False)
    assert tuple(logits.shape) == (3, 2) and keras.backend.standardize_dtype(logits.dtype) == "float32"
    rho = _np(rho_from_logits(logits))
    assert np.all((rho > 0) & (rho < 1))


# ---------------------------------------------------------------- seeds

# Active learning seeds iteration i of repeat r with base + 1000 * r + i (src/gzmorph/active_learning.py).
AL_BASE_SEED, AL_REPEATS, AL_ITERATIONS = 42, range(4), range(9)


def _al_seed(repeat: int, iteration: int = 0) -> int:
    return AL_BASE_SEED + 1000 * repeat + iteration


def _layer_seeds(model: keras.Model) -> dict[str, int]:
    """Seed of every random draw of a built model: initializers and random layers (augmentation steps included)."""
    seeds = {}
    for layer in model.layers:
        for sub in getattr(layer, "steps", None) or [layer]:  # the augmentation block only passes seeds on
            init = getattr(sub, "kernel_initializer", None)
            if getattr(init, "seed", None) is not None:
                seeds[f"{sub.name}.kernel_initializer"] = int(init.seed)
            if getattr(sub, "seed", None) is not None:
                seeds[sub.name] = int(sub.seed)
    return seeds


def test_no_two_layers_of_active_learning_models_share_a_seed():
    owners: dict[int, str] = {}
    n_layers = None
    for r, i in itertools.product(AL_REPEATS, AL_ITERATIONS):
        seeds = _layer_seeds(build_model(SIZE, output_size=OUT, seed=_al_seed(r, i)))
        n_layers = n_layers or len(seeds)
        assert len(seeds) == n_layers == 14  # 8 kernels, 2 flips, rotation, contrast, zoom crop, dropout
        for name, s in seeds.items():
            assert 0 <= s < 2**31
            here = f"repeat {r} iteration {i} {name}"
            assert s not in owners, f"{here} has the seed of {owners.get(s)}"
            owners[s] = here


def test_repeat_models_start_from_different_kernels():
    """Repeats 0 and 1 (seeds 42 and 1042): no initial kernel of one equals a same-shaped kernel of the other
    (with seed + 1000 * offset, repeat 0's conv2_1 started as repeat 1's conv1_2)."""
    kernels = []
    for r in (0, 1):
        model = build_model(SIZE, output_size=OUT, seed=_al_seed(r))
        kernels.append({w.path: _np(w) for w in model.weights if w.path.endswith("kernel")})
    assert len(kernels[0]) == len(kernels[1]) == 8
    for (na, a), (nb, b) in itertools.product(kernels[0].items(), kernels[1].items()):
        if a.shape == b.shape:
            assert not np.allclose(a, b), f"repeat 0 {na} == repeat 1 {nb}"
    # ... while the same seed still builds the same model
    again = build_model(SIZE, output_size=OUT, seed=_al_seed(0))
    for w in again.weights:
        if w.path.endswith("kernel"):
            np.testing.assert_array_equal(_np(w), kernels[0][w.path])


# ---------------------------------------------------------------- crop + resize


def test_crop_and_resize_identity_and_box():
    x = _ramp(2, 16, axis=2)
    full = _np(crop_and_resize(x, [0.0, 0.0], [0.0, 0.0], [16.0, 16.0], [16.0, 16.0], 16))
    np.testing.assert_allclose(full, x, atol=1e-6)
    x = np.random.default_rng(0).uniform(size=(2, 16, 16, 1)).astype("float32")
    # an 8x8 box at native resolution returns exactly those pixels, per example
    box = _np(crop_and_resize(x, [4.0, 0.0], [8.0, 2.0], [8.0, 8.0], [8.0, 8.0], 8))
    np.testing.assert_allclose(box[0], x[0, 4:12, 8:16], atol=1e-6)
    np.testing.assert_allclose(box[1], x[1, 0:8, 2:10], atol=1e-6)


@pytest.mark.parametrize("mode", ["random", "central"])
def test_zoom_crop_per_example_and_per_call(mode):
    size, batch = 96, 64
    layer = ZoomCropResize((1.1, 1.3), OUT, mode=mode, seed=3)
    x = _ramp(batch, size, axis=2)  # the same image repeated: any variation is the augmentation's
    out1, out2 = _np(layer(x, training=True)), _np(layer(x, training=True))
    zooms, centres = _zoom_and_centre_from_ramp(out1, size)
    assert np.all((zooms > 1.1 - 0.01) & (zooms < 1.3 + 0.01))
    # drawn per example, spanning the range (not one zoom per batch or per graph)
    assert zooms.min() < 1.14 and zooms.max() > 1.26 and _distinct_rows(out1)
    assert not np.allclose(out1, out2)  # fresh draws on every call
    if mode == "central":
        np.testing.assert_allclose(centres, 0.5, atol=2e-3)
    else:
        assert centres.std() > 0.01
    # deterministic: central crop at the mean zoom
    det = _np(layer(x, training=False))
    det_zooms, det_centres = _zoom_and_centre_from_ramp(det, size)
    np.testing.assert_allclose(det_zooms, 1.2, atol=0.005)
    np.testing.assert_allclose(det_centres, 0.5, atol=2e-3)


def test_zoom_crop_fresh_in_graph_mode():
    layer = ZoomCropResize((1.1, 1.3), OUT, mode="random", seed=5)
    x = tf.constant(_ramp(16, 64, axis=2))
    fn = tf.function(lambda images: layer(images, training=True))
    a, b = fn(x).numpy(), fn(x).numpy()
    assert _distinct_rows(a) and not np.allclose(a, b)
    zooms, _ = _zoom_and_centre_from_ramp(a, 64)
    assert zooms.max() - zooms.min() > 0.05  # per-example zooms, not one per graph or batch


# ---------------------------------------------------------------- augmentation block


def test_augmentation_train_vs_test():
    block = build_augmentation((1.1, 1.3), "random", OUT, seed=7)
    x = np.repeat(_images(1), 16, axis=0)
    a, b = _np(block(x, training=True)), _np(block(x, training=True))
    assert a.shape == (16, OUT, OUT, 1)
    assert _distinct_rows(a) and not np.allclose(a, b)
    assert a.min() >= 0.0 and a.max() <= 1.0
    d1, d2 = _np(block(x, training=False)), _np(block(x))
    np.testing.assert_array_equal(d1, d2)  # default is deterministic (unlike Keras' own layers)
    np.testing.assert_allclose(d1, d1[:1].repeat(16, axis=0), atol=1e-6)


def test_greyscale_is_channel_mean():
    block = build_augmentation(output_size=8, augment=False)
    x = np.zeros((1, 16, 16, 3), np.uint8)
    x[..., 0], x[..., 1], x[..., 2] = 30, 60, 210
    np.testing.assert_allclose(_np(block(x)), 100 / 255, atol=1e-6)


def test_flips_are_independent():
    block = build_augmentation(seed=11)
    flip_h, flip_v = block.steps[2], block.steps[3]
    x = np.zeros((64, 8, 8, 1), "float32")
    x[:, 0, 0, 0] = 1.0
    y = _np(flip_v(flip_h(x, training=True), training=True))
    corners = {(int(r), int(c)) for r, c in zip(*np.nonzero(y[..., 0])[1:], strict=True)}
    assert corners == {(0, 0), (0, 7), (7, 0), (7, 7)}  # all four, not just identity/180 degrees


# ---------------------------------------------------------------- MC dropout + TTA


def test_mc_dropout_active_only_in_training_passes():
    model = build_model(SIZE, output_size=OUT, augment=False, seed=1)
    x = _images(4)
    a, b = _np(model(x, training=True)), _np(model(x, training=True))
    assert not np.allclose(a, b)  # dropout alone makes the passes differ
    np.testing.assert_array_equal(_np(model(x, training=False)), _np(model(x, training=False)))
    np.testing.assert_array_equal(_np(model(x)), model.predict(x, verbose=0))


def test_mc_passes_fresh_in_graph_mode():
    model = build_model(SIZE, output_size=OUT, seed=2)
    x = np.repeat(_images(1), 8, axis=0)
    mc_pass = tf.function(lambda images: model(images, training=True))
    a, b = mc_pass(x).numpy(), mc_pass(x).numpy()
    assert _distinct_rows(a) and not np.allclose(a, b)


def test_save_and_load_roundtrip(tmp_path):
    model = build_model(SIZE, output_size=OUT, crop_mode="central", crop_zoom=(1.7, 1.9), seed=4)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    x = _images(2)
    np.testing.assert_allclose(_np(loaded(x)), _np(model(x)), atol=1e-6)
    assert loaded.get_layer("preprocess").crop_zoom == (1.7, 1.9)


def test_mixed_precision_keeps_augmentation_and_logits_float32():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = build_model(SIZE, output_size=OUT, seed=0)
        logits = model(_images(2), training=True)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    assert model.get_layer("conv1_1").compute_dtype == "bfloat16"
    assert model.get_layer("preprocess").compute_dtype == "float32"


# ---------------------------------------------------------------- the whole-tree heads

# Two questions: q0 with 2 answers, q1 with 3 (answers in question order, as DecisionTree.answer_question_index).
ANSWER_QUESTIONS = [0, 0, 1, 1, 1]


def test_mean_concentration_head_by_hand():
    from gzmorph.model import MeanConcentration

    # answer logits z, then concentration logits c (one per question)
    x = np.array([[np.log(3.0), 0.0, 0.0, np.log(2.0), np.log(5.0), 0.0, 2.0]], "float32")
    alpha = _np(MeanConcentration(ANSWER_QUESTIONS)(x))[0]
    sig = 1.0 / (1.0 + np.exp(-2.0))
    # q0: p = (3/4, 1/4), kappa = 2 (1 + 100 * sigmoid(0)) = 102; q1: p = (1, 2, 5) / 8, kappa = 3 (1 + 100 sig(2))
    expected = np.concatenate([102.0 * np.array([0.75, 0.25]),
                               3.0 * (1.0 + 100.0 * sig) * np.array([1.0, 2.0, 5.0]) / 8.0])
    np.testing.assert_allclose(alpha, expected, rtol=1e-5)


def test_mean_concentration_separates_the_mean_from_the_total():
    """The fractions are the softmax whatever the total concentration; the total spans [n, 101 n] per question.
    The bounded head (alpha >= 1) cannot give a 2-answer question a fraction of 0.05 with a total below 20."""
    from gzmorph.model import MeanConcentration

    layer = MeanConcentration(ANSWER_QUESTIONS)
    z = np.array([np.log(0.05), np.log(0.95), 0.0, 0.0, 0.0], "float32")
    for c in (-30.0, 0.0, 30.0):  # lowest, middle and highest concentration
        alpha = _np(layer(np.concatenate([z, [c, c]])[None].astype("float32")))[0]
        np.testing.assert_allclose(alpha[:2] / alpha[:2].sum(), [0.05, 0.95], rtol=1e-5)
        np.testing.assert_allclose(alpha[2:] / alpha[2:].sum(), [1 / 3] * 3, rtol=1e-5)
        assert 2.0 - 1e-4 <= alpha[:2].sum() <= 202.0 + 1e-3 and 3.0 - 1e-4 <= alpha[2:].sum() <= 303.0 + 1e-3
    low = _np(layer(np.concatenate([z, [-30.0, -30.0]])[None].astype("float32")))[0]
    np.testing.assert_allclose(low[:2].sum(), 2.0, rtol=1e-5)
    # zoobot's bound at that total would pin both alphas to 1: a fraction of 1/2, not 0.05
    assert low[0] / low[:2].sum() < 0.06


def test_mean_concentration_is_stable_for_far_apart_questions():
    """Each question's softmax subtracts its own maximum: a question whose logits sit 500 below another's still
    gets finite fractions that sum to 1, and gradients stay finite."""
    from gzmorph.model import MeanConcentration

    layer = MeanConcentration(ANSWER_QUESTIONS)
    x = tf.constant([[500.0, 499.0, -500.0, -501.0, -502.0, 0.0, 0.0]])
    with tf.GradientTape() as tape:
        tape.watch(x)
        alpha = layer(x)
        loss = tf.reduce_sum(tf.math.log(alpha))
    alpha, grad = alpha.numpy()[0], tape.gradient(loss, x).numpy()
    assert np.all(np.isfinite(alpha)) and np.all(alpha > 0) and np.all(np.isfinite(grad))
    p1 = np.exp([0.0, -1.0, -2.0]) / np.exp([0.0, -1.0, -2.0]).sum()
    np.testing.assert_allclose(alpha[2:] / alpha[2:].sum(), p1, rtol=1e-5)


def test_mean_concentration_model_saves_and_loads(tmp_path):
    from gzmorph.model import MeanConcentration

    model = build_model(SIZE, output_size=OUT, crop_mode="central", seed=2, concentrations=5,
                        head="mean_concentration", answer_questions=ANSWER_QUESTIONS)
    assert isinstance(model.get_layer("concentrations"), MeanConcentration)
    path = tmp_path / "tree.keras"
    model.save(path)
    x = _images(3)
    np.testing.assert_allclose(_np(keras.models.load_model(path)(x)), _np(model(x)), rtol=1e-5)


@pytest.mark.parametrize("kwargs", [{"head": "softmax"}, {"head": "mean_concentration"},
                                    {"head": "mean_concentration", "answer_questions": [0, 0, 1]}])
def test_tree_head_errors(kwargs):
    with pytest.raises(ValueError, match="head"):
        build_model(SIZE, output_size=OUT, concentrations=5, **kwargs)


# ---------------------------------------------------------------- MC samples sharing the trunk


def _tree_model(seed: int = 5, dropout_rate: float = 0.5) -> keras.Model:
    from gzmorph.tree import GZ2

    return build_model(SIZE, output_size=OUT, seed=seed, dropout_rate=dropout_rate,
                       concentrations=GZ2.n_answers(), head="mean_concentration",
                       answer_questions=GZ2.answer_question_index)


@pytest.mark.parametrize("kind", ["binomial", "tree"])
def test_trunk_and_head_compose_to_the_model(kind):
    """split_at_dropout: head(trunk(x)) is the model itself, for the binomial and the whole-tree head."""
    from gzmorph.predict import split_at_dropout

    model = build_model(SIZE, output_size=OUT, seed=3) if kind == "binomial" else _tree_model()
    trunk, head = split_at_dropout(model)
    x = _images(5)
    np.testing.assert_allclose(_np(head(trunk(x))), _np(model(x)), rtol=1e-5, atol=1e-6)
    assert trunk.output.shape[-1] == model.get_layer("dense").units


@pytest.mark.parametrize("kind", ["binomial", "tree"])
def test_dropout_masks_share_one_augmented_trunk_pass(kind):
    """mc(x) is [B, D, ...]: without dropout the D samples of one call are equal (one augmentation), with it
    they differ; a second call draws a new augmentation."""
    from gzmorph.predict import pass_functions

    def model_of(rate):
        return (build_model(SIZE, output_size=OUT, seed=3, dropout_rate=rate) if kind == "binomial"
                else _tree_model(dropout_rate=rate))

    x = _images(4)
    masks = 3
    no_dropout = _np(pass_functions(model_of(0.0), dropout_masks=masks)[0](x))
    out_shape = (4, masks, 2 if kind == "binomial" else no_dropout.shape[-1])  # logits or concentrations
    assert no_dropout.shape == out_shape
    np.testing.assert_allclose(no_dropout, np.repeat(no_dropout[:, :1], masks, axis=1), rtol=1e-6)
    mc, point = pass_functions(model_of(0.5), dropout_masks=masks)
    a, b = _np(mc(x)), _np(mc(x))
    assert not np.allclose(a[:, 0], a[:, 1]) and not np.allclose(a, b)
    assert _np(point(x)).shape == (4, *out_shape[2:])


def test_models_that_do_not_end_in_the_dropout_head_run_full_passes():
    """A model without Fig. 3's mc_dropout head (e.g. fine-tuned) gets D full passes per call instead."""
    from gzmorph.predict import pass_functions, split_at_dropout

    images = keras.Input((SIZE, SIZE, 3), dtype="uint8")
    x = keras.layers.Rescaling(1 / 255)(images)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dropout(0.5, seed=1)(x)
    model = keras.Model(images, keras.layers.Dense(2)(x))
    assert split_at_dropout(model) is None
    draws = _np(pass_functions(model, dropout_masks=4)[0](_images(3)))
    assert draws.shape == (3, 4, 2) and not np.allclose(draws[:, 0], draws[:, 1])


def test_mc_sampling_counts_and_errors():
    from gzmorph.predict import MCSampling

    sampling = MCSampling.of({"augmentations": 6, "dropout_masks": 5})
    assert sampling.passes == 30
    with pytest.raises(ValueError, match="must be positive"):
        MCSampling(0, 5)

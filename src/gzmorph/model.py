"""Bayesian CNN of Walmsley et al. 2020 (§2.5.2 Fig. 3; augmentations §2.5.3), Keras 3.

Architecture (Fig. 3), after augmentation to output_size x output_size x 1:
  [conv 3x3x32 relu] x2 -> maxpool 2 -> [conv 3x3x32 relu] x2 -> maxpool 2
  -> [conv 3x3x16 relu] x2 -> maxpool 2 -> flatten -> dense 128 relu
  -> dropout 0.5 -> dense 2 (logits, float32).
The model outputs LOGITS; the paper's softmax is applied by the loss
(``losses.binomial_nll_from_logits``) and at prediction time
(``losses.rho_from_logits``: rho = softmax(logits)[..., 0]).  Keeping the last
layer float32 lets the rest run in mixed precision.  (Fig. 3's caption calls the
128-unit layer "linear"; we use relu, the VGG-style choice this project specifies.)

Augmentations (§2.5.3), in the paper's order, on uint8 [B, R, R, C] input scaled to [0, 1]:
  (i) greyscale by channel mean                      -- always
  (ii) random horizontal and (independent) vertical flips  -- training only
  (iii) rotation by U(0, 90) degrees, edge-nearest fill     -- training only
  (iv) contrast x U(0.98, 1.02)                             -- training only
  (v) crop by a zoom ~ U(crop_zoom) drawn PER EXAMPLE, random or central position
      -- training; otherwise central crop at the mean zoom
  (vi) resize to output_size (fused with (v) into one anti-aliased resampling).
MC dropout and test-time augmentation share one switch: ``model(x, training=True)``
re-draws dropout masks and augmentations per example and per call (eq. 10's T passes);
``training=False`` is deterministic.
"""

from __future__ import annotations

from typing import Literal

import keras
import numpy as np
from keras import layers, ops

CropMode = Literal["random", "central"]


def _sub_seed(seed: int | None, offset: int) -> int | None:
    """The seed of random layer ``offset`` of a model seeded ``seed``: a 31-bit int (fits every backend's int32).

    Layers need distinct seeds (equal seeds would make e.g. both flips identical), and so do the layers of
    models whose seeds are close: ``seed + 1000 * offset`` gave repeat 0's conv2_1 the seed of repeat 1's
    conv1_2 when active-learning repeats differ by 1000.  Hashing the pair through numpy's SeedSequence makes
    distinct (seed, offset) pairs give unrelated seeds (collisions only by chance, ~n^2 / 2^32 among n seeds).
    """
    if seed is None:
        return None
    from numpy.random import SeedSequence

    seed, offset = int(seed), int(offset)
    # SeedSequence takes non-negative entropy: fold the sign in bijectively (0, -1, 1, -2, ... -> 0, 1, 2, 3, ...).
    words = [2 * v if v >= 0 else -2 * v - 1 for v in (seed, offset)]
    return int(SeedSequence(words).generate_state(1, "uint32")[0] >> 1)


def resampling_weights(starts, crop_sizes, in_size: int, out_size: int, antialias: bool = True):
    """Per-example 1-D resampling matrices [B, out_size, in_size] (rows sum to 1).

    Output pixel j of example b samples the input at the continuous coordinate
    starts[b] + (j + 0.5) * crop_sizes[b] / out_size (pixel i spans [i, i + 1)).
    Weights are a triangle (tent) kernel on input pixel centres: plain bilinear
    interpolation when antialias=False; when downsampling with antialias=True the
    tent widens by the scale factor (like tf.image.resize(antialias=True)), so
    crop-then-shrink does not alias.  Edge rows renormalise, i.e. clamp to edge.
    """
    starts = ops.cast(starts, "float32")
    crop_sizes = ops.cast(crop_sizes, "float32")
    scale = crop_sizes / out_size  # input pixels per output pixel, [B]
    out_pos = ops.arange(out_size, dtype="float32") + 0.5
    centres = starts[:, None] + out_pos[None, :] * scale[:, None]  # [B, out]
    in_pos = ops.arange(in_size, dtype="float32") + 0.5
    width = ops.maximum(scale, 1.0) if antialias else ops.ones_like(scale)
    dist = ops.abs(in_pos[None, None, :] - centres[:, :, None]) / width[:, None, None]
    weights = ops.relu(1.0 - dist)  # every centre is within 0.5 px of a pixel -> row sum > 0
    return weights / ops.sum(weights, axis=-1, keepdims=True)


def crop_and_resize(images, tops, lefts, crop_heights, crop_widths, out_size: int, antialias: bool = True):
    """Crop box b (float tops/lefts/sizes in pixels, [B] each) of images [B, H, W, C], resized to out_size.

    Separable resampling as two batched matmuls (einsum): pure keras.ops, graph-safe,
    differentiable, and one interpolation for crop+resize together.
    """
    height, width = images.shape[1], images.shape[2]
    wy = ops.cast(resampling_weights(tops, crop_heights, height, out_size, antialias), images.dtype)
    wx = ops.cast(resampling_weights(lefts, crop_widths, width, out_size, antialias), images.dtype)
    rows = ops.einsum("boh,bhwc->bowc", wy, images)
    return ops.einsum("bpw,bowc->bopc", wx, rows)


@keras.saving.register_keras_serializable(package="gzmorph")
class ChannelMean(layers.Layer):
    """Greyscale by averaging channels (§2.5.3 i): no colour shortcut to morphology."""

    def call(self, images):
        return ops.mean(images, axis=-1, keepdims=True)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 1)


@keras.saving.register_keras_serializable(package="gzmorph")
class ZoomCropResize(layers.Layer):
    """Crop by zoom z ~ U(zoom_range) per example, then resize to output_size (§2.5.3 v-vi).

    The crop side is input_side / z.  mode="random" places each crop uniformly at
    random inside the image (per example); mode="central" centres it.  With
    training=False: central crop at the mean zoom (deterministic).  Fresh zooms and
    positions are drawn for every example and every call (SeedGenerator state advances).
    """

    def __init__(
        self,
        zoom_range: tuple[float, float] = (1.1, 1.3),
        output_size: int = 128,
        mode: CropMode = "random",
        antialias: bool = True,
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        lo, hi = (float(z) for z in zoom_range)
        if not 1.0 <= lo <= hi:
            raise ValueError(f"zoom_range must satisfy 1 <= lo <= hi, got {zoom_range}")
        if mode not in ("random", "central"):
            raise ValueError(f"mode must be 'random' or 'central', got {mode!r}")
        self.zoom_range = (lo, hi)
        self.output_size = int(output_size)
        self.mode = mode
        self.antialias = bool(antialias)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def sample_boxes(self, batch_size, height: int, width: int, training: bool):
        """(tops, lefts, crop_heights, crop_widths, zooms), each [B] float32."""
        lo, hi = self.zoom_range
        if training:
            zooms = keras.random.uniform((batch_size,), lo, hi, seed=self.seed_generator)
        else:
            zooms = ops.full((batch_size,), 0.5 * (lo + hi), dtype="float32")
        crop_h, crop_w = height / zooms, width / zooms
        if training and self.mode == "random":
            u = keras.random.uniform((2, batch_size), seed=self.seed_generator)
            tops, lefts = u[0] * (height - crop_h), u[1] * (width - crop_w)
        else:
            tops, lefts = 0.5 * (height - crop_h), 0.5 * (width - crop_w)
        return tops, lefts, crop_h, crop_w, zooms

    def call(self, images, training=False):
        tops, lefts, crop_h, crop_w, _ = self.sample_boxes(
            ops.shape(images)[0], images.shape[1], images.shape[2], bool(training)
        )
        return crop_and_resize(images, tops, lefts, crop_h, crop_w, self.output_size, self.antialias)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.output_size, self.output_size, input_shape[-1])

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            zoom_range=self.zoom_range,
            output_size=self.output_size,
            mode=self.mode,
            antialias=self.antialias,
            seed=self.seed,
        )
        return config


@keras.saving.register_keras_serializable(package="gzmorph")
class GalaxyAugmentation(layers.Layer):
    """uint8 [B, R, R, C] -> float [B, output_size, output_size, 1] in [0, 1] (§2.5.3 i-vi).

    Random steps run only when called with training=True.  Unlike Keras' own
    preprocessing layers (whose call defaults to training=True, so a bare
    ``model(x)`` would augment), this block defaults to training=False and passes
    the flag explicitly to each step.  augment=False keeps only the deterministic
    steps (scale, greyscale, central crop at the mean zoom, resize), so downstream
    weights are interchangeable between the two.
    """

    def __init__(
        self,
        crop_zoom: tuple[float, float] = (1.1, 1.3),
        crop_mode: CropMode = "random",
        output_size: int = 128,
        augment: bool = True,
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.crop_zoom = tuple(float(z) for z in crop_zoom)
        self.crop_mode = crop_mode
        self.output_size = int(output_size)
        self.augment = bool(augment)
        self.seed = seed
        dtype = self.dtype_policy  # sub-steps share the block's policy (float32 by default)
        steps: list[layers.Layer] = [
            layers.Rescaling(1.0 / 255.0, name="to_unit", dtype=dtype),
            ChannelMean(name="greyscale", dtype=dtype),
        ]
        if augment:
            steps += [
                # Two independent flips: Keras' "horizontal_and_vertical" uses ONE draw for both axes.
                layers.RandomFlip("horizontal", seed=_sub_seed(seed, 1), name="flip_h", dtype=dtype),
                layers.RandomFlip("vertical", seed=_sub_seed(seed, 2), name="flip_v", dtype=dtype),
                # U(0, 90 deg); flips supply the rest of the orientations.
                layers.RandomRotation(
                    (0.0, 0.25), fill_mode="nearest", seed=_sub_seed(seed, 3), name="rotate", dtype=dtype
                ),
                # value_range: Keras clips to (0, 255) by default; our images are in [0, 1].
                layers.RandomContrast(
                    0.02, value_range=(0.0, 1.0), seed=_sub_seed(seed, 4), name="contrast", dtype=dtype
                ),
            ]
        steps.append(
            ZoomCropResize(
                crop_zoom, output_size, crop_mode, seed=_sub_seed(seed, 5), name="zoom_crop", dtype=dtype
            )
        )
        self.steps = steps

    def build(self, input_shape):
        shape = input_shape
        for step in self.steps:
            step.build(shape)
            shape = step.compute_output_shape(shape)
        self.built = True

    def call(self, images, training=False):
        x = images
        for step in self.steps:
            x = step(x, training=bool(training))
        return x

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.output_size, self.output_size, 1)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            crop_zoom=self.crop_zoom,
            crop_mode=self.crop_mode,
            output_size=self.output_size,
            augment=self.augment,
            seed=self.seed,
        )
        return config


def build_augmentation(
    crop_zoom: tuple[float, float] = (1.1, 1.3),
    crop_mode: CropMode = "random",
    output_size: int = 128,
    augment: bool = True,
    seed: int | None = None,
) -> GalaxyAugmentation:
    """The §2.5.3 augmentation block (also handy for showing what the network sees).

    Always float32, also under a mixed-precision policy: resampling 8-bit images in
    (b)float16 would add visible quantisation; conv1 casts to the compute dtype.
    """
    return GalaxyAugmentation(
        crop_zoom, crop_mode, output_size, augment, seed, name="preprocess", dtype="float32"
    )


# The whole-tree heads.  "bounded" is zoobot's: alpha_a = 1 + 100 sigmoid(z_a), each answer on its own.  Its floor
# alpha >= 1 ties the expected fraction to the total concentration: a question of n answers with A = sum alpha has
# every expected fraction alpha_a / A in [1 / A, 1 - (n - 1) / A], so where the Dirichlet-multinomial fit lowers A
# (votes the image cannot predict, as bar's: median A 3.2 on the default sky) the means are squeezed towards 1 / n.
# "mean_concentration" separates the two: per question the expected fractions are a softmax (the binomial model's
# head) and the total concentration kappa is its own output, in zoobot's range of A, [n, 101 n].
HEADS = ("bounded", "mean_concentration")
MAX_CONCENTRATION_PER_ANSWER = 100.0


@keras.saving.register_keras_serializable(package="gzmorph")
class MeanConcentration(layers.Layer):
    """[B, n_answers + n_questions] -> Dirichlet concentrations [B, n_answers] (the ``mean_concentration`` head).

    The first n_answers inputs are answer logits z, the last n_questions are concentration logits c.  Per question
    q with n_q answers: p = softmax(z over q's answers), kappa_q = n_q (1 + 100 sigmoid(c_q)), alpha_a = kappa_q p_a.
    So alpha / sum(alpha) = p whatever kappa is, and sum(alpha) spans [n_q, 101 n_q] as zoobot's bound does.
    ``answer_questions``: the question index of every answer (``DecisionTree.answer_question_index``).
    """

    def __init__(self, answer_questions, **kwargs):
        super().__init__(**kwargs)
        self.answer_questions = [int(j) for j in answer_questions]
        index = np.asarray(self.answer_questions)
        if index.size == 0 or index.min() < 0 or set(index.tolist()) != set(range(index.max() + 1)):
            raise ValueError(f"answer_questions must index questions 0..Q-1, each at least once; got {index.tolist()}")
        membership = np.zeros((index.size, index.max() + 1), "float32")
        membership[np.arange(index.size), index] = 1.0
        self._membership = membership  # [A, Q] indicator

    @property
    def n_answers(self) -> int:
        return self._membership.shape[0]

    def call(self, x):
        x = ops.cast(x, "float32")
        membership = ops.convert_to_tensor(self._membership)  # [A, Q]
        z, c = x[:, : self.n_answers], x[:, self.n_answers:]
        # Softmax within each question: subtract the question's own max (a row max could underflow a question
        # whose logits sit far below another's), exponentiate, divide by the question's sum.
        masked = z[:, :, None] + (membership[None] - 1.0) * 1e30  # [B, A, Q]: -inf-ish outside the question
        question_max = ops.max(masked, axis=1)  # [B, Q]
        e = ops.exp(z - ops.stop_gradient(ops.matmul(question_max, ops.transpose(membership))))
        p = e / ops.matmul(ops.matmul(e, membership), ops.transpose(membership))
        n_q = ops.sum(membership, axis=0)  # [Q]
        kappa = n_q * (1.0 + MAX_CONCENTRATION_PER_ANSWER * ops.sigmoid(c))  # [B, Q]
        return p * ops.matmul(kappa, ops.transpose(membership))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.n_answers)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(answer_questions=list(self.answer_questions))
        return config


def _init(seed: int | None, offset: int):
    return keras.initializers.GlorotUniform(seed=_sub_seed(seed, 10 + offset))


PAPER_FILTERS = (32, 32, 16)  # Fig. 3: filters of the three blocks of two 3x3 convolutions
PAPER_DENSE_UNITS = 128


def build_model(
    input_size: int,
    channels: int = 3,
    crop_zoom: tuple[float, float] = (1.1, 1.3),
    crop_mode: CropMode = "random",
    output_size: int = 128,
    dropout_rate: float = 0.5,
    seed: int | None = None,
    augment: bool = True,
    concentrations: int | None = None,
    head: str = "bounded",
    answer_questions=None,
    filters: tuple[int, int, int] = PAPER_FILTERS,
    dense_units: int = PAPER_DENSE_UNITS,
) -> keras.Model:
    """Fig. 3 CNN: uint8 images [B, input_size, input_size, channels] -> logits [B, 2] (float32).

    rho = softmax(logits)[..., 0] (``losses.rho_from_logits``).  Call with
    training=True for MC-dropout + test-time-augmentation passes.

    ``concentrations`` = n_answers gives the whole-tree head instead (Walmsley et al. 2021): Dirichlet
    concentrations [B, n_answers] = 1 + 100 sigmoid(dense), zoobot's bound (alpha >= 1: every pass's Dirichlet
    is unimodal or flat; <= 101 caps how confident one pass can be), on the same trunk and MC dropout.
    ``head="mean_concentration"`` (with ``answer_questions``, the question index of each answer) gives instead
    a softmax of expected fractions per question times a separate total concentration (:class:`MeanConcentration`).
    ``filters`` (per block of two convolutions) and ``dense_units`` widen the trunk; the defaults are Fig. 3's.
    """
    if len(filters) != 3 or min(int(f) for f in filters) < 1 or int(dense_units) < 1:
        raise ValueError(f"filters must be three positive widths, dense_units positive: got {filters}, {dense_units}")
    images = keras.Input((input_size, input_size, channels), dtype="uint8", name="image")
    x = build_augmentation(crop_zoom, crop_mode, output_size, augment, seed)(images)
    i = 0
    for block, width in enumerate(filters, start=1):
        for j in (1, 2):
            x = layers.Conv2D(
                int(width), 3, padding="same", activation="relu", kernel_initializer=_init(seed, i),
                name=f"conv{block}_{j}",
            )(x)
            i += 1
        x = layers.MaxPooling2D(2, name=f"pool{block}")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(int(dense_units), activation="relu", kernel_initializer=_init(seed, i), name="dense")(x)
    x = layers.Dropout(dropout_rate, seed=_sub_seed(seed, 6), name="mc_dropout")(x)
    if concentrations is not None and head == "mean_concentration":
        if answer_questions is None or len(answer_questions) != int(concentrations):
            raise ValueError("head='mean_concentration' needs answer_questions, one question index per answer")
        n_questions = max(int(j) for j in answer_questions) + 1
        x = layers.Dense(int(concentrations) + n_questions, dtype="float32", kernel_initializer=_init(seed, i + 1),
                         name="fraction_and_concentration_logits")(x)
        alpha = MeanConcentration(answer_questions, dtype="float32", name="concentrations")(x)
        return keras.Model(images, alpha, name="walmsley2021_tree_dirichlet")
    if concentrations is not None:
        if head != "bounded":
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        x = layers.Dense(int(concentrations), activation="sigmoid", dtype="float32",
                         kernel_initializer=_init(seed, i + 1), name="concentration_sigmoid")(x)
        alpha = layers.Rescaling(100.0, offset=1.0, dtype="float32", name="concentrations")(x)
        return keras.Model(images, alpha, name="walmsley2021_tree_dirichlet")
    logits = layers.Dense(2, dtype="float32", kernel_initializer=_init(seed, i + 1), name="logits")(x)
    return keras.Model(images, logits, name="walmsley2020_bcnn")


def expected_param_count(output_size: int = 128, channels_in: int = 1) -> int:
    """Trainable parameters of Fig. 3's CNN, by hand (3x3 kernels + biases, 3 poolings of 2)."""
    convs = [(channels_in, 32), (32, 32), (32, 32), (32, 32), (32, 16), (16, 16)]
    conv_params = sum(9 * c_in * c_out + c_out for c_in, c_out in convs)
    flat = (output_size // 8) ** 2 * 16
    return conv_params + (flat * 128 + 128) + (128 * 2 + 2)

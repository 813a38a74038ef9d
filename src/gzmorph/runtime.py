"""Where and how TensorFlow runs, shared by every stage that runs a model (train, predict, evaluate, active learning).

* :func:`configure_threads`: TensorFlow's intra/inter-op thread pools (``--threads``); only possible before
  TensorFlow's runtime starts.
* :func:`describe_device`: GPU when TensorFlow sees one, CPU otherwise (no change to the code path), as a
  string for the log.
* :func:`seed_everything`: ``keras.utils.set_random_seed(seed)`` (Python, numpy, TensorFlow and Keras
  generators); on CPU TensorFlow op determinism is also switched on (cheap there, costly on a GPU).  With
  seeded layers and a seeded shuffle this makes a run repeatable.
* :func:`precision_policy`: the Keras dtype policy while a model is built: float32, or with
  ``train.mixed_precision`` float16 (GPU) / bfloat16 (CPU) compute.
* :func:`distribution_strategy`: ``train.distribute``; a ``tf.distribute.MirroredStrategy`` over the visible
  GPUs (data parallel, one replica per GPU) or None for the ordinary one-device path.

What a stage reads (the vote-count inputs) lives in :mod:`gzmorph.inputs`, how a model is trained in
:mod:`gzmorph.train`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)


def configure_threads(threads: int | None) -> None:
    """TensorFlow intra/inter-op threads; only possible before TF's runtime starts (else a no-op)."""
    import tensorflow as tf

    if not threads:
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(int(threads))
        tf.config.threading.set_inter_op_parallelism_threads(int(threads))
    except RuntimeError:  # runtime already initialised (e.g. a second call in one process)
        log.debug("TensorFlow already initialised; thread settings unchanged")


def describe_device() -> tuple[str, bool]:
    """(human-readable device, is_gpu); logged so a run's log says where it ran."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        return f"GPU ({', '.join(g.name for g in gpus)})", True
    return "CPU (no GPU visible)", False


def seed_everything(seed: int, gpu: bool) -> None:
    """Seed Python, numpy, TensorFlow and Keras; deterministic TF kernels on CPU."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(int(seed))
    if not gpu:
        # Deterministic kernels cost little on CPU; on GPU they can cost a lot, so left off there.
        tf.config.experimental.enable_op_determinism()


@contextmanager
def precision_policy(mixed: bool, gpu: bool) -> Iterator[str]:
    """Global Keras dtype policy while the model is built (layers take it at construction), then restored."""
    import keras

    previous = keras.mixed_precision.global_policy()
    name = ("mixed_float16" if gpu else "mixed_bfloat16") if mixed else "float32"
    keras.mixed_precision.set_global_policy(name)
    try:
        yield name
    finally:
        keras.mixed_precision.set_global_policy(previous)


DISTRIBUTE_MODES = ("auto", "mirrored", "none")


def distribution_strategy(mode: str = "auto") -> object | None:
    """The ``tf.distribute`` strategy of ``train.distribute``, or None for the one-device path.

    ``auto``: MirroredStrategy when more than one GPU is visible, else None. ``mirrored``: MirroredStrategy
    over all visible GPUs, or, with none, over the logical CPUs when there are several (tests split the CPU in
    two with ``tf.config.set_logical_device_configuration``); one device only gives None, with a warning.
    ``none``: None. Call after :func:`configure_threads` (listing devices starts TensorFlow's runtime).
    """
    import tensorflow as tf

    if mode not in DISTRIBUTE_MODES:
        raise ValueError(f"train.distribute: {mode!r} is not one of {', '.join(DISTRIBUTE_MODES)}")
    if mode == "none":
        return None
    devices = [d.name for d in tf.config.list_logical_devices("GPU")]
    if mode == "mirrored" and not devices:
        devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    if len(devices) < 2:
        if mode == "mirrored":
            log.warning("train.distribute: mirrored, but only %d device is visible; training on it alone",
                        len(devices))
        return None
    return tf.distribute.MirroredStrategy(devices=devices)

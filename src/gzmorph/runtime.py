"""Where and how TensorFlow runs, shared by every stage that runs a model (train, predict, evaluate, active learning).

* :func:`configure_threads`: TensorFlow's intra/inter-op thread pools (``--threads``); only possible before
  TensorFlow's runtime starts.
* :func:`describe_device`: GPU when TensorFlow sees one, CPU otherwise (no change to the code path), as a
  string for the log.
* :func:`seed_everything`: ``keras.utils.set_random_seed(seed)`` (Python, numpy, TensorFlow and Keras
  generators); on CPU TensorFlow op determinism is also switched on (cheap there, costly on a GPU).  With
  seeded layers and a seeded shuffle this makes a run repeatable.
* :func:`precision_policy`: the Keras dtype policy while a model is built, chosen by :func:`policy_name` from
  ``train.mixed_precision`` (``auto``: bfloat16 on CPUs with native bf16, float16 on GPUs with tensor cores,
  float32 otherwise); :func:`model_precision` reads it back from a trained model.
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


PRECISION_SETTINGS = ("auto", True, False)
# CPU flags of native bfloat16 arithmetic (Linux /proc/cpuinfo names): AVX-512 BF16 (Zen 4, Cooper Lake) or AMX.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU feature flags of ``/proc/cpuinfo`` (or of the text ``cpuinfo``); empty where there is none."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                cpuinfo = f.read()
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return set()


def gpu_has_tensor_cores() -> bool:
    """Every visible GPU has compute capability >= 7.0 (Volta and later: float16 tensor cores)."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return False
    for gpu in gpus:
        capability = tf.config.experimental.get_device_details(gpu).get("compute_capability") or (0, 0)
        if tuple(capability) < (7, 0):
            return False
    return True


def policy_name(setting: bool | str, gpu: bool, *, flags: set[str] | None = None,
                tensor_cores: bool | None = None) -> tuple[str, str]:
    """(Keras dtype policy, why) for ``train.mixed_precision``.

    ``false``: float32.  ``true``: mixed float16 on a GPU, mixed bfloat16 on a CPU.  ``auto``: mixed precision
    where the hardware computes it natively (a GPU with tensor cores: float16; a CPU with AVX512_BF16 or AMX:
    bfloat16), float32 otherwise; emulated bfloat16 on an older CPU is slower than float32.
    """
    if setting not in PRECISION_SETTINGS:
        raise ValueError(f"train.mixed_precision: {setting!r} is not one of auto, true, false")
    if setting is False:
        return "float32", "train.mixed_precision: false"
    if setting is True:
        return ("mixed_float16" if gpu else "mixed_bfloat16"), "train.mixed_precision: true"
    if gpu:
        native = gpu_has_tensor_cores() if tensor_cores is None else tensor_cores
        return (("mixed_float16", "auto: GPU with tensor cores") if native
                else ("float32", "auto: GPU without tensor cores"))
    found = sorted(set(BF16_CPU_FLAGS) & (cpu_flags() if flags is None else flags))
    if found:
        return "mixed_bfloat16", f"auto: CPU with native bfloat16 ({', '.join(found)})"
    return "float32", "auto: CPU without native bfloat16"


@contextmanager
def precision_policy(mixed: bool | str, gpu: bool) -> Iterator[str]:
    """Global Keras dtype policy (:func:`policy_name` of ``mixed``) while a model is built, then restored.

    Layers take the policy at construction, and a saved model keeps it in its config (:func:`model_precision`).
    """
    import keras

    previous = keras.mixed_precision.global_policy()
    name, why = policy_name(mixed, gpu)
    log.info("dtype policy %s (%s)", name, why)
    keras.mixed_precision.set_global_policy(name)
    try:
        yield name
    finally:
        keras.mixed_precision.set_global_policy(previous)


def model_precision(model: object) -> str:
    """The dtype policy a model's convolutions compute in (``float32``, ``mixed_bfloat16``, ``mixed_float16``)."""
    import keras

    for layer in model._flatten_layers():  # noqa: SLF001 (nested models: fine-tuned trunks)
        if isinstance(layer, keras.layers.Conv2D):
            return str(layer.dtype_policy.name)
    return str(keras.mixed_precision.global_policy().name)


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

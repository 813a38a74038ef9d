"""gzmorph.runtime: dtype policy, device, threads and seeds shared by the model stages."""

from __future__ import annotations

import numpy as np


def test_precision_policy_is_restored():
    import keras

    from gzmorph.runtime import precision_policy

    before = keras.mixed_precision.global_policy().name
    with precision_policy(False, gpu=False) as name:
        assert name == "float32" == keras.mixed_precision.global_policy().name
    for gpu, expected in ((False, "mixed_bfloat16"), (True, "mixed_float16")):
        with precision_policy(True, gpu=gpu) as name:
            assert name == expected == keras.mixed_precision.global_policy().name
        assert keras.mixed_precision.global_policy().name == before


def test_describe_device_and_threads():
    import tensorflow as tf

    from gzmorph.runtime import configure_threads, describe_device

    device, gpu = describe_device()
    assert gpu == bool(tf.config.list_physical_devices("GPU")) and device.startswith("GPU" if gpu else "CPU")
    configure_threads(None)  # no-op
    configure_threads(2)  # after TF started: logged and ignored, never an error


def test_seed_everything_repeats_draws():
    import keras

    from gzmorph.runtime import seed_everything

    draws = []
    for _ in range(2):
        seed_everything(7, gpu=True)  # gpu=True: leaves TF op determinism as it is
        draws.append(keras.random.uniform((3,)).numpy())
    np.testing.assert_array_equal(draws[0], draws[1])

"""gzmorph.runtime: dtype policy, device, threads and seeds shared by the model stages."""

from __future__ import annotations

import numpy as np
import pytest


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


def test_precision_chosen_by_the_hardware():
    from gzmorph.runtime import policy_name

    zen4, older = {"avx2", "avx512f", "avx512_bf16"}, {"avx2", "avx512f"}
    assert policy_name("auto", gpu=False, flags=zen4)[0] == "mixed_bfloat16"
    assert policy_name("auto", gpu=False, flags={"amx_bf16"})[0] == "mixed_bfloat16"
    assert policy_name("auto", gpu=False, flags=older)[0] == "float32"
    assert policy_name("auto", gpu=True, tensor_cores=True)[0] == "mixed_float16"
    assert policy_name("auto", gpu=True, tensor_cores=False)[0] == "float32"
    assert policy_name(False, gpu=False, flags=zen4)[0] == "float32"
    assert policy_name(True, gpu=False, flags=older)[0] == "mixed_bfloat16"
    assert "avx512_bf16" in policy_name("auto", gpu=False, flags=zen4)[1]  # the log says why
    with pytest.raises(ValueError, match="auto, true, false"):
        policy_name("fast", gpu=False)


def test_cpu_flags_are_read_from_cpuinfo():
    from gzmorph.runtime import cpu_flags

    text = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx512f avx512_bf16\n"
    assert cpu_flags(text) == {"fpu", "sse2", "avx512f", "avx512_bf16"}
    assert cpu_flags("no flags here") == set()


def test_model_precision_is_read_back_from_a_saved_model(tmp_path):
    import keras

    from gzmorph.model import build_model
    from gzmorph.runtime import model_precision, precision_policy

    with precision_policy(True, gpu=False):
        model = build_model(32, output_size=16, seed=0)
    model.save(tmp_path / "m.keras")
    assert model_precision(keras.saving.load_model(tmp_path / "m.keras")) == "mixed_bfloat16"
    assert model_precision(build_model(32, output_size=16, seed=0)) == "float32"

"""``train.distribute``: training under tf.distribute.MirroredStrategy, on a CPU split into two logical devices.

The split (``tf.config.set_logical_device_configuration``) must happen before TensorFlow's runtime starts,
so the runs happen in a fresh subprocess: ``gzmorph train`` on tiny learnable shards with ``distribute:
mirrored`` (2 replicas, train.batch_size 16 per replica: global batch 32) and with ``distribute: none`` at
the same global batch (batch_size 32), which must give a finite loss close to it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("tensorflow")

TESTS = Path(__file__).resolve().parent

SCRIPT = r"""
import json, logging, sys
from pathlib import Path
import tensorflow as tf
logging.basicConfig(level=logging.INFO)

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
sys.path.insert(0, sys.argv[2])
from test_train import QUESTION, learnable_shards, tiny_params
from gzmorph import runtime, train

root = Path(sys.argv[1])
shards, _ = learnable_shards(root, n=240)
assert runtime.distribution_strategy("auto") is None  # no GPU: auto keeps the one-device path
out = {}
for mode, batch in (("mirrored", 16), ("none", 32)):
    params = tiny_params(root, distribute=mode, batch_size=batch, max_epochs=2, min_epochs=0, patience=2,
                         warmup_epochs=0, questions={QUESTION: {"max_epochs": 2}})  # bar sets its own 60
    assert params["train"]["questions"][QUESTION]["max_epochs"] == 2
    res = train.train(params, QUESTION, shards, root / mode / "m.keras", root / mode / "h.csv", threads=2,
                      progress=False)
    out[mode] = {"replicas": res.replicas, "loss": res.history["loss"].tolist(),
                 "val_loss": res.history["val_loss"].tolist()}
# the model trained under the strategy reloads and predicts on one device, as `gzmorph predict` does
reloaded = train.load_model(root / "mirrored" / "m.keras")
out["reloaded_outputs"] = int(reloaded.output_shape[-1])
print("RESULT " + json.dumps(out))
"""


def test_mirrored_strategy_on_two_logical_cpus(tmp_path):
    res = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), str(TESTS)], capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("RESULT "))
    out = json.loads(line.removeprefix("RESULT "))
    print(out)  # pytest -s: the losses of both runs
    mirrored, single = out["mirrored"], out["none"]
    assert mirrored["replicas"] == 2 and single["replicas"] == 1
    assert "MirroredStrategy over 2 replicas" in res.stderr
    assert out["reloaded_outputs"] == 2
    for key in ("loss", "val_loss"):
        a, b = mirrored[key], single[key]
        assert len(a) == len(b) == 2
        assert all(v == v and abs(v) < 1e6 for v in a + b), (key, a, b)  # finite
        # same data, same global batch and steps: the runs differ only in dropout/augmentation draws per
        # replica and in the order of the gradient sum, so the losses agree to a few per cent
        assert a[-1] == pytest.approx(b[-1], rel=0.1), (key, a, b)

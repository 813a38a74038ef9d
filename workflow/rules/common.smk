# Helpers shared by the rules.

import shutil
import subprocess

from gzmorph.config import select


def P(*keys):
    """Settings a rule depends on, by dotted key (as dvc.yaml's params list them).

    Keys may name wildcards, e.g. "simulate.surveys.{survey}".
    """
    if any("{" in k for k in keys):
        return lambda wc: select(config, [k.format(**dict(wc.items())) for k in keys])
    return select(config, keys)


# Threads of the data-parallel stages: Snakemake scales this down to --cores (and to a
# cluster job's allocation), and the stage receives the real number as --threads.
ALL_CORES = 256


def gpu_visible():
    """Whether this machine's jobs see a GPU: nvidia-smi lists one and CUDA_VISIBLE_DEVICES hides none of them."""
    if os.environ.get("CUDA_VISIBLE_DEVICES") in ("", "-1"):
        return False
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    try:
        listed = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return "GPU " in listed


def total_cores():
    try:
        return int(workflow.cores)
    except Exception:  # no --cores (a cluster executor, --rulegraph)
        return ALL_CORES


# Model jobs (training, MC prediction, fine-tuning, active learning). With a GPU (or on a cluster, whose nodes
# may have one) each asks for it, so `--resources gpu=1` runs them one at a time, each with every core for its
# input pipeline. Without a GPU a model job takes half the cores, so `--cores 2` keeps two trainings going side
# by side: two one-thread trainings do more work than one two-thread training.
MODEL_GPU = 1 if (gpu_visible() or not workflow.local_exec) else 0
MODEL_THREADS = ALL_CORES if MODEL_GPU else max(1, total_cores() // 2)


def archives_manifest(wildcards):
    """The Zenodo zips a real survey's images come from, if they come from zips."""
    if config["real"]["surveys"][wildcards.survey]["images"] == "zenodo":
        return f"data/real/{wildcards.survey}/archives.json"
    return []

"""The SLURM profile, proven on a real (one-node) SLURM: the tiny workflow through sbatch gives what a local run gives.

Needs a running SLURM (``sudo workflow/scripts/slurm_local.sh`` starts one on this machine) and
snakemake-executor-plugin-slurm (``pip install -e .[cluster]``); skipped otherwise, so the default
``pytest`` never depends on either.
"""

import hashlib
import importlib.util
import json
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
from test_pipeline_e2e import BIN, TINY, copy_project, run

pytestmark = pytest.mark.slow

PROFILE = "workflow/profiles/slurm"
# Everything under data/ and results/ is compared byte for byte between the local and the SLURM run (images,
# catalogs, TFRecord shards, crossmatch, predictions, calibration and evaluation tables, figures, metrics),
# except the .keras models: a zip whose metadata.json stamps the save time and whose config.json carries
# Keras's shared_object_id (a Python id(), a memory address of the saving process). Their weights file must
# be identical, and their config once those ids are dropped. Logs and benchmarks (timings) are not compared.
COMPARED = ("data", "results")


def _skip_reason() -> str | None:
    if shutil.which("sbatch") is None:
        return "sbatch not found: no SLURM here (sudo workflow/scripts/slurm_local.sh starts a one-node one)"
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        return "snakemake-executor-plugin-slurm not installed (pip install -e .[cluster])"
    res = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    if res.returncode != 0 or not re.search(r"idle|mix", res.stdout):
        return f"SLURM not answering or no idle node (sinfo: {(res.stdout + res.stderr).strip()[:200]})"
    return None


def _without_object_ids(node):
    if isinstance(node, dict):
        return {k: _without_object_ids(v) for k, v in node.items() if k != "shared_object_id"}
    if isinstance(node, list):
        return [_without_object_ids(v) for v in node]
    return node


def digests(root: Path) -> dict[str, str]:
    out = {}
    for sub in COMPARED:
        for f in sorted((root / sub).rglob("*")):
            if not f.is_file() or f.name == ".gitignore":
                continue
            name = str(f.relative_to(root))
            if f.suffix == ".keras":
                with zipfile.ZipFile(f) as z:
                    out[f"{name}:model.weights.h5"] = hashlib.sha256(z.read("model.weights.h5")).hexdigest()
                    config = _without_object_ids(json.loads(z.read("config.json")))
                    out[f"{name}:config.json"] = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
            else:
                out[name] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def slurm_job_ids(output: str) -> set[str]:
    """SLURM job ids the plugin reports submitting ("... has been submitted with SLURM jobid 12 (log: ...)")."""
    return set(re.findall(r"SLURM jobid (\d+)", output))


def completed_in_slurm(job_ids: set[str]) -> dict[str, str]:
    """job id -> state, as SLURM records it: sacct where accounting runs, else the jobcomp/filetxt log."""
    res = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(sorted(job_ids))],
                         capture_output=True, text=True)
    if res.returncode == 0 and res.stdout.strip():
        return dict(line.split("|")[:2] for line in res.stdout.split())
    states = {}
    loc = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True).stdout
    match = re.search(r"^JobCompLoc\s*=\s*(\S+)", loc, re.M)
    if match and Path(match[1]).is_file():
        for line in Path(match[1]).read_text().splitlines():
            fields = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
            if fields.get("JobId") in job_ids:
                states[fields["JobId"]] = fields.get("JobState", "")
    return states


def test_slurm_profile_matches_local_run(tmp_path):
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    local = copy_project(tmp_path / "local")
    cluster = copy_project(tmp_path / "slurm")
    for work in (local, cluster):
        shutil.copy2(TINY, work / "tiny.yaml")
    snakemake = str(BIN / "snakemake")
    run([snakemake, "--cores", "2", "--resources", "gpu=1", "--configfile", "tiny.yaml"], local)
    out = run([snakemake, "--workflow-profile", PROFILE, "--configfile", "tiny.yaml",
               "--jobs", "4", "--max-threads", "2",          # the one node has 2 CPUs
               "--slurm-no-account",                         # no accounting database, so no accounts
               "--slurm-status-command", "squeue",           # sacct needs slurmdbd
               "--slurm-init-seconds-before-status-checks", "5", "--verbose",
               "--default-resources", "runtime=30", "mem_mb=2000"], cluster)

    # every job but the local target rule `all` went through sbatch, and SLURM saw each complete
    n_jobs = int(re.search(r"^total\s+(\d+)", out, re.M)[1])
    ids = slurm_job_ids(out)
    assert len(ids) == n_jobs - 1, out[-3000:]
    assert f"{n_jobs} of {n_jobs} steps (100%) done" in out
    states = completed_in_slurm(ids)
    assert set(states) == ids and set(states.values()) == {"COMPLETED"}, states
    # the GPU rules asked SLURM for a GPU (the plugin's sbatch line carries --gpus)
    assert re.search(r"sbatch call: .*--gpus=1", out) or "--gpus=1" in out, out[-3000:]

    expected, got = digests(local), digests(cluster)
    assert "results/metrics.json" in expected and any(p.endswith("manifest.json") for p in expected)
    assert any(p.endswith(".keras:model.weights.h5") for p in expected)
    assert got.keys() == expected.keys()
    differ = sorted(p for p in expected if expected[p] != got[p])
    assert not differ, f"outputs differ between the local and the SLURM run: {differ}"

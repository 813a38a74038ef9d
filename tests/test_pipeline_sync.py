"""dvc.yaml and the Snakefile describe the same steps: same outputs, same settings per step."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from gzmorph import config

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")


def snakemake_outputs() -> dict[str, str]:
    """output file -> rule, for every job of a forced dry run of the default and active-learning targets."""
    out = subprocess.run(
        [str(SNAKEMAKE), "all", "active_learning", "-n", "--forceall", "--summary", "--quiet"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout
    rows = [line.split("\t") for line in out.splitlines()]
    header = next(i for i, r in enumerate(rows) if r[0] == "output_file")
    return {r[0]: r[2] for r in rows[header + 1:] if len(r) > 2}


def snakemake_param_keys() -> dict[str, list[str]]:
    """rule -> the dotted settings keys it declares with P(...)."""
    keys: dict[str, list[str]] = {}
    for smk in sorted((ROOT / "workflow" / "rules").glob("*.smk")):
        for block in re.split(r"^rule ", smk.read_text(), flags=re.M)[1:]:
            name = block.split(":", 1)[0].strip()
            calls = re.findall(r"\bP\(([^)]*)\)", block)
            keys[name] = [k for call in calls for k in re.findall(r'"([^"]+)"', call)]
    return keys


def dvc_stages() -> list[tuple[str, str | None, list[str], list[str]]]:
    """(stage, foreach key, outs, params) as DVC resolves dvc.yaml."""
    from dvc.repo import Repo

    stages = []
    with Repo(str(ROOT)) as repo:
        for stage in repo.index.stages:
            base, _, key = stage.addressing.partition("@")
            params = [p for d in stage.deps if type(d).__name__ == "ParamsDependency" for p in d.params]
            stages.append((base, key or None, [str(o.def_path) for o in stage.outs], params))
    return stages


@pytest.fixture(scope="module")
def both():
    return snakemake_outputs(), snakemake_param_keys(), dvc_stages()


def test_same_outputs(both):
    smk_outputs, _, stages = both
    dvc_outputs = {o for _, _, outs, _ in stages for o in outs}
    assert dvc_outputs == set(smk_outputs), (
        f"only in dvc.yaml: {sorted(dvc_outputs - set(smk_outputs))}; "
        f"only in Snakefile: {sorted(set(smk_outputs) - dvc_outputs)}"
    )


def test_each_stage_is_the_rule_of_the_same_name(both):
    smk_outputs, _, stages = both
    for base, _, outs, _ in stages:
        assert {smk_outputs[o] for o in outs} == {base}, f"dvc stage {base} and Snakemake rules disagree"


def wildcard_question(key: str) -> str:
    """The question in a foreach key (``bar``) or a matrix key (``bar-bald-0``)."""
    params = config.load(ROOT / "params.yaml")
    questions = sorted({*params["train"]["questions"], *params["active_learning"]["questions"]}, key=len, reverse=True)
    return next((q for q in questions if key == q or key.startswith(q + "-")), key)


def test_same_settings_per_step(both):
    _, smk_keys, stages = both
    for base, key, _, dvc_params in stages:
        expected = sorted(k.replace("{survey}", key or "").replace("{question}", wildcard_question(key or ""))
                          for k in smk_keys[base])
        assert sorted(dvc_params) == expected, f"settings of {base}@{key}: dvc {dvc_params}, Snakefile {expected}"


def test_settings_keys_exist(both):
    _, smk_keys, _ = both
    params = config.load([ROOT / "params.yaml", ROOT / "params" / "real.yaml"])  # every section present

    def values(key: str, wildcard: str) -> list[str]:
        """What a wildcard ranges over in this key: its own section's names."""
        section = key.split(".", 1)[0]
        if wildcard == "{survey}":
            return list(params["real" if section == "real" else "simulate"]["surveys"])
        return list(params["active_learning" if section == "active_learning" else "train"]["questions"])

    for keys in smk_keys.values():
        for k in keys:
            wildcard = next((w for w in ("{survey}", "{question}") if w in k), None)
            for value in values(k, wildcard) if wildcard else [None]:
                config.select(params, [k.replace(wildcard, value) if wildcard else k])  # raises if missing


def test_every_rule_has_log_benchmark_threads_resources():
    for smk in sorted((ROOT / "workflow" / "rules").glob("*.smk")):
        for block in re.split(r"^rule ", smk.read_text(), flags=re.M)[1:]:
            name = block.split(":", 1)[0]
            for directive in ("log:", "benchmark:", "threads:", "resources:"):
                assert f"\n    {directive}" in block, f"rule {name} in {smk.name} lacks {directive}"


@pytest.mark.parametrize("extra", [[], ["--configfile", "params/real.yaml"]], ids=["simulated", "real"])
def test_snakemake_lint_is_clean(extra):
    res = subprocess.run([str(SNAKEMAKE), "--lint", *extra], cwd=ROOT, capture_output=True, text=True)
    assert "Congratulations" in res.stdout + res.stderr, res.stdout + res.stderr

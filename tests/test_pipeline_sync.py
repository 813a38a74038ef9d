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
    """output file -> rule, for every job of a forced dry run of the default, active-learning and curve targets."""
    out = subprocess.run(
        [str(SNAKEMAKE), "all", "active_learning", "finetune_curves", "-n", "--forceall", "--summary", "--quiet"],
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


def test_model_jobs_share_the_cores_without_a_gpu_and_queue_for_it_with_one():
    """`--cores 2`: without a GPU every model job gets one thread and no gpu resource, so two train side by side;
    with one, each asks for the GPU (`--resources gpu=1` serialises them) and gets every core."""
    import shutil

    out = subprocess.run([str(SNAKEMAKE), "-n", "--forceall", "--cores", "2", "--resources", "gpu=1"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    gpu = shutil.which("nvidia-smi") is not None and "GPU " in subprocess.run(
        ["nvidia-smi", "-L"], capture_output=True, text=True).stdout
    jobs = {m.group(1): m.group(2) for m in re.finditer(r"^(?:local)?rule (\w+):\n((?:    .*\n)+)", out, re.M)}
    for rule in ("train", "train_tree", "predict", "predict_tree", "finetune_ring"):
        assert ("gpu=1" if gpu else "gpu=0") in jobs[rule], (rule, jobs[rule])
        assert ("threads: 2" in jobs[rule]) == gpu, (rule, jobs[rule])
    assert "priority: 10" in jobs["train_tree"]


@pytest.mark.parametrize("extra", [[], ["--configfile", "params/real.yaml"]], ids=["simulated", "real"])
def test_snakemake_lint_is_clean(extra):
    res = subprocess.run([str(SNAKEMAKE), "--lint", *extra], cwd=ROOT, capture_output=True, text=True)
    assert "Congratulations" in res.stdout + res.stderr, res.stdout + res.stderr


# ---------------------------------------------------------------------------------------------- code dependencies

SRC = ROOT / "src" / "gzmorph"
# Loading/validating settings and atomic writes cannot change a result (settings are tracked as params).
NOT_RESULT_CODE = {"config.py", "io.py", "cli.py", "__init__.py"}


def gzmorph_imports(path: Path) -> set[Path]:
    """Source files of the gzmorph modules ``path`` imports (module-level or inside functions)."""
    import ast

    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("gzmorph"):
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)  # `from gzmorph import io`
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("gzmorph"))
    files = set()
    for name in names:
        stem = ROOT / "src" / name.replace(".", "/")
        if stem.with_suffix(".py").exists():
            files.add(stem.with_suffix(".py"))
        elif (stem / "__init__.py").exists():
            files.add(stem / "__init__.py")
    return files


def code_of(module: Path) -> set[str]:
    """Every gzmorph source file ``module`` runs: itself and what it imports, transitively (repo-relative)."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo.extend(gzmorph_imports(path))
    return {str(p.relative_to(ROOT)) for p in seen if p.name not in NOT_RESULT_CODE or p.parent.name == "sim"}


def stage_module(cmd: str) -> Path:
    """The module behind ``gzmorph <stage> ...`` (see gzmorph.cli.STAGES)."""
    from gzmorph.cli import STAGES

    stage = cmd.split()[1]
    assert cmd.split()[0] == "gzmorph" and stage in STAGES, f"not a gzmorph stage: {cmd}"
    return SRC / f"{stage.replace('-', '_')}.py"


def test_gzmorph_imports_sees_function_level_imports():
    found = {p.name for p in gzmorph_imports(SRC / "active_learning.py")}
    assert {"predict.py", "evaluate.py", "shards.py", "inputs.py"} <= found  # some are imported inside functions


def covered(path: str, deps: list[str]) -> bool:
    """A dependency covers itself and, when a folder, the files in it."""
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


def test_every_stage_lists_the_code_it_runs():
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        for stage in repo.index.stages:
            deps = [str(d.def_path) for d in stage.deps if type(d).__name__ != "ParamsDependency"]

            missing = sorted(p for p in code_of(stage_module(stage.cmd)) if not covered(p, deps))
            assert not missing, f"dvc stage {stage.addressing} runs {missing} but does not list it in deps"


def test_question_names_in_dvc_yaml_follow_params():
    """Where dvc.yaml must spell out questions (a list of files, plots), they are exactly the configured ones."""
    import yaml

    from gzmorph.tree import TREES

    params = config.load(ROOT / "params.yaml")
    questions, al_questions = set(params["train"]["questions"]), set(params["active_learning"]["questions"])
    text = (ROOT / "dvc.yaml").read_text()
    known = {q for tree in TREES.values() for q in tree.question_names}
    named = {q for q in known if re.search(rf"(?<![\w-]){re.escape(q)}(?![\w-])", text)}
    assert named <= questions | al_questions, f"dvc.yaml names questions not configured: {named - questions}"

    dvc = yaml.safe_load(text)
    metrics = dvc["stages"]["metrics"]
    assert {d for d in metrics["deps"] if d.startswith("results/evaluation/")} == {
        f"results/evaluation/{q}/metrics.json" for q in questions}
    assert all(f"results/evaluation/{q}/metrics.json" in metrics["cmd"] for q in questions)
    calibration = next(p["calibration"] for p in dvc["plots"] if "calibration" in p)
    assert set(calibration["y"]) == {f"results/calibration/{q}.csv" for q in questions}
    assert dvc["stages"]["active_learning_run"]["matrix"]["question"] == "${active_learning.questions}"
    summary = dvc["stages"]["active_learning"]
    assert {d for d in summary["deps"] if d.startswith("results/active_learning/")} == {
        f"results/active_learning/{q}" for q in al_questions}

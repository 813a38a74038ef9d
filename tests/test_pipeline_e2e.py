"""End-to-end: the default workflow on a tiny configuration, with Snakemake and with DVC."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from gzmorph import catalog, config

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY = ROOT / "tests" / "data" / "params_tiny.yaml"
PROJECT_FILES = ("Snakefile", "dvc.yaml", "params.yaml", "environment.yml", "workflow", "src", ".dvcignore")


def copy_project(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            shutil.copy2(src, dest / name)
    return dest


def run_json(cmd: list[str], cwd: Path):
    """A command's stdout parsed as JSON (warnings go to stderr)."""
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=True,
                         env={**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}"})
    return json.loads(res.stdout)


def run(cmd: list[str], cwd: Path) -> str:
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True,
                         env={**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}"})
    if res.returncode != 0:
        logs = "".join(f"--- {f}\n{f.read_text()[-2000:]}" for f in sorted((cwd / "logs").glob("*.log")))
        raise AssertionError(f"{' '.join(cmd)} failed:\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}\n{logs}")
    return res.stdout + res.stderr


def check_outputs(workdir: Path, params: dict) -> None:
    """Content checks on what the default target builds."""
    surveys = list(params["simulate"]["surveys"])
    for survey in surveys:
        df = catalog.load(workdir / f"data/catalogs/{survey}.parquet")
        assert len(df) > 10 and (df["survey"] == survey).all()
        for loc in df["file_loc"].head(3):
            magic = {"png": b"\x89PNG\r\n\x1a\n", "jpeg": b"\xff\xd8\xff"}[
                params["simulate"]["surveys"][survey]["image_format"]]
            assert (workdir / loc).read_bytes().startswith(magic)
        manifest = json.loads((workdir / f"data/shards/{survey}/manifest.json").read_text())
        quarantine = pd.read_parquet(workdir / f"data/shards/{survey}/quarantine.parquet")
        n_sharded = sum(s["n_galaxies"] for s in manifest["splits"].values())
        assert n_sharded + len(quarantine) == len(df)
        assert manifest["resolution"] == params["shards"]["resolution"]
        assert (workdir / f"results/simulate/{survey}_examples.png").stat().st_size > 10_000
    for question in params["train"]["questions"]:
        history = pd.read_csv(workdir / f"results/training/{question}/history.csv")
        assert len(history) >= 1 and {"loss", "val_loss"} <= set(history.columns)
        predictions = pd.read_parquet(workdir / f"results/predictions/{question}.parquet")
        assert list(predictions.columns) == ["id_str", "votes", "total_votes", "rho", "rho_point"]
        passes = params["predict"]["augmentations"] * params["predict"]["dropout_masks"]
        assert (predictions["rho"].map(len) == passes).all()
        calibration = pd.read_csv(workdir / f"results/calibration/{question}.csv")
        kinds = ("mc", "t1", "deterministic", "truth")
        assert list(calibration.columns) == ["epsilon"] + [f"{w}_{kind}" for kind in kinds
                                                           for w in ("expected", "actual", "coverage_error")]
        learnability = pd.read_csv(workdir / f"results/evaluation/{question}/learnability.csv")
        assert learnability["group"].iloc[0] == "all"
        assert {0.02, 0.05, 0.1, 0.2} <= set(calibration["epsilon"].round(4))
    if "tree" in params["train"]["models"]:  # the whole-tree model's posterior catalog: every galaxy, every answer
        from gzmorph.tree import get_tree
        from gzmorph.tree_catalog import load_concentrations

        survey = params["train"]["survey"]
        tree = get_tree(params["simulate"]["surveys"][survey]["tree"])
        ids, alpha = load_concentrations(workdir / f"results/posteriors/{survey}.parquet", tree)
        manifest = json.loads((workdir / f"data/shards/{survey}/manifest.json").read_text())
        assert len(ids) == manifest["n_galaxies"] and len(set(ids)) == len(ids)
        passes = params["predict"]["augmentations"] * params["predict"]["dropout_masks"]
        assert alpha.shape[1:] == (passes, tree.n_answers()) and (alpha >= 1).all()
        assert not (workdir / f"results/posteriors/{survey}.parquet.chunks").exists()
        evaluation = workdir / f"results/evaluation/tree/{survey}"
        tree_metrics = json.loads((evaluation / "metrics.json").read_text())
        assert tree_metrics["split"] == "test"
        assert tree_metrics["n_galaxies"] == manifest["splits"]["test"]["n_galaxies"]
        assert set(tree_metrics["questions"]) == set(tree.question_names)
        smooth = tree_metrics["questions"]["smooth-or-featured"]
        assert smooth["n_galaxies"] > 0 and 0 < smooth["rmse_vs_vote_fraction"]["mc"] < 0.5
        assert {"mc", "t1", "deterministic", "truth"} == set(smooth["coverage_error"])
        per_question = pd.read_csv(evaluation / "per_question.csv")
        assert list(per_question["question"]) == list(tree.question_names)
        assert {p.stem for p in (evaluation / "galleries").glob("*.png")} == set(tree.question_names)
    metrics = json.loads((workdir / "results/metrics.json").read_text())
    assert set(metrics) == set(params["train"]["questions"])
    stats = json.loads((workdir / "results/crossmatch/stats.json").read_text())
    assert stats["matched"] > 0
    assert stats["separation_arcsec"]["max"] <= params["crossmatch"]["radius_arcsec"]
    matched = pd.read_parquet(workdir / "data/crossmatch/matched.parquet")
    assert len(matched) == stats["matched"]
    ring = json.loads((workdir / "results/finetune/ring_metrics.json").read_text())
    assert ring["head"] == "binary" and ring["held_out"]["n"] >= 2 and 0 <= ring["held_out"]["accuracy"] <= 1
    cross = pd.read_csv(workdir / "results/finetune/cross_survey.csv")
    assert cross["question"].tolist() == list(params["train"]["questions"])


def test_snakemake_end_to_end(tmp_path):
    work = copy_project(tmp_path)
    shutil.copy2(TINY, work / "tiny.yaml")
    args = [str(BIN / "snakemake"), "--cores", "2", "--resources", "gpu=1", "--configfile", "tiny.yaml"]
    out = run(args, work)
    assert "Finished job" in out or "steps (100%) done" in out
    check_outputs(work, config.load([work / "params.yaml", work / "tiny.yaml"]))
    # a second run has nothing to do
    again = run([*args, "-n"], work)
    assert "Nothing to be done" in again


def sha256_tree(root: Path, subdirs: list[str]) -> dict[str, str]:
    digests = {}
    for sub in subdirs:
        for f in sorted((root / sub).rglob("*")):
            if f.is_file() and f.name != ".gitignore":
                digests[str(f.relative_to(root))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return digests


def stages_run(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


def set_param(path: Path, dotted: str, value) -> None:
    params = yaml.safe_load(path.read_text())
    node = params
    *parents, last = dotted.split(".")
    for p in parents:
        node = node[p]
    node[last] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


FINETUNE = {"finetune_ring_labels", "finetune_ring", "finetune_vote_labels", "finetune_transfer",
            "finetune_cross_survey", "finetune_ring_curve", "finetune_transfer_curve"}
ON_MODELS = {"finetune_ring", "finetune_transfer", "finetune_ring_curve", "finetune_transfer_curve",
             "finetune_cross_survey"}  # fine-tunes of the tree model, and the cross-survey of the binomial ones


def but_finetune(ran: set[str], may: set[str]) -> set[str]:
    """The stages run but the fine-tuning ones, which must be among ``may``: they rerun when a model they read
    comes out different (retraining on the same galaxies need not change its bytes)."""
    assert ran & FINETUNE <= may, f"fine-tuning stages run without cause: {sorted(ran & FINETUNE - may)}"
    return ran - FINETUNE


def test_dvc_repro_reruns_only_dependents_and_push_pull_restores(tmp_path):
    work = copy_project(tmp_path / "repo")
    merged = config.load([ROOT / "params.yaml", TINY])
    (work / "params.yaml").write_text(yaml.safe_dump(merged, sort_keys=False))
    dvc = str(BIN / "dvc")
    run(["git", "init", "-q"], work)
    run([dvc, "init", "-q"], work)
    run([dvc, "config", "core.analytics", "false"], work)

    first = run([dvc, "repro"], work)
    surveys = list(merged["simulate"]["surveys"])
    assert {"simulate_sky", "crossmatch"} | {f"shards@{s}" for s in surveys} <= stages_run(first)
    check_outputs(work, merged)

    questions = list(merged["train"]["questions"])
    trained = {f"{stage}@{q}" for stage in ("train", "predict", "evaluate") for q in questions} | {
        "metrics", "train_tree", "predict_tree", "evaluate_tree"}
    al = merged["active_learning"]
    al_runs = {f"active_learning_run@{q}-{s}-{seed}" for q in al["questions"] for s in al["strategies"]
               for seed in al["seeds"]}
    assert al_runs | {"active_learning"} | FINETUNE <= stages_run(first)
    set_param(work / "params.yaml", "shards.shard_size", 5)
    assert but_finetune(stages_run(run([dvc, "repro"], work)), ON_MODELS) == {
        f"shards@{s}" for s in surveys} | trained | al_runs | {"active_learning"}
    manifest = json.loads((work / f"data/shards/{surveys[0]}/manifest.json").read_text())
    assert manifest["shard_size"] == 5

    set_param(work / "params.yaml", "crossmatch.radius_arcsec", 0.5)
    assert but_finetune(stages_run(run([dvc, "repro"], work)), {"finetune_cross_survey"}) == {"crossmatch"}

    set_param(work / "params.yaml", "train.questions.bar.crop_zoom", [1.6, 1.8])
    bar_al = {r for r in al_runs if r.startswith("active_learning_run@bar-")}  # none unless AL simulates bar
    assert but_finetune(stages_run(run([dvc, "repro"], work)), {"finetune_cross_survey"}) == {
        "train@bar", "predict@bar", "evaluate@bar", "metrics"} | bar_al | ({"active_learning"} if bar_al else set())
    set_param(work / "params.yaml", "predict.augmentations", 1)
    assert but_finetune(stages_run(run([dvc, "repro"], work)), set()) == {
        f"{s}@{q}" for s in ("predict", "evaluate") for q in questions} | {"metrics", "predict_tree", "evaluate_tree"}
    shown = run_json([dvc, "metrics", "show", "--json"], work)
    assert set(next(iter(shown.values()))["data"]["results/metrics.json"]["data"]) == set(questions)
    plots = run_json([dvc, "plots", "show", "--json"], work)["data"]
    assert set(plots) == {"calibration"} | {f"results/evaluation/{q}/confusion.csv" for q in questions}
    assert "Data and pipelines are up to date" in run([dvc, "status"], work)

    # push to a local remote, wipe the workspace and cache, pull: identical files
    before = sha256_tree(work, ["data", "results"])
    run([dvc, "remote", "add", "-d", "local", str(tmp_path / "remote")], work)
    run([dvc, "push"], work)
    for sub in ("data", "results", ".dvc/cache"):
        shutil.rmtree(work / sub)
    run([dvc, "pull"], work)
    assert sha256_tree(work, ["data", "results"]) == before

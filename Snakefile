# gzmorph: Galaxy Zoo votes -> calibrated probabilistic morphology.
# Run:  snakemake --cores 8 --resources gpu=1     (dry run: -n; rule graph: --rulegraph)
# All settings live in params.yaml (or files given with --configfile), validated on load.

import os
import re

from gzmorph.config import ConfigError, active_surveys, validate, write_resolved

from snakemake.utils import min_version

min_version("9.0")


configfile: "params.yaml"


report: "workflow/report/workflow.rst"


try:
    validate(config, source=", ".join(map(str, workflow.configfiles)) or "config")
except ConfigError as exc:
    raise WorkflowError(f"invalid configuration:\n{exc}") from None

# The stage CLIs merge the same settings Snakemake did, in its order of precedence: params.yaml, then
# --configfile files, then --config overrides (saved to a content-addressed file). Rules also name the
# settings they depend on in `params` (see P in common.smk), so a change reruns only what depends on it.
PARAMS_FILES = ["params.yaml"] + [
    os.path.relpath(f) for f in workflow.configfiles if os.path.relpath(f) != "params.yaml"
]
if workflow.config_settings.config:
    PARAMS_FILES.append(str(write_resolved(dict(workflow.config_settings.config), ".snakemake/gzmorph")))
PARAMS_ARGS = " ".join(f"--params {f}" for f in PARAMS_FILES)
SOURCE = config["data_source"]  # simulated (default, no network) or real
SURVEYS = list(active_surveys(config))
QUESTIONS = list(config["train"]["questions"])
AL_QUESTIONS = list(config["active_learning"]["questions"])
MODELS = config["train"]["models"]  # binomial (per question) and/or tree (the whole-tree model)
TRAIN_SURVEY = config["train"]["survey"]


# A question is one of the configured ones: data/models/{question}.keras must not match data/models/tree/<survey>.
wildcard_constraints:
    question="|".join(re.escape(q) for q in dict.fromkeys(QUESTIONS + AL_QUESTIONS)),


include: "workflow/rules/common.smk"
if SOURCE == "simulated":

    include: "workflow/rules/simulate.smk"

else:

    include: "workflow/rules/fetch.smk"

include: "workflow/rules/crossmatch.smk"
include: "workflow/rules/shards.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/predict.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/active_learning.smk"
include: "workflow/rules/finetune.smk"


rule all:
    default_target: True
    input:
        expand("data/shards/{survey}", survey=SURVEYS),
        expand("results/simulate/{survey}_examples.png", survey=SURVEYS if SOURCE == "simulated" else []),
        expand("results/fetch/{survey}.json", survey=SURVEYS if SOURCE == "real" else []),
        "results/crossmatch/stats.json",
        "results/crossmatch/sky.png",
        expand("results/predictions/{question}.parquet", question=QUESTIONS if "binomial" in MODELS else []),
        expand("results/calibration/{question}.csv", question=QUESTIONS if "binomial" in MODELS else []),
        ["results/metrics.json"] if "binomial" in MODELS else [],
        [f"results/posteriors/{TRAIN_SURVEY}.parquet"] if "tree" in MODELS else [],
        [f"results/evaluation/tree/{TRAIN_SURVEY}/metrics.json"] if "tree" in MODELS else [],
        ["results/finetune/ring_metrics.json"] if SOURCE == "simulated" else [],
        ["results/finetune/cross_survey.csv"] if "binomial" in MODELS else [],


# Fine-tuned against from scratch over finetune.curve.sizes labels, and the one survey-to-survey fine-tune
# (README "Fine-tuning"); not in the default target, which keeps the ring fine-tune and the cross-survey table.
rule finetune_curves:
    input:
        ["results/finetune/ring_curve.png"] if SOURCE == "simulated" else [],
        "results/finetune/transfer_curve.png",
        "results/finetune/transfer_metrics.json",

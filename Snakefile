# gzmorph: Galaxy Zoo votes -> calibrated probabilistic morphology.
# Run:  snakemake --cores 8 --resources gpu=1     (dry run: -n; rule graph: --rulegraph)
# All settings live in params.yaml (or files given with --configfile), validated on load.

from gzmorph.config import ConfigError, validate

from snakemake.utils import min_version

min_version("9.0")


configfile: "params.yaml"


try:
    validate(config, source=", ".join(workflow.configfiles) or "config")
except ConfigError as exc:
    raise WorkflowError(f"invalid configuration:\n{exc}") from None

# The CLI re-reads the same files Snakemake merged, in the same order.
PARAMS_ARGS = " ".join(f"--params {f}" for f in (workflow.configfiles or ["params.yaml"]))
SURVEYS = list(config["simulate"]["surveys"])
QUESTIONS = list(config["train"]["questions"])


include: "workflow/rules/common.smk"
include: "workflow/rules/simulate.smk"
include: "workflow/rules/crossmatch.smk"
include: "workflow/rules/shards.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/predict.smk"


rule all:
    default_target: True
    input:
        expand("data/shards/{survey}", survey=SURVEYS),
        expand("results/simulate/{survey}_examples.png", survey=SURVEYS),
        "results/crossmatch/stats.json",
        "results/crossmatch/sky.png",
        expand("results/predictions/{question}.parquet", question=QUESTIONS),

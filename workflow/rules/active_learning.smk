# Active learning (paper section 3.5): BALD against random acquisition, one job per question, strategy and
# seed, so repeats run in parallel here or on a cluster. Not part of the default target:
#   snakemake --cores 2 active_learning


wildcard_constraints:
    strategy="|".join(config["active_learning"]["strategies"]),
    seed=r"\d+",


rule active_learning_run:
    input:
        shards=f"data/shards/{config['train']['survey']}",
    output:
        runs="results/active_learning/{question}/{strategy}_{seed}.csv",
        acquired="results/active_learning/{question}/{strategy}_{seed}_acquired.parquet",
    params:
        settings=P("seed", "train.survey", "train.questions.{question}", "train.input_size", "train.learning_rate",
                   "train.schedule", "train.min_learning_rate", "train.dropout_rate", "train.mixed_precision",
                   "active_learning.augmentations", "active_learning.dropout_masks", "active_learning.val_galaxies",
                   "active_learning.expected_votes", "active_learning.max_epochs",
                   "active_learning.patience", "active_learning.min_epochs", "active_learning.warmup_epochs",
                   "active_learning.plateau_patience", "active_learning.min_steps_per_epoch",
                   "active_learning.batch_size", "active_learning.warm_start", "active_learning.questions.{question}"),
        args=PARAMS_ARGS,
    log:
        "logs/active_learning_{question}_{strategy}_{seed}.log",
    benchmark:
        "benchmarks/active_learning_{question}_{strategy}_{seed}.tsv"
    threads: 1
    resources:
        mem_mb=3000,
        gpu=MODEL_GPU,
    conda:
        "../../environment.yml"
    shell:
        "gzmorph active-learning run {params.args} --question {wildcards.question} --strategy {wildcards.strategy}"
        " --seed {wildcards.seed} --shards {input.shards} --out {output.runs} --acquired {output.acquired}"
        " --threads {threads} > {log} 2>&1"


rule active_learning:
    input:
        shards=f"data/shards/{config['train']['survey']}",
        runs=expand(
            "results/active_learning/{question}/{strategy}_{seed}.csv",
            question=AL_QUESTIONS, strategy=config["active_learning"]["strategies"],
            seed=config["active_learning"]["seeds"],
        ),
        acquired=expand(
            "results/active_learning/{question}/{strategy}_{seed}_acquired.parquet",
            question=AL_QUESTIONS, strategy=config["active_learning"]["strategies"],
            seed=config["active_learning"]["seeds"],
        ),
    output:
        summary="results/active_learning/summary.csv",
        figures=directory("results/active_learning/figures"),
    params:
        args=PARAMS_ARGS,
    log:
        "logs/active_learning_summary.log",
    benchmark:
        "benchmarks/active_learning_summary.tsv"
    threads: 1
    resources:
        mem_mb=3000,
    conda:
        "../../environment.yml"
    shell:
        "gzmorph active-learning summarize {params.args} --runs {input.runs} --acquired {input.acquired}"
        " --shards {input.shards} --summary {output.summary} --figures {output.figures} > {log} 2>&1"

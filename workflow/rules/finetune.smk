# Fine-tuning on new labels (issue 13): a trained model's trunk, a fresh head. The simulated ring task (expert
# labels from the truth, simulated data only), the other survey's votes on the train survey's model, and the
# train survey's models predicting the other survey's cross-matched galaxies. The learning curves (fine-tuned vs from
# scratch against the number of labels) and the transfer fine-tune are not in the default target:
#   snakemake --cores 2 finetune_curves

FT_BASE = (f"data/models/tree/{TRAIN_SURVEY}.keras" if config["finetune"]["base"] == "tree"
           else f"data/models/{config['finetune']['base_question']}.keras")
FT_OTHER = next(s for s in (config["crossmatch"]["left"], config["crossmatch"]["right"]) if s != TRAIN_SURVEY)
FT_VOTES = "--id-column id_str --image-column file_loc --label-column k --total-column total"


rule finetune_ring_labels:
    input:
        catalog=f"data/catalogs/{TRAIN_SURVEY}.parquet",
    output:
        "data/finetune/ring_labels.csv",
    params:
        settings=P("seed", "train.survey", "shards.split", "simulate.surveys", "finetune.ring"),
        survey=TRAIN_SURVEY,
        args=PARAMS_ARGS,
    log:
        "logs/finetune_ring_labels.log",
    benchmark:
        "benchmarks/finetune_ring_labels.tsv"
    threads: 1
    resources:
        mem_mb=1000,
    conda:
        "../../environment.yml"
    shell:
        "gzmorph finetune ring-labels {params.args} --catalog {input.catalog} --survey {params.survey}"
        " --out {output} > {log} 2>&1"


rule finetune_ring:
    input:
        base=FT_BASE,
        labels="data/finetune/ring_labels.csv",
    output:
        model="data/models/finetune/ring.keras",
        metrics="results/finetune/ring_metrics.json",
        predictions="results/finetune/ring_predictions.parquet",
    params:
        settings=P("seed", "finetune.base", "finetune.base_question", "finetune.head_epochs",
                   "finetune.unfreeze_epochs", "finetune.unfreeze_layers", "finetune.learning_rate",
                   "finetune.unfreeze_learning_rate", "finetune.min_epochs", "finetune.patience",
                   "finetune.batch_size", "finetune.min_steps_per_epoch", "finetune.val_fraction", "finetune.passes"),
        args=PARAMS_ARGS,
    log:
        "logs/finetune_ring.log",
    benchmark:
        "benchmarks/finetune_ring.tsv"
    threads: MODEL_THREADS
    resources:
        mem_mb=3000,
        gpu=MODEL_GPU,
    conda:
        "../../environment.yml"
    shell:
        "gzmorph finetune fit {params.args} --base {input.base} --labels {input.labels} --model {output.model}"
        " --metrics {output.metrics} --predictions {output.predictions} --threads {threads} > {log} 2>&1"


rule finetune_vote_labels:
    input:
        catalog=f"data/catalogs/{FT_OTHER}.parquet",
    output:
        "data/finetune/transfer_labels.csv",
    params:
        settings=P("seed", "shards.split", "finetune.transfer"),
        args=PARAMS_ARGS,
    log:
        "logs/finetune_vote_labels.log",
    benchmark:
        "benchmarks/finetune_vote_labels.tsv"
    threads: 1
    resources:
        mem_mb=1000,
    conda:
        "../../environment.yml"
    shell:
        "gzmorph finetune vote-labels {params.args} --catalog {input.catalog} --out {output} > {log} 2>&1"


rule finetune_transfer:
    input:
        base=FT_BASE,
        labels="data/finetune/transfer_labels.csv",
    output:
        model="data/models/finetune/transfer.keras",
        metrics="results/finetune/transfer_metrics.json",
    params:
        settings=P("seed", "finetune.base", "finetune.base_question", "finetune.head_epochs",
                   "finetune.unfreeze_epochs", "finetune.unfreeze_layers", "finetune.learning_rate",
                   "finetune.unfreeze_learning_rate", "finetune.min_epochs", "finetune.patience",
                   "finetune.batch_size", "finetune.min_steps_per_epoch", "finetune.val_fraction", "finetune.passes"),
        columns=FT_VOTES,
        args=PARAMS_ARGS,
    log:
        "logs/finetune_transfer.log",
    benchmark:
        "benchmarks/finetune_transfer.tsv"
    threads: MODEL_THREADS
    resources:
        mem_mb=3000,
        gpu=MODEL_GPU,
    conda:
        "../../environment.yml"
    shell:
        "gzmorph finetune fit {params.args} --base {input.base} --labels {input.labels} {params.columns}"
        " --model {output.model} --metrics {output.metrics} --threads {threads} > {log} 2>&1"


rule finetune_cross_survey:
    input:
        matched="data/crossmatch/matched.parquet",
        models=expand("data/models/{question}.keras", question=QUESTIONS),
    output:
        table="results/finetune/cross_survey.csv",
        figure="results/finetune/cross_survey.png",
    params:
        settings=P("seed", "train.survey", "train.questions", "shards.split", "crossmatch.left", "crossmatch.right",
                   "finetune.passes"),
        args=PARAMS_ARGS,
    log:
        "logs/finetune_cross_survey.log",
    benchmark:
        "benchmarks/finetune_cross_survey.tsv"
    threads: MODEL_THREADS
    resources:
        mem_mb=4000,
        gpu=MODEL_GPU,
    conda:
        "../../environment.yml"
    shell:
        "gzmorph finetune cross-survey {params.args} --matched {input.matched} --model-dir data/models"
        " --out {output.table} --figure {output.figure} --threads {threads} > {log} 2>&1"


rule finetune_ring_curve:
    input:
        base=FT_BASE,
        labels="data/finetune/ring_labels.csv",
    output:
        table="results/finetune/ring_curve.csv",
        figure="results/finetune/ring_curve.png",
    params:
        settings=P("seed", "finetune.base", "finetune.base_question", "finetune.head_epochs",
                   "finetune.unfreeze_epochs", "finetune.unfreeze_layers", "finetune.learning_rate",
                   "finetune.unfreeze_learning_rate", "finetune.min_epochs", "finetune.patience",
                   "finetune.batch_size", "finetune.min_steps_per_epoch", "finetune.val_fraction", "finetune.curve"),
        title=f"simulated rings ({TRAIN_SURVEY})",
        args=PARAMS_ARGS,
    log:
        "logs/finetune_ring_curve.log",
    benchmark:
        "benchmarks/finetune_ring_curve.tsv"
    threads: MODEL_THREADS
    resources:
        mem_mb=3000,
        gpu=MODEL_GPU,
    conda:
        "../../environment.yml"
    shell:
        "gzmorph finetune curve {params.args} --base {input.base} --labels {input.labels}"
        " --out {output.table} --figure {output.figure} --title '{params.title}'"
        " --threads {threads} > {log} 2>&1"


rule finetune_transfer_curve:
    input:
        base=FT_BASE,
        labels="data/finetune/transfer_labels.csv",
    output:
        table="results/finetune/transfer_curve.csv",
        figure="results/finetune/transfer_curve.png",
    params:
        settings=P("seed", "finetune.base", "finetune.base_question", "finetune.head_epochs",
                   "finetune.unfreeze_epochs", "finetune.unfreeze_layers", "finetune.learning_rate",
                   "finetune.unfreeze_learning_rate", "finetune.min_epochs", "finetune.patience",
                   "finetune.batch_size", "finetune.min_steps_per_epoch", "finetune.val_fraction", "finetune.curve"),
        columns=FT_VOTES,
        title=f"{TRAIN_SURVEY} model on {FT_OTHER} votes vs {FT_OTHER} from scratch",
        args=PARAMS_ARGS,
    log:
        "logs/finetune_transfer_curve.log",
    benchmark:
        "benchmarks/finetune_transfer_curve.tsv"
    threads: MODEL_THREADS
    resources:
        mem_mb=3000,
        gpu=MODEL_GPU,
    conda:
        "../../environment.yml"
    shell:
        "gzmorph finetune curve {params.args} --base {input.base} --labels {input.labels} {params.columns}"
        " --out {output.table} --figure {output.figure}"
        " --title '{params.title}' --threads {threads} > {log} 2>&1"

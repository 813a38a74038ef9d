# Bayesian CNN per question: binomial likelihood of vote counts, learning-rate schedule, early stopping on
# validation loss from train.min_epochs on.


rule train:
    input:
        shards=f"data/shards/{config['train']['survey']}",
    output:
        model="data/models/{question}.keras",
        history="results/training/{question}/history.csv",
        figure="results/training/{question}/loss.png",
    params:
        settings=P("seed", "train.survey", "train.questions.{question}", "train.input_size", "train.batch_size",
                   "train.max_epochs", "train.min_epochs", "train.patience", "train.learning_rate", "train.schedule",
                   "train.warmup_epochs", "train.min_learning_rate", "train.plateau_patience", "train.dropout_rate",
                   "train.val_loss_smoothing", "train.mixed_precision", "train.cache_mb", "train.distribute"),
        args=PARAMS_ARGS,
    log:
        "logs/train_{question}.log",
    benchmark:
        "benchmarks/train_{question}.tsv"
    threads: MODEL_THREADS
    resources:
        mem_mb=6000,
        gpu=MODEL_GPU,
    conda:
        "../../environment.yml"
    shell:
        "gzmorph train {params.args} --question {wildcards.question} --shards {input.shards}"
        " --model {output.model} --history {output.history} --figure {output.figure}"
        " --threads {threads} > {log} 2>&1"


# The whole-tree model (Walmsley et al. 2021): one network, Dirichlet concentrations for every answer of
# train.survey's decision tree, Dirichlet-multinomial loss summed over questions (train.models: tree).
rule train_tree:
    input:
        shards=f"data/shards/{config['train']['survey']}",
    output:
        model=f"data/models/tree/{config['train']['survey']}.keras",
        history=f"results/training/tree/{config['train']['survey']}/history.csv",
        figure=f"results/training/tree/{config['train']['survey']}/loss.png",
    params:
        settings=P("seed", "train.survey", "train.tree", "train.input_size", "train.batch_size", "train.max_epochs",
                   "train.min_epochs", "train.patience", "train.learning_rate", "train.schedule",
                   "train.warmup_epochs", "train.min_learning_rate", "train.plateau_patience", "train.dropout_rate",
                   "train.val_loss_smoothing", "train.mixed_precision", "train.cache_mb", "train.distribute"),
        args=PARAMS_ARGS,
    log:
        "logs/train_tree.log",
    priority: 10  # the longest chain (training, posterior catalog, evaluation, fine-tuning) starts first
    benchmark:
        "benchmarks/train_tree.tsv"
    threads: MODEL_THREADS
    resources:
        mem_mb=6000,
        gpu=MODEL_GPU,
    conda:
        "../../environment.yml"
    shell:
        "gzmorph train {params.args} --tree --shards {input.shards}"
        " --model {output.model} --history {output.history} --figure {output.figure}"
        " --threads {threads} > {log} 2>&1"

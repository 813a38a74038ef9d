# MC-dropout posteriors on the test split: T stochastic passes plus one deterministic pass.


rule predict:
    input:
        shards=f"data/shards/{config['train']['survey']}",
        model="data/models/{question}.keras",
    output:
        "results/predictions/{question}.parquet",
    params:
        settings=P("seed", "train.questions.{question}", "predict"),
        args=PARAMS_ARGS,
    log:
        "logs/predict_{question}.log",
    benchmark:
        "benchmarks/predict_{question}.tsv"
    threads: MODEL_THREADS
    resources:
        mem_mb=4000,
        gpu=MODEL_GPU,
    conda:
        "../../environment.yml"
    shell:
        "gzmorph predict {params.args} --question {wildcards.question} --shards {input.shards}"
        " --model {input.model} --out {output} --threads {threads} > {log} 2>&1"


# The whole-tree model's posterior catalog of every galaxy of predict.catalog_split, in the layout of the
# GZ DECaLS automated catalog (README, "Posterior catalog").  Finished chunks are kept in
# results/posteriors/<survey>.parquet.chunks/ so a rerun resumes.  The tree evaluation (issue 12 part B)
# reads this file (gzmorph.tree_catalog.load_concentrations).
rule predict_tree:
    input:
        shards=f"data/shards/{config['train']['survey']}",
        catalog=f"data/catalogs/{config['train']['survey']}.parquet",
        model=f"data/models/tree/{config['train']['survey']}.keras",
    output:
        f"results/posteriors/{config['train']['survey']}.parquet",
    params:
        settings=P("seed", "train.survey", "predict"),
        args=PARAMS_ARGS,
    log:
        "logs/predict_tree.log",
    benchmark:
        "benchmarks/predict_tree.tsv"
    threads: MODEL_THREADS
    resources:
        mem_mb=4000,
        gpu=MODEL_GPU,
    conda:
        "../../environment.yml"
    shell:
        "gzmorph predict {params.args} --tree --shards {input.shards} --catalog {input.catalog}"
        " --model {input.model} --out {output} --threads {threads} > {log} 2>&1"

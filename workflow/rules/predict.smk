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
    threads: ALL_CORES
    resources:
        mem_mb=4000,
        gpu=1,
    conda:
        "../../environment.yml"
    shell:
        "gzmorph predict {params.args} --question {wildcards.question} --shards {input.shards}"
        " --model {input.model} --out {output} --threads {threads} > {log} 2>&1"

# 7:2:1 split and TFRecord shards per survey, ready for training.


rule shards:
    input:
        catalog="data/catalogs/{survey}.parquet",
        # simulated images are one directory; real ones are implied by the gathered catalog
        images=lambda wc: f"data/simulated/{wc.survey}/images" if SOURCE == "simulated" else [],
    output:
        shards=directory("data/shards/{survey}"),
    params:
        settings=P("seed", "shards"),
        args=PARAMS_ARGS,
    log:
        "logs/shards_{survey}.log",
    benchmark:
        "benchmarks/shards_{survey}.tsv"
    threads: ALL_CORES
    resources:
        mem_mb=4000,
    conda:
        "../../environment.yml"
    shell:
        "gzmorph shards {params.args} --catalog {input.catalog} --out {output.shards}"
        " --threads {threads} > {log} 2>&1"

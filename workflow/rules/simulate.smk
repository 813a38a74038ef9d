# Simulated surveys with known truth: one sky, then each survey's images and votes.


rule simulate_sky:
    output:
        "data/simulated/sky.parquet",
    params:
        settings=P("seed", "simulate.n_galaxies", "simulate.sky"),
        args=PARAMS_ARGS,
    log:
        "logs/simulate_sky.log",
    benchmark:
        "benchmarks/simulate_sky.tsv"
    threads: 1
    resources:
        mem_mb=2000,
    conda:
        "../../environment.yml"
    shell:
        "gzmorph simulate sky {params.args} --out {output} > {log} 2>&1"


rule simulate_survey:
    input:
        sky="data/simulated/sky.parquet",
    output:
        images=directory("data/simulated/{survey}/images"),
        catalog="data/catalogs/{survey}.parquet",
    params:
        settings=P("seed", "simulate.surveys.{survey}", "simulate.volunteers", "simulate.image_size"),
        args=PARAMS_ARGS,
    log:
        "logs/simulate_survey_{survey}.log",
    benchmark:
        "benchmarks/simulate_survey_{survey}.tsv"
    threads: ALL_CORES
    resources:
        mem_mb=4000,
    conda:
        "../../environment.yml"
    shell:
        "gzmorph simulate survey {params.args} --survey {wildcards.survey} --sky {input.sky}"
        " --images {output.images} --catalog {output.catalog} --threads {threads} > {log} 2>&1"


rule simulate_figure:
    input:
        catalog="data/catalogs/{survey}.parquet",
        images="data/simulated/{survey}/images",
    output:
        "results/simulate/{survey}_examples.png",
    log:
        "logs/simulate_figure_{survey}.log",
    benchmark:
        "benchmarks/simulate_figure_{survey}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
    conda:
        "../../environment.yml"
    shell:
        "gzmorph simulate figure --catalog {input.catalog} --out {output} > {log} 2>&1"

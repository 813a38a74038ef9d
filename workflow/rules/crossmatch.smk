# One-to-one sky match between the two surveys.


rule crossmatch:
    input:
        left=f"data/catalogs/{config['crossmatch']['left']}.parquet",
        right=f"data/catalogs/{config['crossmatch']['right']}.parquet",
    output:
        matched="data/crossmatch/matched.parquet",
        stats="results/crossmatch/stats.json",
        figure="results/crossmatch/sky.png",
    params:
        settings=P("crossmatch"),
        args=PARAMS_ARGS,
    log:
        "logs/crossmatch.log",
    benchmark:
        "benchmarks/crossmatch.tsv"
    threads: 1
    resources:
        mem_mb=2000,
    conda:
        "../../environment.yml"
    shell:
        "gzmorph crossmatch {params.args} --left {input.left} --right {input.right}"
        " --out {output.matched} --stats {output.stats} --figure {output.figure} > {log} 2>&1"

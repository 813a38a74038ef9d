# Real Galaxy Zoo data (data_source: real): vote catalogs, then images in parallel chunks.
# Images are kept in data/real/<survey>/images/<chunk>/ outside any rule's outputs, so a failed or
# interrupted chunk keeps what it fetched and its re-run fetches only the rest.

CHUNKS = range(config["real"]["chunks"]) if SOURCE == "real" else []


rule fetch_catalog:
    output:
        catalog="data/real/{survey}/catalog.parquet",
        report="results/fetch/{survey}_catalog.json",
    params:
        settings=P("real.surveys.{survey}", "real.chunks", "real.max_galaxies", "real.services"),
        args=PARAMS_ARGS,
    log:
        "logs/fetch_catalog_{survey}.log",
    benchmark:
        "benchmarks/fetch_catalog_{survey}.tsv"
    threads: 1
    resources:
        mem_mb=8000,
    conda:
        "../../environment.yml"
    shell:
        "gzmorph fetch catalog {params.args} --survey {wildcards.survey} --out {output.catalog}"
        " --report {output.report} > {log} 2>&1"


rule fetch_archives:
    output:
        "data/real/{survey}/archives.json",
    params:
        settings=P("real.surveys.{survey}", "real.services.zenodo"),
        args=PARAMS_ARGS,
    log:
        "logs/fetch_archives_{survey}.log",
    benchmark:
        "benchmarks/fetch_archives_{survey}.tsv"
    threads: 1
    resources:
        mem_mb=1000,
    conda:
        "../../environment.yml"
    shell:
        "gzmorph fetch archives {params.args} --survey {wildcards.survey} --out {output} > {log} 2>&1"


rule fetch_images:
    input:
        catalog="data/real/{survey}/catalog.parquet",
        archives=archives_manifest,
    output:
        chunk="data/real/{survey}/chunks/{chunk}.parquet",
        quarantine="data/real/{survey}/chunks/{chunk}_quarantine.parquet",
        report="results/fetch/{survey}/chunk_{chunk}.json",
    params:
        settings=P("real.surveys.{survey}", "real.services", "real.http", "real.threads_per_chunk"),
        args=PARAMS_ARGS,
        archives=lambda wildcards, input: f"--archives {input.archives}" if input.archives else "",
    log:
        "logs/fetch_images_{survey}_{chunk}.log",
    benchmark:
        "benchmarks/fetch_images_{survey}_{chunk}.tsv"
    threads: 1
    resources:
        mem_mb=1000,
    conda:
        "../../environment.yml"
    shell:
        "gzmorph fetch images {params.args} --survey {wildcards.survey} --catalog {input.catalog}"
        " --chunk {wildcards.chunk} {params.archives} --out {output.chunk} --quarantine {output.quarantine}"
        " --report {output.report} > {log} 2>&1"


rule fetch_gather:
    input:
        chunks=expand("data/real/{{survey}}/chunks/{chunk}.parquet", chunk=CHUNKS),
        quarantines=expand("data/real/{{survey}}/chunks/{chunk}_quarantine.parquet", chunk=CHUNKS),
        reports=expand("results/fetch/{{survey}}/chunk_{chunk}.json", chunk=CHUNKS),
    output:
        catalog="data/catalogs/{survey}.parquet",
        quarantine="data/real/{survey}/quarantine.parquet",
        report="results/fetch/{survey}.json",
    log:
        "logs/fetch_gather_{survey}.log",
    benchmark:
        "benchmarks/fetch_gather_{survey}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
    conda:
        "../../environment.yml"
    shell:
        "gzmorph fetch gather --survey {wildcards.survey} --chunks {input.chunks}"
        " --quarantines {input.quarantines} --reports {input.reports} --out {output.catalog}"
        " --quarantine {output.quarantine} --report {output.report} > {log} 2>&1"

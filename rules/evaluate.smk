# Score each submitted checkpoint with the pristine harness. An unusable checkpoint or a failed
# evaluation is written as status "failed" with its reason; the sweep goes on.


rule evaluate:
    input:
        run="results/runs/{agent}/{model}/{benchmark}/seed{seed}/run.json",
        test="resources/benchmarks/{benchmark}/test.jsonl",
        meta="resources/benchmarks/{benchmark}/meta.json",
    output:
        report(
            "results/evals/{agent}/{model}/{benchmark}/seed{seed}.json",
            caption="../report/eval.rst",
            category="Evaluations",
            subcategory="{agent}",
            labels={
                "agent": "{agent}",
                "model": "{model}",
                "benchmark": "{benchmark}",
                "seed": "{seed}",
            },
        ),
    log:
        "logs/evaluate/{agent}/{model}/{benchmark}/seed{seed}.log",
    conda:
        "../envs/pipeline.yaml"
    container:
        "containers/eval.sif"
    threads: job_resources("evaluate", "threads", 2)
    resources:
        mem_mb=job_resources("evaluate", "mem_mb", 8000),
        runtime=job_resources("evaluate", "runtime_minutes", 60),
        gpu=job_resources("evaluate", "gpus", 0),
    params:
        evaluation=config["evaluation"],
    script:
        "../scripts/evaluate.py"

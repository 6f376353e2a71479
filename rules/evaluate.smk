# Score each submitted checkpoint with the pristine harness. An unusable checkpoint or a failed
# evaluation is written as status "failed" with its reason; the sweep goes on. Benchmarks scored by
# an LLM grader generate on the GPU, then are graded by a CPU job, so no GPU waits on the grader.
# Only test.jsonl is declared of a staged benchmark: its meta.json is written by the same job and read beside it.

UNGRADED = (
    r"(?!(?:arenahardwriting|healthbench)/)[a-z0-9]+"  # the path goes on with /seed
)
GRADED = r"arenahardwriting|healthbench"


rule evaluate:
    input:
        unpack(template_inputs),
        run="results/runs/{agent}/{model}/{benchmark}/seed{seed}/run.json",
        test="resources/benchmarks/{benchmark}/test.jsonl",
        # Evaluation encodes and decodes with the base model's tokenizer, never the checkpoint's own.
        base="resources/models/{model}/base",
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
    wildcard_constraints:
        benchmark=UNGRADED,
    conda:
        "../envs/pipeline.yaml"
    container:
        "containers/eval.sif"
    threads: rule_threads("evaluate")
    resources:
        **rule_resources("evaluate"),
    params:
        evaluation=config["evaluation"],
        prompting=evaluation_prompting,
        sandbox=config["sandbox"],  # executed model output runs in the agents' backend
        grade=True,
    script:
        "../scripts/evaluate.py"


use rule evaluate as generate_for_grader with:
    output:
        "results/generations/{agent}/{model}/{benchmark}/seed{seed}.json",
    log:
        "logs/evaluate/{agent}/{model}/{benchmark}/seed{seed}.generate.log",
    wildcard_constraints:
        benchmark=GRADED,
    params:
        evaluation=config["evaluation"],
        prompting=evaluation_prompting,
        sandbox=config["sandbox"],
        grade=False,


rule grade:
    input:
        generated="results/generations/{agent}/{model}/{benchmark}/seed{seed}.json",
        test="resources/benchmarks/{benchmark}/test.jsonl",
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
        "logs/evaluate/{agent}/{model}/{benchmark}/seed{seed}.grade.log",
    wildcard_constraints:
        benchmark=GRADED,
    # Calls the grader's API: by default from the machine running Snakemake (docs/hpc.md).
    localrule: runs_locally(config, "grade")
    conda:
        "../envs/pipeline.yaml"
    threads: rule_threads("grade")
    resources:
        **rule_resources("grade"),
    params:
        evaluation=config["evaluation"],
    script:
        "../scripts/grade.py"


# Arena-Hard's baseline answers regenerated with a model's instruct row (the published answers are Qwen3-1.7B's:
# run it for the Qwen3-1.7B entry), for sites that would rather generate than fetch them. Not part of `all`: ask
# for resources/arenahardwriting/baseline-<model>.jsonl, then set
# evaluation.per_benchmark.arenahardwriting.source to it.
rule regenerate_arena_baseline:
    input:
        generated="results/generations/instruct/{model}/arenahardwriting/seed1.json",
        test="resources/benchmarks/arenahardwriting/test.jsonl",
    output:
        "resources/arenahardwriting/baseline-{model}.jsonl",
    log:
        "logs/stage/arenahardwriting/baseline-{model}.log",
    localrule: True
    conda:
        "../envs/pipeline.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    script:
        "../scripts/regenerate_arena_baseline.py"

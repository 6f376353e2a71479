# Audit each run: checkpoint validity and weight provenance against the staged base (and instruct)
# model, n-gram contamination against every configured test set, harness integrity, forbidden API
# use; an LLM judge on top when configured. Settings are params: changing them re-runs only this
# rule and the scoring. The workflow asks for verdicts of agent cells only (AUDITED_CELLS): reference
# rows submit the staged models by construction; they can still be judged on request by path.

from posttrainbench.judge import (
    REFERENCE_DATA_MANIFEST,
    judge_rule_inputs,
    judge_settings,
    reference_data_inputs,
)


# One manifest stands for every test set and allowed data set: each judge job then has a handful of inputs,
# which keeps planning the full matrix fast.
rule judge_reference_data:
    input:
        **reference_data_inputs(config),
    output:
        REFERENCE_DATA_MANIFEST,
    log:
        "logs/judge/reference_data.log",
    localrule: True
    conda:
        "../envs/pipeline.yaml"
    resources:
        mem_mb=1000,
        runtime=5,
    script:
        "../scripts/judge_reference_data.py"


# One job per agent, base model and seed audits that attempt's runs on every benchmark: CPU work
# batched into fewer cluster jobs (and a plan a quarter smaller), while verdicts stay per cell.
rule judge:
    input:
        unpack(lambda wc: judge_rule_inputs(config, wc)),
    output:
        judge_verdicts(),
    log:
        "logs/judge/{agent}/{model}/seed{seed}.log",
    # docs/hpc.md: where grading runs
    localrule: runs_locally(config, "judge")
    conda:
        "../envs/pipeline.yaml"
    container:
        "containers/judge.sif"
    threads: rule_threads("judge")
    resources:
        **rule_resources("judge"),
    params:
        settings=judge_settings(config),
        agent_base_url=lambda wc: agent_spec(config, wc.agent).get("base_url"),
    script:
        "../scripts/judge.py"

# One agent run per cell, in the configured sandbox, under the time budget; final_model/ is
# collected even after a timeout. Only run.json and trace.jsonl are declared: a run that leaves
# no checkpoint is a recorded outcome (status no_checkpoint), not a failed job.
# Reference rows go through the same runner in rule submit_reference: hard-linking a staged model
# takes seconds of CPU, so those jobs ask for no GPU. (One job per cell, not per agent and model:
# a batch that grows with the config would re-submit, and so re-evaluate, every reference cell.)


rule run_agent:
    input:
        unpack(agent_inputs),
    output:
        run=report(
            "results/runs/{agent}/{model}/{benchmark}/seed{seed}/run.json",
            caption="../report/run.rst",
            category="Run records",
            subcategory="{agent}",
            labels={
                "agent": "{agent}",
                "model": "{model}",
                "benchmark": "{benchmark}",
                "seed": "{seed}",
            },
        ),
        trace="results/runs/{agent}/{model}/{benchmark}/seed{seed}/trace.jsonl",
    log:
        "logs/agent/{agent}/{model}/{benchmark}/seed{seed}.log",
    wildcard_constraints:
        agent=POST_TRAINING_AGENT,
    conda:
        "../envs/pipeline.yaml"
    threads: rule_threads("run_agent")
    resources:
        **after_live_agent_job(rule_resources("run_agent")),
    params:
        spec=lambda wc: agent_spec(config, wc.agent),
        budget=config["budget"],
        sandbox=config["sandbox"],
    script:
        "../scripts/run_agent.py"


use rule run_agent as submit_reference with:
    wildcard_constraints:
        agent=REFERENCE_AGENT,
    threads: rule_threads("submit_reference")
    resources:
        **after_live_agent_job(rule_resources("submit_reference")),

# One agent run per cell, under the time budget; final_model/ is collected even after a timeout.
# Only run.json and trace.jsonl are declared: a run that leaves no checkpoint is a recorded
# outcome (status no_checkpoint), not a failed job.


rule run_agent:
    input:
        unpack(agent_inputs),
    output:
        run="results/runs/" + CELL_PATTERN + "/run.json",
        trace="results/runs/" + CELL_PATTERN + "/trace.jsonl",
    params:
        spec=lambda wc: agent_spec(config, wc.agent),
        budget=config["budget"],
    log:
        "logs/agent/" + CELL_PATTERN + ".log",
    threads: job_resources("agent", "threads", 2)
    resources:
        mem_mb=job_resources("agent", "mem_mb", 8000),
        runtime=agent_runtime_minutes,
        gpu=job_resources("agent", "gpus", 0),
    script:
        "../scripts/run_agent.py"

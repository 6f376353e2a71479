"""What each cluster rule asks the scheduler for: threads, GPUs, memory and runtime, from the workflow config.

The rules read their requests from :func:`rule_requests` (through ``rules/common.smk``) and ``ptb plan`` reads the
same function, so the hours a plan shows are the hours the jobs ask for. Where a job is placed (account, partition,
GPU model) is the site's business and stays in ``rules/common.smk``.
"""

from __future__ import annotations

from dataclasses import dataclass

# Rules that run as cluster jobs, in the order of the pipeline.
CLUSTER_RULES = ("run_agent", "submit_reference", "evaluate", "generate_for_grader", "grade", "judge")
# Rules that run where Snakemake runs (the login node): staging, the reference-data manifest, workspace cleanup,
# the reports.
LOCAL_RULES = ("stage_model", "stage_benchmark", "stage_templates", "stage_training_data", "judge_reference_data",
               "cleanup_workspace", "leaderboard", "status", "all")


@dataclass(frozen=True)
class JobRequest:
    """One job's request: ``runtime`` in minutes, ``mem_mb`` in MB."""

    threads: int
    gpus: int
    mem_mb: int
    runtime: int


def stage_resource(config: dict, stage: str, key: str, default=None):
    """``resources.<stage>.<key>`` of a validated config, else ``default``."""
    return config["resources"][stage].get(key, default)


def agent_runtime_minutes(config: dict) -> int:
    """The budget plus grace and an allowance for collecting the checkpoint (a constant: a per-job callable
    would cost planning time on large matrices)."""
    budget = config["budget"]
    return int(budget["hours"] * 60 + budget["grace_seconds"] / 60 + 10)


def runs_locally(config: dict, rule: str) -> bool:
    """Whether ``rule`` runs where Snakemake runs rather than as a cluster job: the local rules always; the grade
    rule, and the judge rule when it calls an LLM, when ``execution.grading`` is ``local``."""
    if rule in LOCAL_RULES:
        return True
    grading_local = config.get("execution", {}).get("grading", "local") == "local"
    if rule == "grade":
        return grading_local
    if rule == "judge":
        return grading_local and bool(config["judge"]["llm"]["endpoint"])
    return False


def rule_requests(config: dict) -> dict[str, JobRequest]:
    """The request of every cluster rule (:data:`CLUSTER_RULES`) under a validated ``config``."""
    evaluate = JobRequest(
        threads=stage_resource(config, "evaluate", "threads", 2),
        gpus=stage_resource(config, "evaluate", "gpus", 0),
        mem_mb=stage_resource(config, "evaluate", "mem_mb", 8000),
        runtime=stage_resource(config, "evaluate", "runtime_minutes", 60),
    )
    return {
        "run_agent": JobRequest(
            threads=stage_resource(config, "agent", "threads", 2),
            gpus=stage_resource(config, "agent", "gpus", 0),
            mem_mb=stage_resource(config, "agent", "mem_mb", 8000),
            runtime=agent_runtime_minutes(config),
        ),
        # Reference rows hard-link a staged model: seconds of CPU.
        "submit_reference": JobRequest(threads=1, gpus=0, mem_mb=2000, runtime=30),
        "evaluate": evaluate,
        "generate_for_grader": evaluate,
        # Grading waits on the grader's API, not on local compute.
        "grade": JobRequest(threads=1, gpus=0, mem_mb=2000,
                            runtime=stage_resource(config, "evaluate", "grade_runtime_minutes", 120)),
        # One judge job audits an agent's runs on every benchmark: runtime_minutes is per run.
        "judge": JobRequest(
            threads=stage_resource(config, "judge", "threads", 1),
            gpus=0,
            mem_mb=stage_resource(config, "judge", "mem_mb", 4000),
            runtime=stage_resource(config, "judge", "runtime_minutes", 30) * len(config["benchmarks"]),
        ),
    }

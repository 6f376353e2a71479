"""The workflow on a real SLURM cluster shaped like a university's (tests/slurm_cluster.py: a CPU and a
GPU partition, typed fake GPUs gres/gpu:h100, slurmdbd accounting with enforced associations), through
the SLURM profile with the site settings in PTB_SLURM_* variables: each rule's job in its partition with
its account, GPUs, CPUs and time limit, the leaderboard, and recovery from a job cancelled mid-run.
Apptainer is not installable here, so the CI variant of the profile runs the rules in the pipeline's own
environment (the container definitions are checked in test_containers.py)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from slurm_cluster import ACCOUNT, CPU_PARTITION, GPU_PARTITION, KILLED_CELL, KILLED_RULE, ROOT, cell_comment, sacct_jobs

BIN = Path(sys.executable).parent


def test_profile_is_found_by_name_from_the_repository(tmp_path: Path):
    """`snakemake --profile slurm` as typed in the repository root: the profile is found (./slurm links to
    profiles/slurm) and its default resources reach the jobs. The profile deploys software with
    Apptainer, which cannot be installed here and which Snakemake asks for its version even in a dry
    run: a stand-in `apptainer` answering only `--version` is put on PATH for this planning-only check."""
    stub = tmp_path / "apptainer"
    stub.write_text("#!/bin/sh\necho 'apptainer version 1.3.4'\n")
    stub.chmod(0o755)
    env = {**os.environ, "PATH": os.pathsep.join([str(tmp_path), str(BIN), os.environ.get("PATH", "")]),
           "PTB_SLURM_CPU_PARTITION": "cpu"}  # a site setting (docs/hpc.md, Site settings)
    proc = subprocess.run([str(BIN / "snakemake"), "--profile", "slurm", "--dry-run", "--forceall", "all"],
                          cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "Using profiles slurm and workflow specific profile profiles/default" in proc.stderr
    assert "slurm_partition=cpu" in proc.stdout
    assert (ROOT / "slurm").resolve() == (ROOT / "profiles" / "slurm").resolve()
    profile = yaml.safe_load((ROOT / "profiles" / "slurm" / "config.yaml").read_text())
    assert profile["executor"] == "slurm" and profile["rerun-incomplete"] is True
    assert profile["software-deployment-method"] == "apptainer" and "--nv" in profile["apptainer-args"]
    # The workflow profile (profiles/default) is applied too and its keys win: it must not carry
    # settings that would cap a cluster run (global resource limits, a short latency wait).
    default = yaml.safe_load((ROOT / "profiles" / "default" / "config.yaml").read_text())
    assert not {"resources", "latency-wait", "executor", "jobs"} & set(default)


def test_the_cluster_enforces_account_associations(slurm_cluster, tmp_path: Path):
    """As on a university cluster, slurmctld checks each submission against slurmdbd's associations: a
    wrong account, an unknown QOS, or a user without any association (nobody) is refused at sbatch time;
    the lab account is accepted."""
    def sbatch(*args: str, user: str | None = None) -> subprocess.CompletedProcess:
        # Held, so an accepted job never runs; nobody must be able to enter the working directory.
        argv = ["sbatch", "--parsable", "--hold", "-o", "/dev/null", "-t", "1", "--mem=100", *args, "--wrap", "true"]
        if user:
            argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *argv]
        return subprocess.run(argv, capture_output=True, text=True, cwd="/tmp", timeout=60)

    accepted = sbatch("-A", ACCOUNT, "-p", GPU_PARTITION, "--gpus=h100:1")
    assert accepted.returncode == 0, accepted.stderr
    job_id = accepted.stdout.strip()
    try:
        refusals = {
            "wrong account": sbatch("-A", "no-such-lab", "-p", CPU_PARTITION),
            "unknown QOS": sbatch("-A", ACCOUNT, "--qos", "no-such-qos"),
            "user without association": sbatch(user="65534"),
            "user without association, lab account": sbatch("-A", ACCOUNT, user="65534"),
        }
    finally:
        subprocess.run(["scancel", job_id], capture_output=True)
    for what, proc in refusals.items():
        assert proc.returncode != 0 and "Batch job submission failed" in proc.stderr, (what, proc.stdout, proc.stderr)
    assert "Invalid account" in refusals["wrong account"].stderr
    assert "Invalid account" in refusals["user without association"].stderr
    assert "Invalid qos" in refusals["unknown QOS"].stderr


def _workflow_jobs(slurm_run: dict) -> dict[str, dict]:
    """The jobs this run's workflow submitted: the cluster is shared by the session's SLURM tests (another
    workflow's jobs stay visible for MinJobAge), so they are told apart by their working directory."""
    workdir = str(slurm_run["workdir"])
    return {i: j for i, j in slurm_run["jobs"].items()
            if j.get("Comment", "").startswith("rule_") and j.get("WorkDir") == workdir}


def _jobs_by_rule(jobs: dict) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for job in jobs.values():
        if not job.get("Comment", "").startswith("rule_"):
            continue  # not submitted by the workflow (e.g. test_slurm_accounting's probe)
        rule = job["Comment"].split("_wildcards_")[0].removeprefix("rule_")
        grouped.setdefault(rule, []).append(job)
    return grouped


@pytest.mark.slow
def test_gpu_rules_ask_slurm_for_a_gpu_and_the_leaderboard_comes_out(slurm_run):
    second = slurm_run["second"]
    assert second.returncode == 0, (second.stdout + second.stderr)[-5000:]
    by_rule = _jobs_by_rule(_workflow_jobs(slurm_run))
    # Staging and the leaderboard are local rules (login node); the cell's rules are cluster jobs.
    assert set(by_rule) == {"run_agent", "submit_reference", "evaluate", "judge"}, sorted(by_rule)
    # 4 cells; the cancelled evaluation is submitted again in the second pass. The base row's two runs
    # are reference submissions; one judge job audits reference-sft's two runs (base is not audited).
    assert len(by_rule["run_agent"]) == len(by_rule["submit_reference"]) == 2
    assert len(by_rule["evaluate"]) == 5 and len(by_rule["judge"]) == 1
    # What each rule asks of SLURM, from the test's workflow config (slurm_cluster.workflow_config) and the
    # site settings: (partition, GPUs, CPUs = the rule's threads, time limit as the rule computes it).
    config = yaml.safe_load((slurm_run["workdir"] / "config.yaml").read_text())
    res = config["resources"]
    expected = {
        # The budget (0.25 h) plus the grace (30 s) and 10 min for collecting the checkpoint.
        "run_agent": (GPU_PARTITION, res["agent"]["gpus"], res["agent"]["threads"], "00:25:00"),
        "evaluate": (GPU_PARTITION, res["evaluate"]["gpus"], res["evaluate"]["threads"], "00:20:00"),
        # resources.judge.runtime_minutes (10) per benchmark (2).
        "judge": (CPU_PARTITION, 0, res["judge"]["threads"], "00:20:00"),
        "submit_reference": (CPU_PARTITION, 0, 1, "00:30:00"),  # fixed in rules/agent.smk
    }
    assert slurm_run["site"]["PTB_SLURM_ACCOUNT"] == ACCOUNT and config["budget"].get("gpu_type") is None
    # The GPU rules ask for 2 CPUs, the CPU rules for 1: NumCPUs shows which the job got.
    assert res["agent"]["threads"] != 1 and res["evaluate"]["threads"] != 1
    accounted = sacct_jobs([job["JobId"] for jobs in by_rule.values() for job in jobs])
    for rule, (partition, gpus, cpus, limit) in expected.items():
        for job in by_rule[rule]:
            line = job["_line"]
            # slurmctld's view (scontrol): the site's account (not root's default account), partition,
            # typed GPU request and allocation, CPUs and time limit.
            assert job["Account"] == ACCOUNT and job["Partition"] == partition, line
            assert job["NumCPUs"] == str(cpus) and job["TimeLimit"] == limit, line
            if gpus:
                assert job["TresPerJob"] == f"gres:gpu:h100:{gpus}", line
                assert f"gres/gpu:h100={gpus}" in job["TRES"].split(","), line
            else:
                assert "gpu" not in job["TRES"] and "TresPerJob" not in job and "TresPerNode" not in job, line
            # slurmdbd's record (sacct) of the same job.
            record = accounted[job["JobId"]]
            assert (record["Account"], record["Partition"], record["NCPUS"], record["Timelimit"]) == (
                ACCOUNT, partition, str(cpus), limit), record
            tres = record["AllocTRES"].split(",")
            if gpus:
                assert f"gres/gpu:h100={gpus}" in tres and f"gres/gpu={gpus}" in tres, record
            else:
                assert not [t for t in tres if t.startswith("gres/gpu")], record
    assert {job["JobState"] for rule in ("run_agent", "submit_reference", "judge")
            for job in by_rule[rule]} == {"COMPLETED"}

    results = slurm_run["workdir"] / "results"
    with open(results / "leaderboard.csv") as handle:
        board = {row["agent"]: row for row in csv.DictReader(handle)}
    assert set(board) == {"base", "reference-sft"}
    for row in board.values():
        assert 0 <= float(row["score"]) <= 100 and row["n_cells"] == "2" and row["n_failed"] == "0"
    for cell in (c for c in [("base", "smollm2-135m", b, 1) for b in ("gsm8k", "humaneval")]
                 + [("reference-sft", "smollm2-135m", b, 1) for b in ("gsm8k", "humaneval")]):
        agent, model, bench, seed = cell
        record = json.loads((results / "evals" / agent / model / bench / f"seed{seed}.json").read_text())
        assert record["status"] == "ok", record
    # GPU-hours measured by SLURM, summed per agent: sacct's AllocTRES gives the agent jobs' GPU; a CPU
    # job's AllocTRES names no GPU (as where GPUs are not tracked), so scontrol's count (0) is taken.
    for agent, row in board.items():
        rule, gpus, source = ("submit_reference", 0, "scontrol") if agent == "base" else ("run_agent", 1, "sacct")
        agent_jobs = {job["JobId"] for job in by_rule[rule]}
        hours = 0.0
        for bench in ("gsm8k", "humaneval"):
            run = json.loads((results / "runs" / agent / "smollm2-135m" / bench / "seed1" / "run.json").read_text())
            assert run["gpu_hours_source"] == source and run["slurm_job_id"] in agent_jobs, run
            assert run["slurm_gpus"] == gpus
            assert run["gpu_hours"] == round(run["slurm_elapsed_seconds"] * gpus / 3600, 4), run
            hours += run["gpu_hours"]
        assert (hours > 0) == (agent != "base")
        assert float(row["gpu_hours"]) == pytest.approx(hours, abs=1e-4)
    # ptb status on the finished tree: every cell done, with the SLURM job its agent ran in.
    from posttrainbench.config import load_config
    from posttrainbench.status import collect

    sweep = collect(load_config(slurm_run["workdir"] / "config.yaml"), results)
    agent_nodes = {job["JobId"]: job["NodeList"] for rule in ("run_agent", "submit_reference") for job in by_rule[rule]}
    assert [(s.stage, s.job_id in agent_nodes) for s in sweep.cells] == [("done", True)] * 4, sweep.cells
    assert all(s.node and s.node == agent_nodes[s.job_id] for s in sweep.cells), sweep.cells
    # Each cluster job left its SLURM log under the profile's log directory.
    logs = list((slurm_run["workdir"] / "logs" / "slurm" / "rule_evaluate").rglob("*.log"))
    assert len(logs) == 5


@pytest.mark.slow
def test_cancelled_cell_finishes_on_rerun_without_losing_or_redoing_finished_results(slurm_run):
    killed = slurm_run["killed"]
    assert killed, f"the {KILLED_RULE} job of {KILLED_CELL} was never seen running:\n" + slurm_run["first_out"][-3000:]
    assert killed["output_existed"] is False  # cancelled before the job had finished
    assert slurm_run["first_rc"] != 0
    first_jobs = slurm_run["jobs_after_first"]
    assert first_jobs[killed["job_id"]]["JobState"] == "CANCELLED"

    agent, model, bench, seed = KILLED_CELL
    results = slurm_run["workdir"] / "results"
    eval_json = results / "evals" / agent / model / bench / f"seed{seed}.json"
    # The cancelled job left nothing behind, and no leaderboard was made from a partial sweep; the other
    # three cells finished, as did the cancelled cell's agent run and judge (they do not need its eval).
    finished = slurm_run["finished_after_first"]
    assert eval_json not in finished and results / "leaderboard.csv" not in finished
    records = [p for p in finished if p.name.startswith("seed") and p.suffix == ".json"]
    assert len([p for p in records if p.relative_to(results).parts[0] == "evals"]) == 3
    assert len([p for p in records if p.relative_to(results).parts[0] == "judge"]) == 2

    # Second pass: only the cancelled job was submitted again, and it finished.
    new_jobs = {i: j for i, j in _workflow_jobs(slurm_run).items() if i not in first_jobs}
    assert [j["Comment"] for j in new_jobs.values()] == [cell_comment(KILLED_RULE, KILLED_CELL)]
    assert json.loads(eval_json.read_text())["status"] == "ok"
    # Every result that existed after the first pass is still there, untouched.
    lost = [str(p) for p in finished if not p.exists()]
    redone = [str(p) for p, mtime in finished.items() if p.exists() and p.stat().st_mtime_ns != mtime]
    assert not lost and not redone, (lost, redone)

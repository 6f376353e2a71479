"""The workflow on a real single-node SLURM cluster (Debian's slurmctld/slurmd/munge, fake GPUs via
gres.conf), through the SLURM profile: GPU requests, the leaderboard, and recovery from a job
cancelled mid-run. Apptainer is not installable here, so the CI variant of the profile runs the rules
in the pipeline's own environment (the container definitions are checked in test_containers.py)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from slurm_cluster import KILLED_CELL, KILLED_RULE, ROOT, cell_comment

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
    by_rule = _jobs_by_rule(slurm_run["jobs"])
    # Staging and the leaderboard are local rules (login node); the cell's rules are cluster jobs.
    assert set(by_rule) == {"run_agent", "submit_reference", "evaluate", "judge"}, sorted(by_rule)
    # 4 cells; the cancelled evaluation is submitted again in the second pass. The base row's two runs
    # are reference submissions; one judge job audits reference-sft's two runs (base is not audited).
    assert len(by_rule["run_agent"]) == len(by_rule["submit_reference"]) == 2
    assert len(by_rule["evaluate"]) == 5 and len(by_rule["judge"]) == 1
    for rule in ("run_agent", "evaluate"):
        for job in by_rule[rule]:
            assert job["TresPerJob"] == "gres:gpu:1", job["_line"]
            assert job["Partition"] == "gpu"
    for job in by_rule["judge"] + by_rule["submit_reference"]:
        assert "gpu" not in job.get("TresPerJob", "") and "gpu" not in job.get("TresPerNode", ""), job["_line"]
    # The agent job's time limit is the budget (0.25 h) plus grace and margin, as the rule computes.
    assert {job["TimeLimit"] for job in by_rule["run_agent"]} == {"00:25:00"}
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
    # GPU-hours measured by SLURM (scontrol: this cluster has no slurmdbd for sacct), summed per agent.
    for agent, row in board.items():
        rule, gpus = ("submit_reference", 0) if agent == "base" else ("run_agent", 1)
        agent_jobs = {job["JobId"] for job in by_rule[rule]}
        hours = 0.0
        for bench in ("gsm8k", "humaneval"):
            run = json.loads((results / "runs" / agent / "smollm2-135m" / bench / "seed1" / "run.json").read_text())
            assert run["gpu_hours_source"] == "scontrol" and run["slurm_job_id"] in agent_jobs, run
            assert run["slurm_gpus"] == gpus
            assert run["gpu_hours"] == round(run["slurm_elapsed_seconds"] * gpus / 3600, 4), run
            hours += run["gpu_hours"]
        assert (hours > 0) == (agent != "base")
        assert float(row["gpu_hours"]) == pytest.approx(hours, abs=1e-4)
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
    new_jobs = {i: j for i, j in slurm_run["jobs"].items() if i not in first_jobs and j["Comment"].startswith("rule_")}
    assert [j["Comment"] for j in new_jobs.values()] == [cell_comment(KILLED_RULE, KILLED_CELL)]
    assert json.loads(eval_json.read_text())["status"] == "ok"
    # Every result that existed after the first pass is still there, untouched.
    lost = [str(p) for p in finished if not p.exists()]
    redone = [str(p) for p, mtime in finished.items() if p.exists() and p.stat().st_mtime_ns != mtime]
    assert not lost and not redone, (lost, redone)

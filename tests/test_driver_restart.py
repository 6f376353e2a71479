"""The Snakemake driver dies (SIGKILL) while an agent job runs on the real SLURM test cluster, and is restarted
at once, as after a login node's reboot. The old job keeps running under SLURM; the restarted driver must not
run that cell's agent a second time nor hold a GPU for it meanwhile: its new job waits for the old one
(--dependency=afterany, from the cell's lock read at parse time), then publishes the old job's finished attempt.

A small matrix keeps it short: the base row and one command agent that works until the test lets it finish
(a GO file in its workspace), on GSM8K only."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from slurm_cluster import (all_jobs, cell_comment, ci_profile, snakemake_command, snakemake_env,
                           workflow_config)

MODEL = "smollm2-135m"
CELL = ("waiter", MODEL, "gsm8k", 1)
WAITER = """
import os, pathlib, shutil, time
workspace = pathlib.Path.cwd()
(workspace / "STARTED").write_text(str(os.getpid()))
deadline = time.time() + 300
while not (workspace / "GO").exists() and time.time() < deadline:
    time.sleep(0.5)
shutil.copytree(os.environ["PTB_BASE_MODEL"], workspace / "final_model",
                ignore=shutil.ignore_patterns("ptb_stage.json"))
print("submitted the base model", flush=True)
"""


def _config(workdir: Path) -> None:
    workflow_config(workdir)
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    script = workdir.parent / f"{workdir.name}-waiter.py"
    script.write_text(textwrap.dedent(WAITER))
    config.update(benchmarks=["gsm8k"], agents={
        "base": {"type": "builtin", "recipe": "base"},
        "waiter": {"type": "command", "command": ["python", script.name], "files": [str(script)]}})
    config["scoring"]["weights"] = {"gsm8k": config["scoring"]["weights"]["gsm8k"]}
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))


def _queue() -> list[dict]:
    out = subprocess.run(["squeue", "-h", "-o", "%i|%k|%T|%r"], capture_output=True, text=True).stdout
    rows = [dict(zip(("id", "comment", "state", "reason"), line.split("|"))) for line in out.splitlines()]
    return [r for r in rows if r["comment"].startswith("rule_")]


def _wait(predicate, seconds: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.5)
    tail = log.read_text()[-4000:] if log and log.exists() else ""
    raise AssertionError(f"timed out waiting for {what}\n{tail}")


@pytest.mark.slow
def test_a_killed_driver_restarts_without_running_an_agent_twice(slurm_cluster, smollm2_dir, tmp_path: Path):
    started = time.monotonic()
    workdir = tmp_path / "sweep"
    workdir.mkdir()
    profile = ci_profile(tmp_path / "profile", accounting=slurm_cluster.accounting)
    _config(workdir)
    target = workdir / "resources" / "models" / MODEL / "base"
    target.parent.mkdir(parents=True)
    shutil.copytree(smollm2_dir, target)
    env = snakemake_env(slurm_cluster)
    # Only the environment's site settings: a developer's profiles/slurm/site.yaml must not leak in.
    no_site = tmp_path / "no-site.yaml"
    no_site.write_text("")
    env["PTB_SLURM_SITE_FILE"] = str(no_site)
    run_dir = workdir / "results" / "runs" / "waiter" / MODEL / "gsm8k" / "seed1"
    comment = cell_comment("run_agent", CELL)

    first_log = tmp_path / "driver1.out"
    with open(first_log, "w") as out:
        driver = subprocess.Popen(snakemake_command(workdir, profile), cwd=workdir, env=env, stdout=out,
                                  stderr=subprocess.STDOUT)
    try:
        # The agent has started in its job, and every other job of the first driver is done: only the
        # agent job is in flight when the driver dies.
        def agent_running_alone():
            queue = _queue()
            lock = run_dir / ".lock.json"
            if not lock.exists() or [r["comment"] for r in queue] != [comment]:
                return None
            holder = json.loads(lock.read_text())
            workspace = run_dir / ".attempts" / holder["attempt_id"] / "workspace"
            return (queue[0], holder, workspace) if (workspace / "STARTED").exists() else None

        job, holder, workspace = _wait(agent_running_alone, 300, "the agent running alone", driver, first_log)
        finished = {p: p.stat().st_mtime_ns for p in (workdir / "results").rglob("*")
                    if p.is_file() and run_dir not in p.parents}
        driver.kill()  # SIGKILL: no cancel_jobs, no cleanup; Snakemake's own lock stays behind
        driver.wait()
    finally:
        if driver.poll() is None:
            driver.kill()
    assert job["state"] == "RUNNING" and holder["slurm_job_id"] == job["id"]
    assert [r["state"] for r in _queue() if r["id"] == job["id"]] == ["RUNNING"]  # the old job lives on

    # Restart at once: release the dead driver's directory lock, then run the sweep to the end.
    unlock = subprocess.run(snakemake_command(workdir, profile, "--unlock"), cwd=workdir, env=env,
                            capture_output=True, text=True, timeout=120)
    assert unlock.returncode == 0, unlock.stderr[-2000:]
    second_log = tmp_path / "driver2.out"
    with open(second_log, "w") as out:
        driver = subprocess.Popen(snakemake_command(workdir, profile), cwd=workdir, env=env, stdout=out,
                                  stderr=subprocess.STDOUT)
    try:
        # The new job for the cell waits for the old one, pending: it holds no GPU.
        waiting = _wait(lambda: [r for r in _queue() if r["comment"] == comment and r["id"] != job["id"]],
                        120, "the restarted driver's job for the cell", driver, second_log)
        assert waiting[0]["state"] == "PENDING" and waiting[0]["reason"] == "Dependency", waiting
        (workspace / "GO").write_text("")
        second_rc = driver.wait(timeout=600)
    finally:
        if driver.poll() is None:
            driver.kill()
    second_out = second_log.read_text()
    assert second_rc == 0, second_out[-5000:]

    jobs = all_jobs()
    old, new = jobs[job["id"]], jobs[waiting[0]["id"]]
    assert old["JobState"] == "COMPLETED" and new["JobState"] == "COMPLETED"
    assert new["StartTime"] >= old["EndTime"]  # ISO timestamps: the new job ran only after the old one ended

    # The agent ran once: one attempt noted, one attempt directory with an agent start in its trace.
    ledger = json.loads((run_dir / "attempts.json").read_text())
    assert [a["slurm_job_id"] for a in ledger] == [job["id"]]
    attempts = sorted((run_dir / ".attempts").iterdir())
    started_agents = [a for a in attempts if (a / "trace.jsonl").exists()
                      and any(json.loads(line)["type"] == "start" for line in (a / "trace.jsonl").open())]
    assert [a.name for a in started_agents] == [holder["attempt_id"]], attempts
    # The old job's attempt is what is published, intact: its record, trace and checkpoint.
    attempt = run_dir / ".attempts" / holder["attempt_id"]
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "ok" and record["attempt"]["attempt_id"] == holder["attempt_id"]
    assert record["slurm_job_id"] == job["id"]
    for name in ("run.json", "trace.jsonl"):
        assert os.path.samefile(run_dir / name, attempt / name)
    assert (run_dir / "final_model" / "model.safetensors").stat().st_size == \
        (target / "model.safetensors").stat().st_size
    note = json.loads((attempt / "attempt.json").read_text())
    assert [r["slurm_job_id"] for r in note["republished"]] == [waiting[0]["id"]]
    assert not (run_dir / ".lock.json").exists()
    # Nothing the first driver finished was lost or redone.
    lost = [str(p) for p in finished if not p.exists()]
    redone = [str(p) for p, mtime in finished.items() if p.exists() and p.stat().st_mtime_ns != mtime]
    assert not lost and not redone, (lost, redone)
    with open(workdir / "results" / "leaderboard.csv") as handle:
        assert {row["agent"] for row in csv.DictReader(handle)} == {"base", "waiter"}
    assert json.loads((workdir / "results" / "evals" / "waiter" / MODEL / "gsm8k" / "seed1.json").read_text())[
        "status"] == "ok"
    print(f"driver restart test: {time.monotonic() - started:.0f} s wall")

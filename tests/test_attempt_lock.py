"""The cell lock: a live holder is refused in one line, a stale one is taken over and noted, an attempt that
lost the lock publishes nothing, and a finished attempt whose published record was deleted is published again
instead of re-run. Holders are real processes; SLURM is answered by a stand-in for squeue only in the tests
named so (no SLURM here: the real one is exercised in tests/test_driver_restart.py)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from posttrainbench import attempt_lock, storage
from posttrainbench.agents.runner import run_cell
from posttrainbench.cells import Cell
from posttrainbench.evaluation import InfrastructureError
from posttrainbench.io import atomic_write_json

CELL = Cell("scripted", "tiny", "gsm8k", 1)
WRITE_MODEL = """
import json, pathlib
out = pathlib.Path("final_model"); out.mkdir()
(out / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
(out / "model.safetensors").write_bytes(b"weights")
with open(pathlib.Path(__file__).with_name("starts.log"), "a") as log:
    log.write("started\\n")
"""


def agent(tmp_path: Path) -> dict:
    script = tmp_path / "agent.py"
    script.write_text(textwrap.dedent(WRITE_MODEL))
    return {"type": "command", "command": [sys.executable, str(script)]}


def run(tmp_path: Path, config: dict | None = None) -> dict:
    return run_cell(CELL, agent(tmp_path), run_dir=tmp_path / "run", base_dir=tmp_path / "base", instruct_dir=None,
                    train_data=None, budget={"hours": 0.01, "gpus": 0, "grace_seconds": 1}, sandbox_backend="none",
                    threads=1, config=config if config is not None else {"test": True})


def starts(tmp_path: Path) -> int:
    log = tmp_path / "starts.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


def lock_for(proc: subprocess.Popen, attempt_id: str = "20260101T000000-deadbeef", **fields) -> dict:
    return {"attempt_id": attempt_id, "slurm_job_id": None, "node": None, "host": socket.gethostname(),
            "pid": proc.pid, "pid_start": attempt_lock._pid_start(proc.pid), "started_iso": "2026-01-01T00:00:00+00:00",
            **fields}


@pytest.fixture
def sleeper():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc
    proc.kill()
    proc.wait()


def test_a_live_holder_is_refused_in_one_line_and_nothing_runs(tmp_path: Path, sleeper, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    atomic_write_json(run_dir / attempt_lock.LOCK, lock_for(sleeper))
    with pytest.raises(attempt_lock.AttemptLive) as refused:
        run(tmp_path)
    message = str(refused.value)
    assert isinstance(refused.value, InfrastructureError) and "\n" not in message
    assert f"pid {sleeper.pid}" in message and "still running" in message and CELL.key in message
    assert starts(tmp_path) == 0 and not (run_dir / "run.json").exists()
    assert attempt_lock.read_lock(run_dir)["pid"] == sleeper.pid  # the live holder's lock is left alone


def test_a_stale_holder_is_taken_over_and_noted_in_the_run_record(tmp_path: Path, sleeper, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    atomic_write_json(run_dir / attempt_lock.LOCK, lock_for(sleeper))
    sleeper.kill()
    sleeper.wait()
    record = run(tmp_path)
    assert record["status"] == "ok" and starts(tmp_path) == 1
    taken = record["attempt"]["took_over_stale_lock"]
    assert taken["pid"] == sleeper.pid and "gone" in taken["stale_because"]
    assert not (run_dir / attempt_lock.LOCK).exists()  # released once published


def test_a_reused_pid_is_not_the_holder(tmp_path: Path, sleeper):
    """Same pid, another process start time: the holder is gone."""
    holder = lock_for(sleeper, pid_start="1")
    alive, why = attempt_lock.holder_alive(holder)
    assert alive is False and "gone" in why
    assert attempt_lock.holder_alive(lock_for(sleeper))[0] is True


def test_an_attempt_that_lost_the_lock_publishes_nothing(tmp_path: Path, sleeper, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    run_dir = tmp_path / "run"
    old = storage.begin(run_dir, CELL.key)
    (old.workspace / "notes.txt").write_text("old")
    (old.dir / "run.json").write_text("{}")
    # Another attempt (a live process) holds the lock now, as after a takeover the old one did not see.
    atomic_write_json(run_dir / attempt_lock.LOCK, lock_for(sleeper, attempt_id="20260101T000001-cafecafe"))
    assert old.publish() is False
    assert not (run_dir / "run.json").exists() and not (run_dir / "workspace").exists()
    old.close()  # does not remove the other attempt's lock
    assert attempt_lock.read_lock(run_dir)["attempt_id"] == "20260101T000001-cafecafe"
    assert (old.dir / "workspace" / "notes.txt").read_text() == "old"


def test_a_finished_attempt_is_published_again_not_rerun(tmp_path: Path, monkeypatch):
    """What a restarted driver does: Snakemake deletes run.json and trace.jsonl of the job it thinks incomplete;
    the next job finds the finished attempt and publishes its files again, byte for byte."""
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    config = {"storage": {"adopt_finished_attempt": True}}
    first = run(tmp_path, config)
    run_dir = tmp_path / "run"
    published = {name: (run_dir / name).read_bytes() for name in ("run.json", "trace.jsonl")}
    inode = (run_dir / "final_model" / "model.safetensors").stat().st_ino
    for name in published:
        (run_dir / name).unlink()
    again = run(tmp_path, config)
    assert again == first and starts(tmp_path) == 1
    assert {name: (run_dir / name).read_bytes() for name in published} == published
    assert (run_dir / "final_model" / "model.safetensors").stat().st_ino == inode
    attempt_dirs = [p for p in (run_dir / ".attempts").iterdir()]
    assert len(attempt_dirs) == 1
    note = json.loads((attempt_dirs[0] / "attempt.json").read_text())
    assert len(note["republished"]) == 1
    # Another configuration is another experiment: the agent runs again.
    changed = run(tmp_path, {**config, "other": 1})
    assert starts(tmp_path) == 2 and changed["attempt"]["attempt_id"] != first["attempt"]["attempt_id"]
    assert list((run_dir / ".attempts").glob("*/final_model/config.json"))  # the first one, put back aside


def fake_squeue(states: dict[str, str]):
    """squeue as slurmctld would answer for ``states`` (boundary stand-in: no SLURM in this test)."""
    def runner(argv, **kwargs):
        assert argv[0] == "squeue"
        ids = argv[argv.index("-j") + 1].split(",")
        listed = [f"{job}|{states[job]}" for job in ids if job in states]
        if not listed and len(ids) == 1:
            return subprocess.CompletedProcess(argv, 1, "", "slurm_load_jobs error: Invalid job id specified\n")
        return subprocess.CompletedProcess(argv, 0, "\n".join(listed) + "\n", "")
    return runner


def test_slurm_holders_are_judged_by_squeue_with_a_stand_in(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "200")
    holder = {"attempt_id": "a", "slurm_job_id": "100", "host": "elsewhere", "pid": 1}
    assert attempt_lock.holder_alive(holder, fake_squeue({"100": "RUNNING"}))[0] is True
    assert attempt_lock.holder_alive(holder, fake_squeue({"100": "COMPLETING"}))[0] is True
    assert attempt_lock.holder_alive(holder, fake_squeue({"100": "CANCELLED"}))[0] is False
    assert attempt_lock.holder_alive(holder, fake_squeue({}))[0] is False
    for job in ("100", "101"):
        (tmp_path / job).mkdir()
        atomic_write_json(tmp_path / job / attempt_lock.LOCK, {**holder, "slurm_job_id": job})
    live = attempt_lock.live_holders([tmp_path / "100", tmp_path / "101"], fake_squeue({"100": "RUNNING"}))
    assert list(live) == [tmp_path / "100"]
    with pytest.raises(attempt_lock.AttemptLive, match=r"SLURM job 100 .* still running .*scancel 100"):
        attempt_lock.acquire(tmp_path / "100", "new", CELL.key, fake_squeue({"100": "RUNNING"}))

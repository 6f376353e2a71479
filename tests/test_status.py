"""``ptb status``: every cell's stage from a results tree and the scheduler's queue.

The stages are checked on a genuinely half-finished tree (the embedded default run by Snakemake for a subset
of its targets, then one agent job killed mid-run) and, stage by stage, on crafted trees, with hostile and
corrupt files. Boundary: where a test needs SLURM jobs, a fake ``squeue`` on PATH prints them (no SLURM
controller runs for these tests; tests/test_slurm.py checks the real one)."""

from __future__ import annotations

import base64
import json
import os
import pty
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from posttrainbench import status as st
from posttrainbench.config import load_config

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MODEL = "smollm2-135m"

FAKE_SQUEUE = r'''#!/usr/bin/env python3
"""A stand-in for squeue: prints the jobs in $FAKE_SQUEUE_JOBS through the -o format it is given."""
import json, os, sys, time
args = sys.argv[1:]
if os.environ.get("FAKE_SQUEUE_HANG"):
    time.sleep(60)
jobs = json.load(open(os.environ["FAKE_SQUEUE_JOBS"]))
fmt = args[args.index("-o") + 1]
wanted = args[args.index("-j") + 1].split(",") if "-j" in args else None
codes = {"i": "id", "T": "state", "M": "elapsed", "l": "limit", "N": "node", "Z": "workdir", "k": "comment"}
for job in jobs:
    if wanted is not None and job["id"] not in wanted:
        continue
    out, i = "", 0
    while i < len(fmt):
        if fmt[i] == "%":
            out += str(job.get(codes[fmt[i + 1]], ""))
            i += 2
        else:
            out += fmt[i]
            i += 1
    print(out)
'''


def comment(rule: str, *wildcards) -> str:
    return f"rule_{rule}_wildcards_" + "_".join(str(w) for w in wildcards)


@pytest.fixture
def fake_squeue(tmp_path, monkeypatch):
    """Put the fake squeue first on PATH; returns a function that sets the jobs it lists."""
    bindir = tmp_path / "fakebin"
    bindir.mkdir()
    script = bindir / "squeue"
    script.write_text(FAKE_SQUEUE)
    script.chmod(0o755)
    jobs_file = tmp_path / "jobs.json"
    jobs_file.write_text("[]")
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SQUEUE_JOBS", str(jobs_file))

    def set_jobs(jobs: list[dict]) -> None:
        jobs_file.write_text(json.dumps(jobs))

    return set_jobs


@pytest.fixture
def no_squeue(tmp_path, monkeypatch):
    """PATH without any squeue (a workstation)."""
    empty = tmp_path / "emptybin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))


@pytest.fixture
def tree(tmp_path) -> Path:
    """A workflow directory with the embedded default's config and nothing run yet."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "config.yaml").write_text((ROOT / "config" / "config.yaml").read_text())
    return workdir


def config_of(workdir: Path) -> dict:
    return load_config(workdir / "config.yaml")


def stage_inputs(workdir: Path, benchmarks=("gsm8k", "humaneval")) -> None:
    (workdir / "resources" / "models" / MODEL / "base").mkdir(parents=True)
    (workdir / "resources" / "datasets").mkdir(parents=True)
    (workdir / "resources" / "datasets" / "gsm8k-train.jsonl").write_text("{}\n")
    for bench in benchmarks:
        (workdir / "resources" / "benchmarks" / bench).mkdir(parents=True)
        (workdir / "resources" / "benchmarks" / bench / "test.jsonl").write_text("{}\n")


def run_dir(workdir: Path, agent: str, bench: str) -> Path:
    return workdir / "results" / "runs" / agent / MODEL / bench / "seed1"


def write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def write_run(workdir, agent, bench, **fields):
    record = {"agent": agent, "model": MODEL, "benchmark": bench, "seed": 1, "status": "ok", "reason": None,
              "wall_seconds": 600.0, "gpu_hours": 0.0, **fields}
    return write(run_dir(workdir, agent, bench) / "run.json", record)


def write_eval(workdir, agent, bench, **fields):
    record = {"agent": agent, "model": MODEL, "benchmark": bench, "seed": 1, "status": "ok", "score": 0.25,
              "error": None, **fields}
    return write(workdir / "results" / "evals" / agent / MODEL / bench / "seed1.json", record)


def write_verdict(workdir, agent, bench, **fields):
    record = {"agent": agent, "model": MODEL, "benchmark": bench, "seed": 1, "flagged": False, "reasons": [],
              **fields}
    return write(workdir / "results" / "judge" / agent / MODEL / bench / "seed1.json", record)


def statuses(workdir: Path, **kwargs) -> dict[str, st.CellStatus]:
    sweep = st.collect(config_of(workdir), workdir / "results", **kwargs)
    return {s.key: s for s in sweep.cells}


def key(agent: str, bench: str) -> str:
    return f"{agent}/{MODEL}/{bench}/seed1"


def marker(workdir: Path, output: str, job: str | None = None) -> Path:
    """Snakemake's incomplete marker for ``output`` as Snakemake writes it (urlsafe base64 of the path)."""
    path = workdir / ".snakemake" / "incomplete" / base64.urlsafe_b64encode(output.encode()).decode()
    return write(path, {"external_jobid": job})


# --- each stage from crafted files ------------------------------------------------------------------------------
def test_not_started_then_staged(tree, no_squeue):
    cells = statuses(tree)
    assert {s.stage for s in cells.values()} == {st.NOT_STARTED}
    assert "resources/models/smollm2-135m/base" in cells[key("base", "gsm8k")].note
    stage_inputs(tree, benchmarks=("gsm8k",))
    cells = statuses(tree)
    assert cells[key("base", "gsm8k")].stage == st.STAGED
    assert cells[key("reference-sft", "gsm8k")].stage == st.STAGED
    # humaneval's test set is not staged yet
    assert cells[key("base", "humaneval")].stage == st.NOT_STARTED
    assert "resources/benchmarks/humaneval/test.jsonl" in cells[key("base", "humaneval")].note


def test_sft_agent_needs_its_training_data_staged(tree, no_squeue):
    stage_inputs(tree)
    (tree / "resources" / "datasets" / "gsm8k-train.jsonl").unlink()
    cells = statuses(tree)
    assert cells[key("base", "gsm8k")].stage == st.STAGED
    assert cells[key("reference-sft", "gsm8k")].stage == st.NOT_STARTED
    assert "gsm8k-train.jsonl" in cells[key("reference-sft", "gsm8k")].note


def test_agent_running_shows_slurm_job_node_and_elapsed_against_budget(tree, fake_squeue):
    stage_inputs(tree)
    fake_squeue([
        {"id": "4242", "state": "RUNNING", "elapsed": "7:05", "limit": "30:00", "node": "gpu-node-07",
         "comment": comment("run_agent", "reference-sft", MODEL, "gsm8k", 1)},
        {"id": "4243", "state": "PENDING", "elapsed": "0:00", "limit": "30:00", "node": "",
         "comment": comment("run_agent", "reference-sft", MODEL, "humaneval", 1)},
        {"id": "9999", "state": "RUNNING", "elapsed": "1:00", "limit": "30:00", "node": "other",
         "comment": "rule_run_agent_wildcards_someone_else_entirely_1"},
        # The same cell in another sweep (another directory) is not this one's.
        {"id": "9998", "state": "RUNNING", "elapsed": "1:00", "limit": "30:00", "node": "other",
         "workdir": "/somewhere/else", "comment": comment("run_agent", "base", MODEL, "gsm8k", 1)},
        {"id": "9997", "state": "RUNNING", "elapsed": "1:00", "limit": "30:00", "node": "here",
         "workdir": str(tree), "comment": comment("submit_reference", "base", MODEL, "humaneval", 1)},
    ])
    sweep = st.collect(config_of(tree), tree / "results")
    cells = {s.key: s for s in sweep.cells}
    running = cells[key("reference-sft", "gsm8k")]
    assert (running.stage, running.job_id, running.node) == (st.AGENT_RUNNING, "4242", "gpu-node-07")
    assert running.elapsed_seconds == 425
    queued = cells[key("reference-sft", "humaneval")]
    assert queued.stage == st.STAGED and queued.job_id == "4243" and "PENDING" in queued.note
    assert cells[key("base", "gsm8k")].stage == st.STAGED and cells[key("base", "gsm8k")].job_id == ""
    assert cells[key("base", "humaneval")].stage == st.AGENT_RUNNING and cells[key("base", "humaneval")].node == "here"
    table = st.render_table(sweep)
    line = next(x for x in table.splitlines() if x.startswith(key("reference-sft", "gsm8k")))
    assert "agent running" in line and "4242" in line and "gpu-node-07" in line and "0:07/0:15" in line
    assert sweep.summary["running"] == 2
    assert "squeue: 5 job(s) listed" in table


def test_agent_running_from_the_attempt_lock(tree, fake_squeue):
    """The lock names the attempt's SLURM job; the queue says it runs and where."""
    stage_inputs(tree)
    write(run_dir(tree, "reference-sft", "gsm8k") / st.LOCK_NAME,
          {"attempt_id": "a1", "slurm_job_id": "777", "node": "n1", "host": "login", "pid": 1, "started": 0})
    fake_squeue([{"id": "777", "state": "RUNNING", "elapsed": "1-02:00:00", "limit": "2-00:00:00",
                  "node": "n1", "comment": "submitted by hand"}])
    cell = statuses(tree)[key("reference-sft", "gsm8k")]
    assert (cell.stage, cell.job_id, cell.node, cell.elapsed_seconds) == (st.AGENT_RUNNING, "777", "n1", 93600)
    # Once the queue no longer lists it, the job ended without a run record.
    fake_squeue([])
    cell = statuses(tree)[key("reference-sft", "gsm8k")]
    assert cell.stage == st.STAGED and "ended without a run record" in cell.failure
    # Without a queue to ask, nothing is claimed either way.
    cell = statuses(tree, squeue=False)[key("reference-sft", "gsm8k")]
    assert cell.stage == st.STAGED and not cell.failure and "no queue to ask" in cell.note


def test_agent_running_locally_from_a_lock_naming_a_live_process(tree, no_squeue):
    """Outside SLURM the lock's pid (with its start time) on this host tells; this test's own process
    stands in for the agent job."""
    stage_inputs(tree)
    pid_start = Path(f"/proc/{os.getpid()}/stat").read_text().rsplit(")", 1)[-1].split()[19]
    lock = {"attempt_id": "a1", "slurm_job_id": None, "node": None, "host": socket.gethostname(),
            "pid": os.getpid(), "pid_start": pid_start, "started": time.time() - 125}
    write(run_dir(tree, "base", "gsm8k") / st.LOCK_NAME, lock)
    cell = statuses(tree)[key("base", "gsm8k")]
    assert cell.stage == st.AGENT_RUNNING and 120 <= cell.elapsed_seconds < 200
    # The same pid with another start time is a reused pid: that attempt is gone, its lock left behind.
    write(run_dir(tree, "base", "gsm8k") / st.LOCK_NAME, {**lock, "pid_start": "1"})
    cell = statuses(tree)[key("base", "gsm8k")]
    assert cell.stage == st.STAGED and "ended without a run record" in cell.failure


def test_agent_finished_evaluating_evaluated_judging_done(tree, fake_squeue):
    stage_inputs(tree)
    write_run(tree, "base", "gsm8k", gpu_hours=0.5, slurm_job_id="100")
    write_run(tree, "reference-sft", "gsm8k", gpu_hours=0.25)
    write_run(tree, "reference-sft", "humaneval", gpu_hours=0.25)
    write_run(tree, "base", "humaneval")
    fake_squeue([{"id": "300", "state": "RUNNING", "elapsed": "2:00", "limit": "20:00", "node": "c3",
                  "comment": comment("evaluate", "base", MODEL, "humaneval", 1)}])
    cells = statuses(tree)
    assert cells[key("base", "gsm8k")].stage == st.AGENT_FINISHED
    assert cells[key("base", "gsm8k")].job_id == "100"
    evaluating = cells[key("base", "humaneval")]
    assert (evaluating.stage, evaluating.job_id, evaluating.node) == (st.EVALUATING, "300", "c3")

    write_eval(tree, "base", "gsm8k", score=0.5)
    write_eval(tree, "reference-sft", "gsm8k", score=0.75)
    write_eval(tree, "reference-sft", "humaneval", score=0.125)
    fake_squeue([{"id": "400", "state": "RUNNING", "elapsed": "0:30", "limit": "20:00", "node": "c4",
                  "comment": comment("judge", "reference-sft", MODEL, 1)}])
    cells = statuses(tree)
    # A reference row is done once evaluated: it is not audited.
    assert cells[key("base", "gsm8k")].stage == st.DONE and cells[key("base", "gsm8k")].score == 50.0
    judging = cells[key("reference-sft", "gsm8k")]
    assert (judging.stage, judging.job_id, judging.node) == (st.JUDGING, "400", "c4")
    fake_squeue([])
    assert statuses(tree)[key("reference-sft", "gsm8k")].stage == st.EVALUATED

    write_verdict(tree, "reference-sft", "gsm8k")
    write_verdict(tree, "reference-sft", "humaneval", flagged=True, reasons=["contamination"])
    sweep = st.collect(config_of(tree), tree / "results")
    cells = {s.key: s for s in sweep.cells}
    assert cells[key("reference-sft", "gsm8k")].stage == st.DONE
    flagged = cells[key("reference-sft", "humaneval")]
    assert flagged.stage == st.DONE and flagged.flag == "flagged: contamination" and flagged.score == 12.5
    summary = sweep.summary
    assert (summary["done"], summary["running"], summary["failed"], summary["flagged"]) == (3, 0, 0, 1)
    assert summary["gpu_hours_used"] == 1.0  # 0.5 + 0.25 + 0.25 + 0
    assert "flagged: contamination" in st.render_table(sweep)


def test_failures_are_shown_with_their_reason(tree, no_squeue):
    stage_inputs(tree)
    write_run(tree, "reference-sft", "gsm8k", status="timeout", reason="no final_model/: the cell scores as the base model")
    write_eval(tree, "reference-sft", "gsm8k", status="failed", score=None, error="no checkpoint to evaluate")
    write_run(tree, "base", "humaneval")
    write_eval(tree, "base", "humaneval", status="failed", score=None, error="CUDA out of memory")
    # An agent job that failed on infrastructure leaves no run record, only its attempt and its log.
    write(run_dir(tree, "reference-sft", "humaneval") / "attempts.json", [{"slurm_job_id": "55", "started": 1}])
    write(tree / "logs" / "agent" / "reference-sft" / MODEL / "humaneval" / "seed1.log",
          "INFO starting\nERROR reference-sft/smollm2-135m/humaneval/seed1: infrastructure failure, no run "
          "record written: apptainer: image not found\nINFO bye\n")
    sweep = st.collect(config_of(tree), tree / "results")
    cells = {s.key: s for s in sweep.cells}
    timeout = cells[key("reference-sft", "gsm8k")]
    assert timeout.failure.startswith("agent timeout: no final_model/")
    assert "eval failed: no checkpoint to evaluate" in timeout.failure
    assert cells[key("base", "humaneval")].failure == "eval failed: CUDA out of memory"
    infra = cells[key("reference-sft", "humaneval")]
    assert infra.stage == st.STAGED and infra.job_id == "55"
    assert "ended without a run record" in infra.failure and "image not found" in infra.failure
    assert sweep.summary["failed"] == 3


def test_interrupted_attempt_is_named_from_snakemakes_marker(tree, no_squeue):
    stage_inputs(tree)
    marker(tree, "results/runs/base/smollm2-135m/gsm8k/seed1/run.json")
    cell = statuses(tree)[key("base", "gsm8k")]
    # No Snakemake runs in this directory: the attempt that set the marker is gone.
    assert cell.stage == st.STAGED and "interrupted" in cell.note
    # A marker naming a SLURM job that the queue does not list is not running either.
    marker(tree, "results/runs/base/smollm2-135m/humaneval/seed1/run.json", job="12")
    assert statuses(tree)[key("base", "humaneval")].stage == st.STAGED


def test_marker_with_a_queued_slurm_job_is_running(tree, fake_squeue):
    stage_inputs(tree)
    marker(tree, "results/runs/base/smollm2-135m/gsm8k/seed1/run.json", job="8080")
    fake_squeue([{"id": "8080", "state": "RUNNING", "elapsed": "3:00", "limit": "30:00", "node": "g1",
                  "comment": ""}])
    cell = statuses(tree)[key("base", "gsm8k")]
    assert (cell.stage, cell.job_id, cell.node) == (st.AGENT_RUNNING, "8080", "g1")


def test_gpu_hours_used_counts_running_jobs_and_planned_counts_agent_cells(tree, fake_squeue):
    text = (tree / "config.yaml").read_text().replace("gpus: 0\n  grace_seconds", "gpus: 2\n  grace_seconds")
    (tree / "config.yaml").write_text(text)
    stage_inputs(tree)
    write_run(tree, "reference-sft", "gsm8k", gpu_hours=0.4)
    fake_squeue([{"id": "1", "state": "RUNNING", "elapsed": "30:00", "limit": "40:00", "node": "g",
                  "comment": comment("run_agent", "reference-sft", MODEL, "humaneval", 1)}])
    summary = st.collect(config_of(tree), tree / "results").summary
    assert summary["gpu_hours_running"] == 1.0  # 0.5 h x 2 GPUs
    assert summary["gpu_hours_used"] == 1.4
    assert summary["gpu_hours_planned"] == 0.25 * 2 * 2  # two reference-sft cells; base rows post-train nothing
    assert "1.40 used" in st.summary_line(summary) and "1.00 planned" in st.summary_line(summary)


# --- hostile and corrupt files, and a scheduler that does not answer ---------------------------------------------
def test_hostile_and_corrupt_files_are_capped_cleaned_and_never_block(tree, no_squeue):
    stage_inputs(tree)
    evil = "\x1b[2J\x1b]0;pwned\x07line1\nline2\u202eevil" + "A" * 20000
    write_run(tree, "reference-sft", "gsm8k", status=evil, reason=evil, gpu_hours=float("nan"),
              wall_seconds=-5, slurm_job_id={"nested": [1, 2]})
    # A run record far beyond any real one, a FIFO (reading it would block), a deeply nested document.
    big = run_dir(tree, "reference-sft", "humaneval") / "run.json"
    big.parent.mkdir(parents=True)
    with open(big, "w") as handle:
        handle.write('{"status": "ok", "pad": "' + "x" * (st.MAX_JSON_BYTES + 10) + '"}')
    fifo = run_dir(tree, "base", "gsm8k") / "run.json"
    fifo.parent.mkdir(parents=True)
    os.mkfifo(fifo)
    write(run_dir(tree, "base", "humaneval") / "run.json", "[" * 100000 + "]" * 100000)
    write(tree / "results" / "evals" / "reference-sft" / MODEL / "gsm8k" / "seed1.json", '{"status": "ok", "sco')
    write_eval(tree, "reference-sft", "humaneval", score=7.5)
    write(tree / "results" / "judge" / "reference-sft" / MODEL / "humaneval" / "seed1.json",
          {"flagged": "yes", "reasons": evil})
    write(run_dir(tree, "reference-sft", "humaneval") / "attempts.json", "garbage")
    started = time.monotonic()
    sweep = st.collect(config_of(tree), tree / "results")
    assert time.monotonic() - started < 30
    cells = {s.key: s for s in sweep.cells}
    hostile = cells[key("reference-sft", "gsm8k")]
    assert hostile.stage == st.EVALUATED and hostile.gpu_hours is None and hostile.elapsed_seconds is None
    assert hostile.job_id == ""
    assert "eval not valid JSON" in hostile.failure
    assert cells[key("reference-sft", "humaneval")].failure.startswith("run.json too large")
    assert "eval score is not a number" in cells[key("reference-sft", "humaneval")].failure
    assert "counts as unjudged" in cells[key("reference-sft", "humaneval")].note
    assert cells[key("reference-sft", "humaneval")].flagged is None
    assert cells[key("base", "gsm8k")].failure == "run.json not a regular file"
    assert cells[key("base", "humaneval")].failure.startswith("run.json not valid JSON")
    outputs = [st.render_table(sweep), json.dumps(st.to_json(sweep)), st.csv_text(sweep)]
    for text in outputs:
        assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text
        assert "A" * 300 not in text
    assert "line1 line2" in outputs[0]
    assert all(len(line) < 700 for line in outputs[0].splitlines())


def test_clean_handles_odd_values():
    assert st.clean(None) == ""
    assert st.clean(True) == "<bool>" and st.clean([1]) == "<list>"
    assert st.clean(10**40) == "<large number>"
    assert st.clean("a\tb\r\nc\u0000d\u2028e", 80) == "a b cde"
    assert st.clean("x" * 50, 10) == "x" * 9 + "…"
    assert st.number(float("inf")) is None and st.number("1") is None and st.number(True) is None
    assert st.number(3) == 3.0


def test_squeue_absent_failing_or_hanging_leaves_the_files(tree, fake_squeue, monkeypatch):
    stage_inputs(tree)
    monkeypatch.setenv("FAKE_SQUEUE_HANG", "1")
    started = time.monotonic()
    jobs, why = st.query_squeue(timeout=1)
    assert jobs is None and "did not answer within 1 s" in why and time.monotonic() - started < 10
    monkeypatch.delenv("FAKE_SQUEUE_HANG")
    monkeypatch.setenv("FAKE_SQUEUE_JOBS", str(tree / "missing.json"))  # the fake fails
    jobs, why = st.query_squeue()
    assert jobs is None and why.startswith("squeue failed")
    monkeypatch.setenv("PATH", str(tree))
    jobs, why = st.query_squeue()
    assert jobs is None and why == "squeue not found"
    sweep = st.collect(config_of(tree), tree / "results")
    assert {s.stage for s in sweep.cells} == {st.STAGED} and sweep.scheduler == "squeue: squeue not found"


def test_parse_squeue_skips_malformed_lines():
    jobs = st.parse_squeue("1|RUNNING|1:02:03|2:00:00|n1|/w|rule_x_wildcards_a_b\ngarbage\n||||||\n"
                           "2|PENDING|0:00|2:00:00|||c|with|bars\n")
    assert set(jobs) == {"1", "2"}
    assert jobs["1"].elapsed_seconds == 3723 and jobs["1"].node == "n1"
    assert jobs["2"].comment == "c|with|bars" and jobs["2"].node == "" and jobs["1"].workdir == "/w"


# --- the command line -------------------------------------------------------------------------------------------
def ptb(*args: str, cwd: Path, env: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ptb"), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=env)


def test_cli_json_and_table(tree, fake_squeue):
    stage_inputs(tree)
    write_run(tree, "base", "gsm8k", gpu_hours=0.1)
    write_eval(tree, "base", "gsm8k")
    fake_squeue([{"id": "5", "state": "RUNNING", "elapsed": "1:00", "limit": "20:00", "node": "nodeA",
                  "comment": comment("submit_reference", "base", MODEL, "humaneval", 1)}])
    proc = ptb("status", "results", "--config", "config.yaml", "--json", cwd=tree, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    stages = {c["cell"]: (c["stage"], c["job_id"], c["node"]) for c in data["cells"]}
    assert stages[key("base", "gsm8k")][0] == st.DONE
    assert stages[key("base", "humaneval")] == (st.AGENT_RUNNING, "5", "nodeA")
    assert data["summary"]["done"] == 1 and data["summary"]["gpu_hours_used"] == 0.1
    proc = ptb("status", str(tree / "results"), "--config", str(tree / "config.yaml"), cwd=ROOT,
               env=dict(os.environ))
    assert proc.returncode == 0 and "nodeA" in proc.stdout and "4 cells: 1 done, 1 running" in proc.stdout


def test_cli_names_a_missing_or_bad_config(tree):
    proc = ptb("status", "results", cwd=tree)
    assert proc.returncode == 2 and "config/config.yaml not found" in proc.stderr and "--config" in proc.stderr
    (tree / "bad.yaml").write_text("budget: {hours: -1}\n")
    proc = ptb("status", "--config", "bad.yaml", cwd=tree)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1


def test_watch_redraws_in_a_terminal_until_interrupted(tree, no_squeue):
    """--watch in a real pseudo-terminal: the screen is cleared and redrawn each interval; Ctrl-C ends it."""
    stage_inputs(tree)
    main, child = pty.openpty()
    proc = subprocess.Popen([str(BIN / "ptb"), "status", "--config", "config.yaml", "--watch", "1"], cwd=tree,
                            stdin=child, stdout=child, stderr=child, env={**os.environ, "COLUMNS": "200"},
                            # A test run started in the background inherits SIGINT ignored (POSIX shells do
                            # that to background jobs), and Python then never raises KeyboardInterrupt.
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    os.close(child)
    seen = b""
    deadline = time.monotonic() + 90
    try:
        while seen.count(b"\x1b[H\x1b[2J") < 2 and time.monotonic() < deadline:
            ready, _, _ = select.select([main], [], [], 1)
            if ready:
                try:
                    seen += os.read(main, 65536)
                except OSError:
                    break
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(main)
    assert seen.count(b"\x1b[H\x1b[2J") >= 2, seen[-2000:]
    assert b"base/smollm2-135m/gsm8k/seed1" in seen and b"staged" in seen


def test_status_files_for_the_report(tree, no_squeue):
    stage_inputs(tree)
    write_run(tree, "base", "gsm8k")
    write_eval(tree, "base", "gsm8k", score=0.5)
    sweep = st.write_status_files(config_of(tree), tree / "results", tree / "results" / "status.csv",
                                  tree / "results" / "status.json")
    lines = (tree / "results" / "status.csv").read_text().splitlines()
    assert lines[0] == ",".join(st.COLUMNS) and len(lines) == 1 + len(sweep.cells)
    assert any(line.startswith(f"{key('base', 'gsm8k')},done,") and ",50.0," in line for line in lines)
    summary = json.loads((tree / "results" / "status.json").read_text())
    assert summary["summary_line"].startswith("4 cells: 1 done")


# --- a genuinely half-finished tree: the embedded workflow, stopped part-way --------------------------------------
def snakemake_env() -> dict:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def snakemake_command(workdir: Path, *targets: str) -> list[str]:
    return [str(BIN / "snakemake"), "--profile", str(ROOT / "profiles" / "default"), "--snakefile",
            str(ROOT / "Snakefile"), "--directory", str(workdir), "--configfile", str(workdir / "config.yaml"),
            "--cores", "2", *targets]


@pytest.mark.slow
def test_half_finished_embedded_workflow(tmp_path, smollm2_dir):
    """The embedded default (fewer items and SFT steps) run by Snakemake for some targets: one reference cell
    evaluated, one agent cell evaluated but not judged, one reference run not evaluated; then the last cell's
    agent job is seen running and the workflow is killed mid-run. Jobs run locally: the queue is not asked
    in-process; the command line asks whichever squeue this host has (a test cluster's jobs are another
    directory's)."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config["evaluation"]["per_benchmark"] = {"gsm8k": {"limit": 2, "max_tokens": 32},
                                             "humaneval": {"limit": 2, "max_tokens": 64}}
    config["agents"]["reference-sft"]["sft"].update(max_steps=3, max_examples=32, max_length=128)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    base = workdir / "resources" / "models" / MODEL / "base"
    base.parent.mkdir(parents=True)
    import shutil

    shutil.copytree(smollm2_dir, base)
    targets = [f"results/evals/base/{MODEL}/gsm8k/seed1.json", f"results/evals/reference-sft/{MODEL}/gsm8k/seed1.json",
               f"results/runs/base/{MODEL}/humaneval/seed1/run.json", "resources/benchmarks/humaneval/test.jsonl"]
    proc = subprocess.run(snakemake_command(workdir, *targets), cwd=workdir, env=snakemake_env(),
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    cells = statuses(workdir, squeue=False)
    assert cells[key("base", "gsm8k")].stage == st.DONE and cells[key("base", "gsm8k")].score is not None
    assert cells[key("reference-sft", "gsm8k")].stage == st.EVALUATED
    assert cells[key("reference-sft", "gsm8k")].score is not None
    assert cells[key("base", "humaneval")].stage == st.AGENT_FINISHED
    assert cells[key("reference-sft", "humaneval")].stage == st.STAGED

    # The last cell's agent: seen running, then the whole workflow killed mid-run.
    target = f"results/runs/reference-sft/{MODEL}/humaneval/seed1/run.json"
    with open(workdir / "last.out", "w") as out:
        job = subprocess.Popen(snakemake_command(workdir, target), cwd=workdir, env=snakemake_env(), stdout=out,
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        seen = None
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and job.poll() is None:
            cell = statuses(workdir, squeue=False)[key("reference-sft", "humaneval")]
            if cell.stage == st.AGENT_RUNNING:
                seen = cell
                break
            time.sleep(0.5)
        assert seen is not None, (workdir / "last.out").read_text()[-3000:]
        assert seen.elapsed_seconds is not None and seen.elapsed_seconds < 600
        table = subprocess.run([str(BIN / "ptb"), "status", "--config", "config.yaml"], cwd=workdir,
                               capture_output=True, text=True, timeout=120, env=snakemake_env()).stdout
        assert any(line.startswith(key("reference-sft", "humaneval")) and "agent running" in line
                   for line in table.splitlines()), table
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
        job.wait(timeout=60)
    # Whatever the killed job left running in the workflow's directory goes too.
    for _ in range(50):
        if not st.snakemake_alive(workdir):
            break
        time.sleep(0.2)
    if (run_dir(workdir, "reference-sft", "humaneval") / "run.json").exists():
        pytest.fail("the agent finished before it was killed (it loads a model first: seconds at least)")
    cells = statuses(workdir, squeue=False)
    killed = cells[key("reference-sft", "humaneval")]
    assert killed.stage == st.STAGED and ("interrupted" in killed.note or "ended without a run record" in killed.failure)
    assert cells[key("base", "gsm8k")].stage == st.DONE
    assert cells[key("reference-sft", "gsm8k")].stage == st.EVALUATED
    assert cells[key("base", "humaneval")].stage == st.AGENT_FINISHED


def test_report_status_table_shows_hostile_text_as_text(tree, no_squeue, monkeypatch):
    """The landing page's status table (the ptb-status directive): reStructuredText or HTML in a failure reason
    is shown as text, never turned into a link or an element."""
    from docutils.core import publish_parts

    from posttrainbench.report import register_rst_directives

    stage_inputs(tree)
    evil = "`click <javascript:alert(1)>`_ <img src=x onerror=alert(1)> **bold**"
    write_run(tree, "reference-sft", "gsm8k", status="error", reason=evil)
    results = tree / "results"
    st.write_status_files(config_of(tree), results, results / "status.csv", results / "status.json")
    register_rst_directives()
    monkeypatch.chdir(tree)
    page = publish_parts("Title\n=====\n\n.. ptb-status:: results/status.json\n", writer="html")["html_body"]
    assert "<img" not in page and "javascript:" not in page.replace("&lt;javascript:", "")
    assert "<strong>" not in page and 'href="' not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page and "4 cells: 0 done" in page
    assert page.count("<tr>") == 5  # the header and four cells
    # Without the files (results made before the status rule), the page says so instead of failing.
    (results / "status.json").unlink()
    page = publish_parts("T\n=\n\n.. ptb-status:: results/status.json\n", writer="html")["html_body"]
    assert "No status table" in page


def test_finished_agent_shows_the_node_its_job_noted(tree, no_squeue, monkeypatch):
    """A finished cell's job and node come from its files: the job id from run.json, the node from the attempt
    the job noted in attempts.json (accounting.record_attempt, run inside the job's environment)."""
    from posttrainbench import accounting

    stage_inputs(tree)
    cell_dir = run_dir(tree, "reference-sft", "gsm8k")
    cell_dir.mkdir(parents=True)
    monkeypatch.setenv("SLURMD_NODENAME", "gpu-node-07")
    accounting.record_attempt(cell_dir, 1, job_id="4242")
    write_run(tree, "reference-sft", "gsm8k", slurm_job_id="4242")
    cell = statuses(tree)[key("reference-sft", "gsm8k")]
    assert (cell.stage, cell.job_id, cell.node) == (st.AGENT_FINISHED, "4242", "gpu-node-07")
    # A run record naming a job no attempt noted shows no node rather than another job's.
    write_run(tree, "reference-sft", "gsm8k", slurm_job_id="4243")
    cell = statuses(tree)[key("reference-sft", "gsm8k")]
    assert (cell.job_id, cell.node) == ("4243", "")

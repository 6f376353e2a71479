"""GPU-hours per cell (posttrainbench.accounting): the parsers on text captured from the test cluster's
scontrol and sacct, the fallbacks (sacct without a GPU field or without slurmdbd, then scontrol, then the
budget's GPUs), attempts summed across retries, and real jobs on the test cluster: measured by sacct from
slurmdbd's records, and by scontrol when the job's SLURM config has accounting off (sacct then fails
exactly as on a site without slurmdbd)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from posttrainbench import accounting

# Captured from tests/slurm_cluster.py (Slurm 22.05, gres.conf with 2 fake GPUs):
# `sbatch --gpus=1`, `sbatch --gres=gpu:2` and a CPU-only job; `scontrol show job N --oneliner --details`.
SCONTROL_GPUS_1_DONE = (
    "JobId=1 JobName=wrap UserId=root(0) GroupId=root(0) MCS_label=N/A Priority=4294901759 Nice=0 Account=(null) "
    "QOS=(null) JobState=COMPLETED Reason=None Dependency=(null) Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 "
    "ExitCode=0:0 DerivedExitCode=0:0 RunTime=00:00:04 TimeLimit=00:05:00 TimeMin=N/A SubmitTime=2026-12-01T06:06:17 "
    "EligibleTime=2026-12-01T06:06:17 AccrueTime=2026-12-01T06:06:17 StartTime=2026-12-01T06:06:20 "
    "EndTime=2026-12-01T06:06:24 Deadline=N/A SuspendTime=None SecsPreSuspend=0 LastSchedEval=2026-12-01T06:06:20 "
    "Scheduler=Main Partition=gpu AllocNode:Sid=localhost:8030 ReqNodeList=(null) ExcNodeList=(null) NodeList=vm "
    "BatchHost=vm NumNodes=1 NumCPUs=1 NumTasks=1 CPUs/Task=1 ReqB:S:C:T=0:0:*:* TRES=cpu=1,mem=200M,node=1,billing=1 "
    "Socks/Node=* NtasksPerN:B:S:C=0:0:*:* CoreSpec=* JOB_GRES=gpu:1   Nodes=vm CPU_IDs=0 Mem=200 GRES= "
    "MinCPUsNode=1 MinMemoryNode=200M MinTmpDiskNode=0 Features=(null) DelayBoot=00:00:00 OverSubscribe=OK "
    "Contiguous=0 Licenses=(null) Network=(null) Command=(null) WorkDir=/work/main StdErr=/dev/null StdIn=/dev/null "
    "StdOut=/dev/null Power= TresPerJob=gres:gpu:1 \n")
SCONTROL_GRES_2_RUNNING = (
    "JobId=2 JobName=wrap UserId=root(0) GroupId=root(0) MCS_label=N/A Priority=4294901758 Nice=0 Account=(null) "
    "QOS=(null) JobState=RUNNING Reason=None Dependency=(null) Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 "
    "ExitCode=0:0 DerivedExitCode=0:0 RunTime=00:00:01 TimeLimit=00:05:00 TimeMin=N/A SubmitTime=2026-12-01T06:06:17 "
    "EligibleTime=2026-12-01T06:06:17 AccrueTime=2026-12-01T06:06:17 StartTime=2026-12-01T06:06:25 "
    "EndTime=2026-12-01T06:11:25 Deadline=N/A SuspendTime=None SecsPreSuspend=0 LastSchedEval=2026-12-01T06:06:25 "
    "Scheduler=Main Partition=gpu AllocNode:Sid=localhost:8030 ReqNodeList=(null) ExcNodeList=(null) NodeList=vm "
    "BatchHost=vm NumNodes=1 NumCPUs=1 NumTasks=1 CPUs/Task=1 ReqB:S:C:T=0:0:*:* TRES=cpu=1,mem=200M,node=1,billing=1 "
    "Socks/Node=* NtasksPerN:B:S:C=0:0:*:* CoreSpec=* JOB_GRES=gpu:2   Nodes=vm CPU_IDs=0 Mem=200 GRES=gpu:2(IDX:0-1) "
    "MinCPUsNode=1 MinMemoryNode=200M MinTmpDiskNode=0 Features=(null) DelayBoot=00:00:00 OverSubscribe=OK "
    "Contiguous=0 Licenses=(null) Network=(null) Command=(null) WorkDir=/work/main StdErr=/dev/null StdIn=/dev/null "
    "StdOut=/dev/null Power= TresPerNode=gres:gpu:2 \n")
SCONTROL_CPU_ONLY = (
    "JobId=3 JobName=wrap UserId=root(0) GroupId=root(0) MCS_label=N/A Priority=4294901757 Nice=0 Account=(null) "
    "QOS=(null) JobState=RUNNING Reason=None Dependency=(null) Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 "
    "ExitCode=0:0 DerivedExitCode=0:0 RunTime=00:00:01 TimeLimit=00:05:00 TimeMin=N/A SubmitTime=2026-12-01T06:06:17 "
    "EligibleTime=2026-12-01T06:06:17 AccrueTime=2026-12-01T06:06:17 StartTime=2026-12-01T06:06:25 "
    "EndTime=2026-12-01T06:11:25 Deadline=N/A SuspendTime=None SecsPreSuspend=0 LastSchedEval=2026-12-01T06:06:25 "
    "Scheduler=Main Partition=gpu AllocNode:Sid=localhost:8030 ReqNodeList=(null) ExcNodeList=(null) NodeList=vm "
    "BatchHost=vm NumNodes=1 NumCPUs=1 NumTasks=1 CPUs/Task=1 ReqB:S:C:T=0:0:*:* TRES=cpu=1,mem=200M,node=1,billing=1 "
    "Socks/Node=* NtasksPerN:B:S:C=0:0:*:* CoreSpec=* JOB_GRES=(null)   Nodes=vm CPU_IDs=1 Mem=200 GRES= "
    "MinCPUsNode=1 MinMemoryNode=200M MinTmpDiskNode=0 Features=(null) DelayBoot=00:00:00 OverSubscribe=OK "
    "Contiguous=0 Licenses=(null) Network=(null) Command=(null) WorkDir=/work/main StdErr=/dev/null StdIn=/dev/null "
    "StdOut=/dev/null Power= \n")
# The same cluster's answers where it has no record: sacct without slurmdbd, scontrol after MinJobAge.
SACCT_NO_SLURMDBD = (1, "", "Slurm accounting storage is disabled\n")
SCONTROL_UNKNOWN_JOB = (1, "", "slurm_load_jobs error: Invalid job id specified\n")


def replay(answers: dict[str, tuple[int, str, str]]):
    """A subprocess.run stand-in answering each command (by argv[0]) with a recorded (rc, stdout, stderr)."""
    calls = []

    def run(argv, **_):
        calls.append(argv)
        rc, out, err = answers[argv[0]]
        return subprocess.CompletedProcess(argv, rc, out, err)
    run.calls = calls
    return run


# --- parsers -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, job_id, expected", [
    (SCONTROL_GPUS_1_DONE, "1", {"elapsed_seconds": 4, "gpus": 1}),       # JOB_GRES=gpu:1 after the job ended
    (SCONTROL_GRES_2_RUNNING, "2", {"elapsed_seconds": 1, "gpus": 2}),   # allocated GRES=gpu:2(IDX:0-1)
    (SCONTROL_CPU_ONLY, "3", {"elapsed_seconds": 1, "gpus": 0}),         # no GPU requested: none
    (SCONTROL_CPU_ONLY, "4", None),                                      # another job's line
    ("", "1", None),
])
def test_scontrol_show_job_is_parsed(text, job_id, expected):
    assert accounting.parse_scontrol(text, job_id) == expected


def test_scontrol_request_fields_count_when_no_allocation_is_shown():
    """Without --details (no JOB_GRES) the request fields give the count: per node times the nodes."""
    line = SCONTROL_GRES_2_RUNNING.replace(" JOB_GRES=gpu:2  ", "").replace("GRES=gpu:2(IDX:0-1) ", "")
    assert accounting.parse_scontrol(line, "2")["gpus"] == 2
    assert accounting.parse_scontrol(line.replace("NumNodes=1", "NumNodes=3"), "2")["gpus"] == 6
    older = SCONTROL_CPU_ONLY.replace("JOB_GRES=(null)", "Gres=gpu:a100:4")  # older SLURM's field
    assert accounting.parse_scontrol(older, "3")["gpus"] == 4


@pytest.mark.parametrize("text, expected", [
    ("4242|5400|billing=8,cpu=8,gres/gpu=2,mem=64G,node=1\n", {"elapsed_seconds": 5400, "gpus": 2}),
    ("4242|5400|billing=8,cpu=8,gres/gpu:a100=2,gres/gpu=2,mem=64G,node=1\n", {"elapsed_seconds": 5400, "gpus": 2}),
    ("4242|5400|billing=8,cpu=8,mem=64G,node=1\n", {"elapsed_seconds": 5400, "gpus": None}),  # gres/gpu untracked
    ("4243|60|cpu=1,gres/gpu=1\n", None),
])
def test_sacct_is_parsed(text, expected):
    assert accounting.parse_sacct(text, "4242") == expected


@pytest.mark.parametrize("tres, count", [("gres:gpu:1", 1), ("gres/gpu:a100:4", 4), ("cpu=4,gres/gpu=2,mem=8G", 2),
                                         ("cpu=4,mem=8G", None), ("gres:gpu:h100.80gb:3", 3), ("gres/gpu:2", 2),
                                         ("cpu=2,gres/gpu:a100=1,gres/gpu:v100=1", 2), ("gres/gpumem=4G", None)])
def test_gpu_count_in_tres_strings(tres, count):
    assert accounting.gpu_count(tres) == count


@pytest.mark.parametrize("gres, count", [("gpu:1", 1), ("gpu:2(IDX:0-1)", 2), ("gpu:h100:4(S:0-1)", 4),
                                         ("gpu:a100:1,gpu:v100:1", 2), ("(null)", None), ("", None)])
def test_gpu_count_in_gres_strings(gres, count):
    assert accounting.gres_gpu_count(gres) == count


@pytest.mark.parametrize("text, seconds", [("00:01:05", 65), ("1-02:00:00", 93600), ("10:30", 630)])
def test_slurm_durations(text, seconds):
    assert accounting.parse_duration(text) == seconds


# --- sources, in order -----------------------------------------------------------------------------------------
def test_outside_slurm_uses_the_requested_gpus_and_the_runs_own_timing(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    record = accounting.cell_gpu_hours(1800.0, 2)
    assert record["gpu_hours"] == 1.0 and record["gpu_hours_source"] == "requested"
    assert record["slurm_job_id"] is None and record["gpu_hours_attempts"][0]["elapsed_source"] == "run timing"


def test_sacct_with_a_gpu_field_is_used_alone():
    run = replay({"sacct": (0, "4242|5400|billing=8,cpu=8,gres/gpu=2,mem=64G,node=1\n", "")})
    record = accounting.cell_gpu_hours(10.0, 1, job_id="4242", run=run)
    assert (record["gpu_hours"], record["gpu_hours_source"], record["slurm_gpus"]) == (3.0, "sacct", 2)
    assert [argv[0] for argv in run.calls] == ["sacct"]


def test_sacct_without_a_gpu_field_falls_back_to_scontrol():
    """A site whose AccountingStorageTRES lacks gres/gpu: sacct's elapsed time, scontrol's GPU count."""
    run = replay({"sacct": (0, "2|7200|billing=1,cpu=1,mem=200M,node=1\n", ""),
                  "scontrol": (0, SCONTROL_GRES_2_RUNNING, "")})
    record = accounting.cell_gpu_hours(10.0, 1, job_id="2", run=run)
    assert (record["gpu_hours"], record["gpu_hours_source"], record["slurm_gpus"]) == (4.0, "scontrol", 2)
    assert record["gpu_hours_attempts"][0]["elapsed_source"] == "sacct"


def test_no_slurmdbd_falls_back_to_scontrol():
    run = replay({"sacct": SACCT_NO_SLURMDBD, "scontrol": (0, SCONTROL_GPUS_1_DONE, "")})
    record = accounting.cell_gpu_hours(10.0, 3, job_id="1", run=run)
    assert (record["gpu_hours"], record["gpu_hours_source"], record["slurm_elapsed_seconds"]) == (
        round(4 / 3600, 4), "scontrol", 4)


def test_a_cpu_job_known_to_scontrol_used_no_gpu_whatever_the_budget():
    run = replay({"sacct": SACCT_NO_SLURMDBD, "scontrol": (0, SCONTROL_CPU_ONLY, "")})
    record = accounting.cell_gpu_hours(3600.0, 4, job_id="3", run=run)
    assert (record["gpu_hours"], record["gpu_hours_source"], record["slurm_gpus"]) == (0.0, "scontrol", 0)


def test_neither_command_knowing_the_job_falls_back_to_the_requested_gpus():
    run = replay({"sacct": (0, "9|5400|billing=8,cpu=8,mem=64G,node=1\n", ""), "scontrol": SCONTROL_UNKNOWN_JOB})
    record = accounting.cell_gpu_hours(10.0, 2, job_id="9", run=run)
    assert (record["gpu_hours"], record["gpu_hours_source"]) == (3.0, "requested")  # sacct's 1.5 h x 2 GPUs
    run = replay({"sacct": SACCT_NO_SLURMDBD, "scontrol": SCONTROL_UNKNOWN_JOB})
    record = accounting.cell_gpu_hours(1800.0, 2, job_id="9", run=run)
    assert (record["gpu_hours"], record["gpu_hours_source"]) == (1.0, "requested")  # the run's own 0.5 h


# --- attempts --------------------------------------------------------------------------------------------------
def test_retried_attempts_are_summed(tmp_path):
    """Three attempts: job 1 (still known to scontrol), job 5 (forgotten by SLURM: its trace's last write
    bounds it), then job 2, this one."""
    run_dir = tmp_path / "run"
    accounting.record_attempt(run_dir, 2, job_id="1")
    accounting.record_attempt(run_dir, 2, job_id="5")
    ledger = json.loads((run_dir / accounting.LEDGER).read_text())
    assert "last_seen" not in ledger[0]  # no trace was written: unknown
    (run_dir / "trace.jsonl").write_text("{}\n")
    started = ledger[1]["started"]
    os.utime(run_dir / "trace.jsonl", (started + 1800, started + 1800))
    attempts = accounting.record_attempt(run_dir, 2, job_id="2")
    assert [a["slurm_job_id"] for a in attempts] == ["1", "5", "2"] and attempts[1]["last_seen"] == started + 1800

    scontrol = {"1": SCONTROL_GPUS_1_DONE, "2": SCONTROL_GRES_2_RUNNING}

    def run(argv, **_):
        if argv[0] == "sacct":
            return subprocess.CompletedProcess(argv, *SACCT_NO_SLURMDBD)
        text = scontrol.get(argv[3])
        return subprocess.CompletedProcess(argv, *((0, text, "") if text else SCONTROL_UNKNOWN_JOB))

    record = accounting.cell_gpu_hours(10.0, 2, job_id="2", run=run, attempts=attempts)
    per = record["gpu_hours_attempts"]
    assert [(a["slurm_job_id"], a["gpu_hours_source"], a["gpus"]) for a in per] == [
        ("1", "scontrol", 1), ("5", "requested", 2), ("2", "scontrol", 2)]
    assert per[1]["gpu_hours"] == 1.0 and per[1]["elapsed_source"] == "run timing"
    assert record["gpu_hours"] == round(4 / 3600 + 1.0 + 2 / 3600, 4)
    assert record["gpu_hours_source"] == "requested"  # the weakest part of the sum
    assert (record["slurm_job_id"], record["slurm_gpus"], record["slurm_elapsed_seconds"]) == ("2", 2, 1)


def test_a_requeued_job_counts_its_earlier_run_from_its_own_timing(tmp_path):
    run_dir = tmp_path / "run"
    accounting.record_attempt(run_dir, 1, job_id="1")
    (run_dir / "trace.jsonl").write_text("{}\n")
    first = accounting.read_attempts(run_dir)[0]["started"]
    os.utime(run_dir / "trace.jsonl", (first + 3600, first + 3600))
    attempts = accounting.record_attempt(run_dir, 1, job_id="1")
    run = replay({"sacct": SACCT_NO_SLURMDBD, "scontrol": (0, SCONTROL_GPUS_1_DONE, "")})
    record = accounting.cell_gpu_hours(10.0, 1, job_id="1", run=run, attempts=attempts)
    assert [a["gpu_hours_source"] for a in record["gpu_hours_attempts"]] == ["requested", "scontrol"]
    assert record["gpu_hours"] == round(1.0 + 4 / 3600, 4)


def test_an_unreadable_ledger_starts_afresh(tmp_path):
    (tmp_path / accounting.LEDGER).write_text("{not json")
    assert [a["slurm_job_id"] for a in accounting.record_attempt(tmp_path, 1, job_id="7")] == ["7"]


# --- the test cluster -------------------------------------------------------------------------------------------
ATTEMPT = ("import json, sys, time; from pathlib import Path; from posttrainbench import accounting as a; "
           "d = Path(sys.argv[1]); attempts = a.record_attempt(d, 1); (d / 'trace.jsonl').write_text('{}'); "
           "time.sleep(float(sys.argv[2])); "
           "print('ACCOUNTING ' + json.dumps(a.cell_gpu_hours(1.0, 1, attempts=attempts)), flush=True)")


def _submit(tmp_path: Path, name: str, args: list[str], script_args: str, slurm_conf: Path | None = None) -> str:
    """sbatch a GPU job of the lab account measuring its cell's GPU-hours at its end; ``slurm_conf``: the
    SLURM config the measurement reads (SLURM_CONF), default /etc/slurm/slurm.conf."""
    from slurm_cluster import ACCOUNT, GPU_PARTITION, snakemake_env

    script = tmp_path / f"{name}.sh"
    conf = f"SLURM_CONF={slurm_conf} " if slurm_conf else ""
    script.write_text(f"#!/bin/sh\n{conf}{sys.executable} -c \"{ATTEMPT}\" {script_args}\n")
    proc = subprocess.run(["sbatch", "--parsable", "-A", ACCOUNT, "-p", GPU_PARTITION, *args, "--mem=500", "-t", "5",
                           "-o", str(tmp_path / f"{name}.log"), str(script)],
                          capture_output=True, text=True, env=snakemake_env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().split(";")[0]


def _state(job_id: str) -> str:
    return subprocess.run(["squeue", "-h", "-j", job_id, "-t", "all", "-o", "%T"], capture_output=True,
                          text=True).stdout.strip()


def _wait_for(job_id: str, states: tuple[str, ...], seconds: float = 120) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        state = _state(job_id)
        if state in states:
            return state
        time.sleep(0.5)
    return _state(job_id)


def _record(log: Path) -> dict:
    line = next(l for l in log.read_text().splitlines() if l.startswith("ACCOUNTING "))
    return json.loads(line.removeprefix("ACCOUNTING "))


@pytest.mark.slow
def test_a_cancelled_attempt_and_its_retry_are_summed_on_the_test_cluster(slurm_cluster, tmp_path):
    """Two real attempts of one cell: a 1-GPU job cancelled mid-run (as a time limit or preemption would
    end it), then a 2-GPU retry. sacct measures both jobs from slurmdbd's records (AllocTRES gres/gpu)."""
    from slurm_cluster import sacct_jobs

    run_dir = tmp_path / "run"
    first = _submit(tmp_path, "first", ["--gpus=h100:1"], f"{run_dir} 600")
    assert _wait_for(first, ("RUNNING",)) == "RUNNING"
    deadline = time.monotonic() + 60
    while not (run_dir / "trace.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(2)
    subprocess.run(["scancel", first], check=True)
    assert _wait_for(first, ("CANCELLED",)) == "CANCELLED"
    second = _submit(tmp_path, "second", ["--gres=gpu:h100:2"], f"{run_dir} 2")
    assert _wait_for(second, ("COMPLETED", "FAILED")) == "COMPLETED", (tmp_path / "second.log").read_text()

    record = _record(tmp_path / "second.log")
    per = record["gpu_hours_attempts"]
    assert [(a["slurm_job_id"], a["gpu_hours_source"], a["gpus"], a["elapsed_source"]) for a in per] == [
        (first, "sacct", 1, "sacct"), (second, "sacct", 2, "sacct")], record
    assert per[0]["elapsed_seconds"] >= 2 and per[1]["elapsed_seconds"] >= 2
    assert record["gpu_hours"] == pytest.approx(
        per[0]["elapsed_seconds"] / 3600 + 2 * per[1]["elapsed_seconds"] / 3600, abs=2e-4)
    assert record["gpu_hours_source"] == "sacct" and record["slurm_job_id"] == second
    # The cancelled attempt's time is slurmdbd's final record of it.
    assert per[0]["elapsed_seconds"] == int(sacct_jobs([first])[first]["ElapsedRaw"])


@pytest.mark.slow
def test_without_accounting_scontrol_measures_the_job_on_the_test_cluster(slurm_cluster, tmp_path):
    """The job measures itself with a copy of the cluster's slurm.conf that has accounting off, as at a site
    without slurmdbd: the real sacct refuses, and scontrol (slurmctld's view) gives the GPUs and time. The
    job is in slurmdbd all the same, so the fallback was the config's doing, not missing data."""
    from slurm_cluster import ETC, sacct_jobs

    conf = tmp_path / "slurm.conf"
    text = (ETC / "slurm.conf").read_text()
    assert "AccountingStorageType=accounting_storage/slurmdbd" in text
    conf.write_text(text.replace("AccountingStorageType=accounting_storage/slurmdbd",
                                 "AccountingStorageType=accounting_storage/none"))
    refused = subprocess.run(["sacct", "-n", "-X"], capture_output=True, text=True, env={**os.environ, "SLURM_CONF": str(conf)})
    assert refused.returncode != 0 and "accounting storage is disabled" in refused.stderr.lower(), refused

    job = _submit(tmp_path, "job", ["--gpus=h100:2"], f"{tmp_path / 'run'} 2", slurm_conf=conf)
    assert _wait_for(job, ("COMPLETED", "FAILED")) == "COMPLETED", (tmp_path / "job.log").read_text()
    record = _record(tmp_path / "job.log")
    (attempt,) = record["gpu_hours_attempts"]
    assert (attempt["slurm_job_id"], attempt["gpu_hours_source"], attempt["gpus"], attempt["elapsed_source"]) == (
        job, "scontrol", 2, "scontrol"), record
    assert attempt["elapsed_seconds"] >= 2 and record["gpu_hours"] == round(2 * attempt["elapsed_seconds"] / 3600, 4)
    assert "gres/gpu:h100=2" in sacct_jobs([job])[job]["AllocTRES"].split(",")

"""GPU-hours per cell (posttrainbench.accounting): measured by the test cluster for a real GPU job, the
fallback to the run's own timing outside SLURM, and sacct's format (the test cluster has no slurmdbd,
so sacct's answer is a recorded one, fed through the same parser)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from posttrainbench import accounting

PROBE = ("import json; from posttrainbench.accounting import cell_gpu_hours; "
         "print('ACCOUNTING ' + json.dumps(cell_gpu_hours(1.0, 0)))")


def test_outside_slurm_uses_the_runs_own_timing(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert accounting.cell_gpu_hours(1800.0, 2) == {"gpu_hours": 1.0, "gpu_hours_source": "run timing",
                                                    "slurm_job_id": None}


def test_sacct_answer_is_parsed():
    """A recorded `sacct -X -P -o JobIDRaw,ElapsedRaw,AllocTRES` answer for a 2-GPU job of 90 minutes."""
    def sacct(argv, **_):
        assert argv[:3] == ["sacct", "-j", "4242"]
        return subprocess.CompletedProcess(argv, 0, "4242|5400|billing=8,cpu=8,gres/gpu=2,mem=64G,node=1\n", "")

    record = accounting.cell_gpu_hours(10.0, 1, job_id="4242", run=sacct)
    assert record["gpu_hours"] == 3.0 and record["gpu_hours_source"] == "sacct" and record["slurm_gpus"] == 2


@pytest.mark.parametrize("tres, count", [("gres:gpu:1", 1), ("gres/gpu:a100:4", 4), ("cpu=4,gres/gpu=2,mem=8G", 2),
                                         ("cpu=4,mem=8G", None), ("gres:gpu:h100.80gb:3", 3)])
def test_gpu_count_in_tres_strings(tres, count):
    assert accounting.gpu_count(tres) == count


@pytest.mark.parametrize("text, seconds", [("00:01:05", 65), ("1-02:00:00", 93600), ("10:30", 630)])
def test_slurm_durations(text, seconds):
    assert accounting.parse_duration(text) == seconds


@pytest.mark.slow
def test_gpu_job_on_the_test_cluster_is_measured_by_slurm(slurm_cluster, tmp_path):
    """A real batch job asking for one (fake) GPU measures itself: sacct fails without slurmdbd, so
    scontrol's live record gives the elapsed time and the GPU count."""
    from slurm_cluster import snakemake_env

    script = tmp_path / "probe.sh"
    script.write_text(f"#!/bin/sh\nsleep 3\n{sys.executable} -c \"{PROBE}\"\n")
    proc = subprocess.run(["sbatch", "--parsable", "--gpus=1", "--mem=500", "-t", "5", "-o", str(tmp_path / "out.log"),
                           str(script)], capture_output=True, text=True, env=snakemake_env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip().split(";")[0]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        state = subprocess.run(["squeue", "-h", "-j", job_id, "-t", "all", "-o", "%T"], capture_output=True,
                               text=True).stdout.strip()
        if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"):
            break
        time.sleep(0.5)
    assert state == "COMPLETED", (state, (tmp_path / "out.log").read_text() if (tmp_path / "out.log").exists() else "")
    line = next(l for l in (tmp_path / "out.log").read_text().splitlines() if l.startswith("ACCOUNTING "))
    record = json.loads(line.removeprefix("ACCOUNTING "))
    assert record["gpu_hours_source"] == "scontrol" and record["slurm_job_id"] == job_id
    assert record["slurm_gpus"] == 1 and record["slurm_elapsed_seconds"] >= 3
    assert record["gpu_hours"] == round(record["slurm_elapsed_seconds"] / 3600, 4)

"""GPU-hours per cell: from SLURM's accounting where it exists, else from the run's own timing.

Inside a SLURM job (``SLURM_JOB_ID`` set) the job's elapsed time and allocated GPUs come from
``sacct`` (slurmdbd accounting); a cluster without accounting still answers ``scontrol show job``
for live jobs; outside SLURM, or when neither answers, the run's wall time times its budgeted GPUs
is used. The record says which source it came from. The leaderboard sums the cells' GPU-hours per agent.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
from pathlib import Path
from typing import Callable

import pandas as pd

log = logging.getLogger(__name__)

Runner = Callable[..., subprocess.CompletedProcess]
# "gres/gpu=2" (sacct AllocTRES), "gres:gpu:2" or "gres/gpu:a100:2" (scontrol TresPerJob/TresPerNode).
_GPU_COUNT = re.compile(r"gres[:/]gpu(?::[A-Za-z0-9_.-]+)?[:=](\d+)")


def gpu_count(tres: str) -> int | None:
    """The GPU count in a SLURM TRES string, or None when it names no GPU."""
    counts = [int(n) for n in _GPU_COUNT.findall(tres or "")]
    return max(counts) if counts else None


def parse_duration(text: str) -> int:
    """SLURM's [D-]HH:MM:SS (or MM:SS) as seconds."""
    days, _, clock = text.strip().rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    seconds = 0
    for part in parts:
        seconds = seconds * 60 + part
    return seconds + int(days or 0) * 86400


def _query(run: Runner, argv: list[str]) -> str | None:
    try:
        proc = run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.info("%s: %s", argv[0], exc)
        return None
    if proc.returncode != 0:
        log.info("%s failed: %s", " ".join(argv), proc.stderr.strip()[:300])
        return None
    return proc.stdout


def from_sacct(job_id: str, run: Runner = subprocess.run) -> dict | None:
    out = _query(run, ["sacct", "-j", job_id, "-X", "-n", "-P", "-o", "JobIDRaw,ElapsedRaw,AllocTRES"])
    for line in (out or "").splitlines():
        fields = line.split("|")
        if len(fields) == 3 and fields[0] == job_id and fields[1].isdigit():
            return {"elapsed_seconds": int(fields[1]), "gpus": gpu_count(fields[2]) or 0, "source": "sacct"}
    return None


def from_scontrol(job_id: str, run: Runner = subprocess.run) -> dict | None:
    out = _query(run, ["scontrol", "show", "job", job_id, "--oneliner"])
    if not out:
        return None
    fields = dict(token.split("=", 1) for token in out.split() if "=" in token)
    if "RunTime" not in fields:
        return None
    gpus = None
    for key in ("AllocTRES", "TRES", "TresPerJob", "TresPerNode"):
        gpus = gpu_count(fields.get(key, ""))
        if gpus is not None:
            break
    return {"elapsed_seconds": parse_duration(fields["RunTime"]), "gpus": gpus or 0, "source": "scontrol"}


def cell_gpu_hours(wall_seconds: float, budget_gpus: int, job_id: str | None = None,
                   run: Runner = subprocess.run) -> dict:
    """Fields for run.json: ``gpu_hours``, ``gpu_hours_source`` and ``slurm_job_id``.

    ``job_id`` defaults to this process's SLURM job (``SLURM_JOB_ID``). Inside a job the elapsed time
    is the job's so far: what the cluster bills for the agent run, startup and checkpoint collection
    included."""
    job_id = job_id if job_id is not None else os.environ.get("SLURM_JOB_ID")
    measured = None
    if job_id:
        measured = from_sacct(job_id, run) or from_scontrol(job_id, run)
    if measured is not None:
        return {"gpu_hours": round(measured["elapsed_seconds"] * measured["gpus"] / 3600, 4),
                "gpu_hours_source": measured["source"], "slurm_job_id": job_id,
                "slurm_gpus": measured["gpus"], "slurm_elapsed_seconds": measured["elapsed_seconds"]}
    return {"gpu_hours": round(wall_seconds * budget_gpus / 3600, 4), "gpu_hours_source": "run timing",
            "slurm_job_id": job_id}


def add_gpu_hours(board: pd.DataFrame, cells: pd.DataFrame, results_dir: Path) -> pd.DataFrame:
    """``board`` with a ``gpu_hours`` column: the sum over each agent's cells of their run.json
    ``gpu_hours`` (cells without a run record count 0)."""
    totals: dict[str, float] = {}
    for cell in cells.itertuples():
        path = Path(results_dir) / "runs" / cell.agent / cell.model / cell.benchmark / f"seed{cell.seed}" / "run.json"
        try:
            hours = float(json.loads(path.read_text()).get("gpu_hours") or 0.0)
        except (OSError, ValueError):
            hours = 0.0
        totals[cell.agent] = totals.get(cell.agent, 0.0) + hours
    board = board.copy()
    board["gpu_hours"] = [round(totals.get(agent, 0.0), 4) for agent in board.agent]
    return board

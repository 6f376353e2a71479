"""GPU-hours per cell, summed over every attempt (every SLURM job) the cell's agent ran under.

Each attempt's GPU count and elapsed time come from the best source that answers:

* ``sacct`` (slurmdbd accounting): elapsed time and AllocTRES, when the site tracks ``gres/gpu``;
* ``scontrol show job`` while slurmctld still holds the job (running, or finished within MinJobAge):
  the allocated GRES (``JOB_GRES``), else the TRES / TresPerJob / TresPerNode / TresPerTask / Gres
  request fields. slurmctld knows every job's GPU request, so a job it holds without one had none;
* ``requested``: the budget's GPUs times the elapsed time (sacct's or scontrol's where either gave one,
  else the run's own timing), outside SLURM or when neither command knows the job.

``gpu_hours_source`` says where the GPU count came from. The runner notes every attempt's SLURM job in
``<run dir>/attempts.json`` before the agent starts, so an attempt killed by SLURM (time
limit, preemption, node failure) or failing on infrastructure is counted when the cell's next attempt
finishes. The leaderboard sums the cells' ``gpu_hours`` per agent.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import pandas as pd

from .io import atomic_write_json

log = logging.getLogger(__name__)

Runner = Callable[..., subprocess.CompletedProcess]
LEDGER = "attempts.json"
# Weakest first: a sum is only as good as its weakest part.
SOURCES = ("requested", "scontrol", "sacct")

# TRES strings: "gres/gpu=2" or "gres/gpu:a100=2" (sacct AllocTRES, scontrol TRES) and
# "gres:gpu:2", "gres/gpu:a100:4" (scontrol TresPerJob/TresPerNode/TresPerTask).
_TRES_GPU = re.compile(r"gres[:/]gpu(?::([A-Za-z0-9_.-]+?))?[:=](\d+)(?=[,\s(]|$)")
# GRES strings: "gpu:1", "gpu:a100:2(IDX:0-1)", "gpu:h100:4(S:0-1)", "gpu:a100:1,gpu:v100:1".
_GRES_GPU = re.compile(r"(?:^|,)gpu(?::([A-Za-z0-9_.-]+?))?:(\d+)(?=[,(]|$)")


def _total(matches: list[tuple[str, str]]) -> int | None:
    """The GPU total of (type, count) matches: the untyped total where given, else the typed counts
    summed (sacct lists both ``gres/gpu=2`` and ``gres/gpu:a100=2`` for one pair of GPUs)."""
    if not matches:
        return None
    untyped = [int(n) for kind, n in matches if not kind]
    return max(untyped) if untyped else sum(int(n) for _, n in matches)


def gpu_count(tres: str) -> int | None:
    """The GPU count in a SLURM TRES string, or None when it names no GPU."""
    return _total(_TRES_GPU.findall(tres or ""))


def gres_gpu_count(gres: str) -> int | None:
    """The GPU count in a SLURM GRES string (``JOB_GRES=``, ``Gres=``), or None when it names no GPU."""
    return _total(_GRES_GPU.findall(gres or ""))


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


def parse_sacct(text: str, job_id: str) -> dict | None:
    """``sacct -X -n -P -o JobIDRaw,ElapsedRaw,AllocTRES`` output: elapsed seconds and GPUs (None when
    the site's AllocTRES has no GPU field) of ``job_id``, or None when the job is not listed."""
    for line in (text or "").splitlines():
        fields = line.split("|")
        if len(fields) == 3 and fields[0] == job_id and fields[1].isdigit():
            return {"elapsed_seconds": int(fields[1]), "gpus": gpu_count(fields[2])}
    return None


def parse_scontrol(text: str, job_id: str) -> dict | None:
    """``scontrol show job --oneliner --details`` output: elapsed seconds and GPUs of ``job_id`` (0 when
    the job has no GPU: slurmctld knows every request), or None when the job is not listed."""
    for line in (text or "").splitlines():
        fields: dict[str, str] = {}
        for token in line.split():
            key, sep, value = token.partition("=")
            if sep and key not in fields:  # --details repeats per-node keys: the job's come first
                fields[key] = value
        if fields.get("JobId") != job_id or "RunTime" not in fields:
            continue
        nodes, tasks = _number(fields.get("NumNodes")), _number(fields.get("NumTasks"))
        candidates = [
            gres_gpu_count(fields.get("JOB_GRES", "")),  # allocated, the job's total (--details)
            gpu_count(fields.get("AllocTRES", "")), gpu_count(fields.get("TRES", "")),
            gpu_count(fields.get("TresPerJob", "")),
            _times(gpu_count(fields.get("TresPerNode", "")), nodes),
            _times(gpu_count(fields.get("TresPerTask", "")), tasks),
            _times(gres_gpu_count(fields.get("Gres", "")), nodes),  # older SLURM: per node
        ]
        gpus = next((c for c in candidates if c is not None), 0)
        return {"elapsed_seconds": parse_duration(fields["RunTime"]), "gpus": gpus}
    return None


def _number(text: str | None) -> int:
    """A count field ("2", or a pending job's range "1-2": its minimum); 1 when absent or unparsable."""
    head = (text or "").split("-")[0]
    return int(head) if head.isdigit() and int(head) > 0 else 1


def _times(count: int | None, factor: int) -> int | None:
    return None if count is None else count * factor


def from_sacct(job_id: str, run: Runner = subprocess.run) -> dict | None:
    out = _query(run, ["sacct", "-j", job_id, "-X", "-n", "-P", "-o", "JobIDRaw,ElapsedRaw,AllocTRES"])
    return parse_sacct(out, job_id) if out else None


def from_scontrol(job_id: str, run: Runner = subprocess.run) -> dict | None:
    out = _query(run, ["scontrol", "show", "job", job_id, "--oneliner", "--details"])
    return parse_scontrol(out, job_id) if out else None


def measure_job(job_id: str | None, budget_gpus: int, fallback_seconds: float | None,
                run: Runner = subprocess.run) -> dict:
    """One attempt's GPU-hours: sacct's GPU field, else scontrol's, else the budget's GPUs; the elapsed
    time from whichever of sacct and scontrol answered, else ``fallback_seconds`` (None: unknown, 0 h)."""
    sacct = from_sacct(job_id, run) if job_id else None
    scontrol = None
    if job_id and (sacct is None or sacct["gpus"] is None):
        scontrol = from_scontrol(job_id, run)
    if sacct is not None and sacct["gpus"] is not None:
        gpus, source = sacct["gpus"], "sacct"
    elif scontrol is not None:
        gpus, source = scontrol["gpus"], "scontrol"
    else:
        gpus, source = int(budget_gpus), "requested"
    timed = sacct or scontrol
    if timed is not None:
        elapsed, elapsed_source = timed["elapsed_seconds"], "sacct" if sacct else "scontrol"
    elif fallback_seconds is not None:
        elapsed, elapsed_source = max(float(fallback_seconds), 0.0), "run timing"
    else:
        elapsed, elapsed_source = 0.0, "unknown"
    return {"slurm_job_id": job_id, "gpu_hours": round(elapsed * gpus / 3600, 4), "gpu_hours_source": source,
            "gpus": gpus, "elapsed_seconds": elapsed, "elapsed_source": elapsed_source}


def read_attempts(run_dir: Path) -> list[dict]:
    """The attempts noted in ``run_dir`` (oldest first); [] when none or the ledger is unreadable."""
    try:
        attempts = json.loads((Path(run_dir) / LEDGER).read_text())
    except (OSError, ValueError):
        return []
    return [a for a in attempts if isinstance(a, dict)] if isinstance(attempts, list) else []


def record_attempt(run_dir: Path, budget_gpus: int, job_id: str | None = None) -> list[dict]:
    """Note the attempt starting now in ``run_dir`` (before its trace is replaced) and return every
    attempt noted. The previous attempt's last sign of life is its trace's last write: what bounds its
    elapsed time when SLURM no longer knows its job."""
    run_dir = Path(run_dir)
    job_id = job_id if job_id is not None else os.environ.get("SLURM_JOB_ID")
    attempts = read_attempts(run_dir)
    if attempts and "last_seen" not in attempts[-1]:
        # Each attempt writes its trace in its own directory under .attempts/ (published ones are linked
        # beside run.json): the newest write among them is the previous attempt's last sign of life.
        seen = []
        for trace in [run_dir / "trace.jsonl", *run_dir.glob(".attempts/*/trace.jsonl")]:
            try:
                seen.append(trace.stat().st_mtime)
            except OSError:
                pass
        if seen:
            attempts[-1]["last_seen"] = max(seen)
    now = time.time()
    attempts.append({"slurm_job_id": job_id, "node": os.environ.get("SLURMD_NODENAME") if job_id else None,
                     "started": now, "budget_gpus": int(budget_gpus),
                     "started_iso": datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="seconds")})
    atomic_write_json(run_dir / LEDGER, attempts)
    return attempts


def cell_gpu_hours(wall_seconds: float, budget_gpus: int, job_id: str | None = None,
                   run: Runner = subprocess.run, attempts: list[dict] | None = None) -> dict:
    """Fields for run.json: ``gpu_hours`` (every attempt's, summed), ``gpu_hours_source`` (the weakest
    attempt's), ``slurm_job_id`` and, for this attempt, ``slurm_gpus`` and ``slurm_elapsed_seconds``;
    ``gpu_hours_attempts`` lists each attempt.

    ``job_id`` defaults to this process's SLURM job (``SLURM_JOB_ID``); ``attempts`` are the noted
    attempts (:func:`record_attempt`), the last one being this one. Inside a job the elapsed time is the
    job's so far: what the cluster bills for the agent run, startup and checkpoint collection included."""
    job_id = job_id if job_id is not None else os.environ.get("SLURM_JOB_ID")
    current = measure_job(job_id, budget_gpus, wall_seconds, run)
    earlier = []
    for attempt in (attempts or [])[:-1]:
        previous_id = attempt.get("slurm_job_id")
        seen, started = attempt.get("last_seen"), attempt.get("started")
        timed = all(isinstance(t, (int, float)) for t in (seen, started))
        bounded = seen - started if timed else None
        gpus = attempt.get("budget_gpus", budget_gpus)
        if previous_id and previous_id == job_id:
            # The same job requeued: SLURM's record covers its latest run only (this attempt).
            measured = measure_job(None, gpus, bounded, run)
            measured["slurm_job_id"] = previous_id
        else:
            measured = measure_job(previous_id, gpus, bounded, run)
        earlier.append({**measured, "started": attempt.get("started_iso")})
    every = earlier + [{**current, "started": (attempts or [{}])[-1].get("started_iso")}]
    return {"gpu_hours": round(sum(a["gpu_hours"] for a in every), 4),
            "gpu_hours_source": min((a["gpu_hours_source"] for a in every), key=SOURCES.index),
            "slurm_job_id": job_id, "slurm_gpus": current["gpus"],
            "slurm_elapsed_seconds": current["elapsed_seconds"], "gpu_hours_attempts": every}


def add_gpu_hours(board: pd.DataFrame, cells: pd.DataFrame, results_dir: Path) -> pd.DataFrame:
    """``board`` with a ``gpu_hours`` column: the sum over each agent's cells of their run.json
    ``gpu_hours``, itself the sum over the cell's attempts (cells without a run record count 0)."""
    totals: dict[str, float] = {}
    for cell in cells.itertuples():
        path = Path(results_dir) / "runs" / cell.agent / cell.model / cell.benchmark / f"seed{cell.seed}" / "run.json"
        try:
            hours = float(json.loads(path.read_text()).get("gpu_hours") or 0.0)
        except (OSError, ValueError, AttributeError, TypeError):
            hours = 0.0
        totals[cell.agent] = totals.get(cell.agent, 0.0) + hours
    board = board.copy()
    board["gpu_hours"] = [round(totals.get(agent, 0.0), 4) for agent in board.agent]
    return board

"""One live attempt per cell: a lock in the run directory naming the SLURM job (or process) that runs it.

A cell's agent job writes ``<run dir>/.lock.json`` (atomically, before the agent starts) with its
attempt id, SLURM job id, node, host, pid and start time. A job that starts for the same cell and finds a
lock asks whether its holder is alive: for a SLURM job, ``squeue`` (then ``scontrol``); outside SLURM, the
pid on the same host (with its start time, so a reused pid does not count). A live holder makes the new
job refuse in one line (:class:`AttemptLive`, an infrastructure fault: no run record). A lock whose holder
is gone is stale: it is taken over, and the run record says so. Only the process whose attempt the lock
names may publish results or remove the lock (:func:`owns`, :func:`release`).

Changes to the lock happen under an ``flock`` on ``<run dir>/.lock.guard``, so two jobs starting at once
cannot both take it over.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import subprocess
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .evaluation import InfrastructureError
from .io import atomic_write_json

LOCK = ".lock.json"
GUARD = ".lock.guard"
Runner = Callable[..., subprocess.CompletedProcess]
# squeue states in which a job's processes may still run (COMPLETING: its epilog and last processes).
ALIVE_STATES = frozenset({"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "RESIZING",
                          "SIGNALING", "STAGE_OUT", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD"})


class AttemptLive(InfrastructureError):
    """Another attempt of the cell is still running: this job must not start a second copy."""


def new_attempt_id() -> str:
    """Sortable by start time, unique across hosts."""
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:8]


def _pid_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/<pid>/stat), or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def this_holder(attempt_id: str) -> dict:
    now = time.time()
    return {"attempt_id": attempt_id, "slurm_job_id": os.environ.get("SLURM_JOB_ID") or None,
            "node": os.environ.get("SLURMD_NODENAME") or None, "host": socket.gethostname(),
            "pid": os.getpid(), "pid_start": _pid_start(os.getpid()), "started": now,
            "started_iso": datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="seconds")}


def read_lock(run_dir: Path) -> dict | None:
    """The lock's holder, or None when there is no lock (an unreadable lock reads as a holder of
    unknown identity, which is stale: a lock is only ever written whole)."""
    try:
        data = json.loads((Path(run_dir) / LOCK).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"attempt_id": None, "unreadable": True}
    return data if isinstance(data, dict) else {"attempt_id": None, "unreadable": True}


def slurm_job_states(job_ids: Iterable[str], run: Runner = subprocess.run) -> dict[str, str] | None:
    """{job id: state} for the jobs slurmctld still lists; jobs it does not list have ended. None when
    neither ``squeue`` nor ``scontrol`` answers (then nobody can tell)."""
    ids = sorted({str(j) for j in job_ids if j})
    if not ids:
        return {}
    try:
        proc = run(["squeue", "-h", "-j", ",".join(ids), "-o", "%i|%T"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        proc = None
    if proc is not None and proc.returncode == 0:
        states = {}
        for line in proc.stdout.splitlines():
            job, _, state = line.strip().partition("|")
            states[job] = state
        return states
    if proc is not None and "Invalid job id" in (proc.stderr or ""):
        return {}  # a single job id slurmctld no longer knows
    states = {}
    for job in ids:  # squeue failed: ask scontrol one job at a time
        try:
            out = run(["scontrol", "show", "job", job, "--oneliner"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if out.returncode != 0:
            if "Invalid job id" in (out.stderr or ""):
                continue
            return None
        for token in out.stdout.split():
            if token.startswith("JobState="):
                states[job] = token.partition("=")[2]
    return states


def _pid_alive(pid: int, pid_start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, another user's
    start = _pid_start(pid)
    if start is None:
        return False
    try:
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] == "Z":
            return False
    except OSError:
        return False
    return pid_start is None or start == pid_start


def holder_alive(holder: dict, run: Runner = subprocess.run) -> tuple[bool | None, str]:
    """Whether the lock's holder may still be running (None: cannot tell), and how that was decided."""
    if holder.get("unreadable"):
        return False, "the lock file is unreadable"
    job = holder.get("slurm_job_id")
    mine = os.environ.get("SLURM_JOB_ID")
    same_host = holder.get("host") == socket.gethostname()
    pid = holder.get("pid")
    if job and job != mine:
        states = slurm_job_states([job], run)
        if states is None:
            return None, f"neither squeue nor scontrol answered about SLURM job {job}"
        state = states.get(str(job))
        if state in ALIVE_STATES:
            return True, f"squeue: SLURM job {job} is {state}"
        return False, f"SLURM job {job} has ended ({state or 'no longer listed by squeue'})"
    # Outside SLURM, or this very job run again (a requeue ends the earlier run's processes first).
    if same_host and isinstance(pid, int):
        if pid == os.getpid():
            return False, "the lock names this process"
        alive = _pid_alive(pid, holder.get("pid_start"))
        return alive, f"process {pid} on {holder.get('host')} is {'running' if alive else 'gone'}"
    if job and job == mine:
        return False, f"SLURM job {job} (this job) was restarted"
    return None, f"process {pid} runs on host {holder.get('host')}, not this one"


def describe(holder: dict) -> str:
    where = holder.get("node") or holder.get("host")
    job = f"SLURM job {holder['slurm_job_id']}" if holder.get("slurm_job_id") else f"pid {holder.get('pid')}"
    return f"attempt {holder.get('attempt_id')} ({job} on {where}, started {holder.get('started_iso')})"


@contextlib.contextmanager
def guard(run_dir: Path) -> Iterator[None]:
    """Exclusive access to the cell's lock for the time of one decision."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / GUARD, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def acquire(run_dir: Path, attempt_id: str, cell_key: str, run: Runner = subprocess.run) -> tuple[dict, dict | None]:
    """Take the cell's lock for ``attempt_id``; returns (this holder, the stale holder taken over or None).
    Raises :class:`AttemptLive` when the current holder may still be running."""
    run_dir = Path(run_dir)
    with guard(run_dir):
        previous = read_lock(run_dir)
        taken_over = None
        if previous is not None:
            alive, why = holder_alive(previous, run)
            if alive is None:
                raise AttemptLive(f"{cell_key}: cannot tell whether {describe(previous)} still runs ({why}); not "
                                  f"starting a second copy: remove {run_dir / LOCK} once it is gone")
            if alive:
                job = previous.get("slurm_job_id")
                stop = f"scancel {job}" if job else f"kill {previous.get('pid')}"
                raise AttemptLive(f"{cell_key}: {describe(previous)} is still running ({why}); not starting a "
                                  f"second copy (wait for it, or stop it with `{stop}`)")
            taken_over = {**previous, "stale_because": why}
        holder = this_holder(attempt_id)
        atomic_write_json(run_dir / LOCK, holder)
    return holder, taken_over


def owns(run_dir: Path, attempt_id: str) -> bool:
    lock = read_lock(run_dir)
    return lock is not None and lock.get("attempt_id") == attempt_id


def release(run_dir: Path, attempt_id: str) -> bool:
    """Remove the lock if it still names ``attempt_id`` (never another attempt's)."""
    with guard(run_dir):
        if owns(run_dir, attempt_id):
            (Path(run_dir) / LOCK).unlink(missing_ok=True)
            return True
    return False


def live_holders(run_dirs: Iterable[Path], run: Runner = subprocess.run) -> dict[Path, dict]:
    """For the workflow at parse time: {run dir: holder} for each lock whose SLURM job is still queued or
    running (one squeue call for all of them). Locks without a SLURM job are left to the job itself."""
    holders = {}
    for run_dir in run_dirs:
        holder = read_lock(run_dir)
        if holder and holder.get("slurm_job_id"):
            holders[Path(run_dir)] = holder
    if not holders:
        return {}
    states = slurm_job_states([h["slurm_job_id"] for h in holders.values()], run) or {}
    return {d: h for d, h in holders.items() if states.get(str(h["slurm_job_id"])) in ALIVE_STATES}

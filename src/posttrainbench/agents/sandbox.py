"""The sandbox interface: run a command with a deadline, stream its output into the trace.

Backends share :class:`Sandbox`. ``none`` runs a plain subprocess (development and built-in
recipes only); isolating backends plug in behind the same ``run`` call.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Mapping, Sequence

# Variables an agent process may inherit from the pipeline; everything else (grader and judge
# keys above all) is dropped. Agent-specific keys are added explicitly by the caller.
INHERITED_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "TMPDIR", "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class RunOutcome:
    exit_code: int | None
    timed_out: bool
    started: str
    ended: str
    wall_seconds: float


class TraceWriter:
    """Append-only JSONL event log, line-buffered so a killed job keeps what was written."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handle: IO[str] = open(path, "a", encoding="utf-8", buffering=1)
        self._lock = threading.Lock()

    def event(self, kind: str, **fields) -> None:
        record = {"time": now_iso(), "type": kind, **fields}
        with self._lock:
            self._handle.write(json.dumps(record, default=str) + "\n")

    def close(self) -> None:
        self._handle.close()


def _pump(stream: IO[bytes], name: str, trace: TraceWriter) -> None:
    for raw in iter(stream.readline, b""):
        trace.event(name, text=raw.decode("utf-8", errors="replace").rstrip("\n"))
    stream.close()


class Sandbox:
    """Runs one agent command; subclasses wrap the command in their isolation."""

    name = "none"

    def wrap(self, command: Sequence[str], workspace: Path) -> list[str]:
        return list(command)

    def run(
        self,
        command: Sequence[str],
        *,
        workspace: Path,
        env: Mapping[str, str],
        timeout_seconds: float,
        grace_seconds: float,
        trace: TraceWriter,
    ) -> RunOutcome:
        """Run ``command`` in ``workspace``; at the deadline send SIGTERM to its process group,
        then SIGKILL after ``grace_seconds``."""
        argv = self.wrap(command, workspace)
        trace.event("start", command=argv, sandbox=self.name, timeout_seconds=timeout_seconds)
        started, t0 = now_iso(), time.monotonic()
        proc = subprocess.Popen(
            argv,
            cwd=workspace,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # own process group: the deadline kills every child too
        )
        pumps = [
            threading.Thread(target=_pump, args=(proc.stdout, "stdout", trace), daemon=True),
            threading.Thread(target=_pump, args=(proc.stderr, "stderr", trace), daemon=True),
        ]
        for thread in pumps:
            thread.start()
        timed_out = False
        try:
            proc.wait(timeout=timeout_seconds)
        except subprocess.TimeoutExpired:
            timed_out = True
            trace.event("deadline", action="SIGTERM", grace_seconds=grace_seconds)
            _signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=grace_seconds)
            except subprocess.TimeoutExpired:
                trace.event("deadline", action="SIGKILL")
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
        finally:
            if proc.poll() is None:  # the pipeline itself is being stopped
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
        for thread in pumps:
            thread.join(timeout=10)
        outcome = RunOutcome(
            exit_code=proc.returncode,
            timed_out=timed_out,
            started=started,
            ended=now_iso(),
            wall_seconds=round(time.monotonic() - t0, 3),
        )
        trace.event("exit", exit_code=outcome.exit_code, timed_out=timed_out, wall_seconds=outcome.wall_seconds)
        return outcome


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


BACKENDS = {"none": Sandbox}


def get_sandbox(name: str) -> Sandbox:
    try:
        return BACKENDS[name]()
    except KeyError:
        raise ValueError(f"unknown sandbox backend {name!r}; available: {', '.join(BACKENDS)}") from None

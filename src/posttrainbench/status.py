"""``ptb status``: where every cell of a sweep stands, from the results tree and the scheduler's queue.

Read-only by design: it reads result files, the cells' attempt locks and ledgers, Snakemake's markers of
started jobs (``.snakemake/incomplete``, never its lock) and ``squeue`` (with a timeout; a site without
SLURM simply has no queue). Every file it reads may be half-written, corrupt or written by an agent, so each
read is capped in size, each value checked for its type and each string cleaned before it is shown.

A cell's stage, in order: ``not started`` (its inputs are not staged), ``staged``, ``agent running``,
``agent finished``, ``evaluating``, ``evaluated`` (an audited cell waiting for its verdict), ``judging``,
``done``. Failures (the run record's status, a failed evaluation, an agent job that ended without a run
record) and the judge's flag are shown beside the stage.

The results tree's parent is taken as the workflow's directory (``resources/``, ``logs/``, ``.snakemake/``).
"""

from __future__ import annotations

import base64
import csv
import getpass
import io
import json
import math
import os
import socket
import stat
import subprocess
import time
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from .cells import Cell
from .config import agent_spec, iter_cells

NOT_STARTED = "not started"
STAGED = "staged"
AGENT_RUNNING = "agent running"
AGENT_FINISHED = "agent finished"
EVALUATING = "evaluating"
EVALUATED = "evaluated"
JUDGING = "judging"
DONE = "done"
STAGES = (NOT_STARTED, STAGED, AGENT_RUNNING, AGENT_FINISHED, EVALUATING, EVALUATED, JUDGING, DONE)
RUNNING_STAGES = (AGENT_RUNNING, EVALUATING, JUDGING)

# Result files are small (a run record is a few kB); anything far larger is not read at all.
MAX_JSON_BYTES = 2 << 20
MAX_LOG_TAIL = 16 << 10
SQUEUE_TIMEOUT = 10
# squeue's fields, in this order: job id, state, elapsed, time limit, nodes, working directory, comment (last:
# the executor's comment is rule_<rule>_wildcards_<values joined by _>; only the last field may hold a separator).
SQUEUE_FORMAT = "%i|%T|%M|%l|%N|%Z|%k"
# The rules that run each step of a cell, as Snakemake's SLURM executor names their jobs.
AGENT_RULES = ("run_agent", "submit_reference")
EVAL_RULES = ("evaluate", "generate_for_grader", "grade")
JUDGE_RULES = ("judge",)
# squeue states of a job that still holds (or waits for) its resources.
ACTIVE_STATES = frozenset({"RUNNING", "COMPLETING", "CONFIGURING", "SUSPENDED", "STOPPED", "RESIZING",
                           "SIGNALING", "STAGE_OUT"})
QUEUED_STATES = frozenset({"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD"})

Runner = Callable[..., subprocess.CompletedProcess]


# --- careful reading ---------------------------------------------------------------------------------------------
def clean(value: Any, limit: int = 120) -> str:
    """``value`` as one printable line of at most ``limit`` characters: control, format (bidi overrides) and
    other invisible characters dropped, whitespace collapsed. Only strings and numbers are shown at all."""
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return f"<{type(value).__name__}>"
    if isinstance(value, int) and abs(value) > 10**15:
        return "<large number>"
    text = str(value)[: limit * 4]
    out = []
    for char in text:
        category = unicodedata.category(char)
        if char in "\t\n\r\v\f" or category == "Zs":
            out.append(" ")
        elif category[0] in "CZ":  # control, format, surrogate, private use, unassigned, line/paragraph seps
            continue
        else:
            out.append(char)
    text = " ".join("".join(out).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def number(value: Any, low: float = -1e12, high: float = 1e12) -> float | None:
    """A finite number within [low, high], else None (booleans are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        value = float(value)
    except (OverflowError, ValueError):
        return None
    return value if math.isfinite(value) and low <= value <= high else None


def read_json(path: Path) -> tuple[dict | None, str | None, bool]:
    """``(object, problem, exists)``: a JSON object read from a regular file of at most MAX_JSON_BYTES, never
    blocking on a FIFO or device. ``problem`` says why a file that exists gave no object."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None, None, False
    except OSError as exc:
        return None, f"unreadable ({clean(exc.strerror or exc, 60)})", True
    if not stat.S_ISREG(info.st_mode):
        return None, "not a regular file", True
    if info.st_size > MAX_JSON_BYTES:
        return None, f"too large ({info.st_size} bytes)", True
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as handle:
            data = handle.read(MAX_JSON_BYTES + 1)
    except OSError as exc:
        return None, f"unreadable ({clean(exc.strerror or exc, 60)})", True
    if len(data) > MAX_JSON_BYTES:
        return None, "too large", True
    try:
        value = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None, f"not valid JSON ({clean(type(exc).__name__, 40)})", True
    if not isinstance(value, dict):
        return None, "not a JSON object", True
    return value, None, True


def log_problem(path: Path) -> str | None:
    """The last error line of a job's log (its last line when none says error), or None without a log."""
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            return None
        with open(path, "rb") as handle:
            handle.seek(max(info.st_size - MAX_LOG_TAIL, 0))
            tail = handle.read(MAX_LOG_TAIL).decode("utf-8", "replace")
    except OSError:
        return None
    lines = [line for line in tail.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return clean((errors or lines or [""])[-1], 160) or None


# --- the scheduler's queue and Snakemake's markers --------------------------------------------------------------
@dataclass
class Job:
    job_id: str
    state: str
    elapsed_seconds: float | None
    limit: str
    node: str
    workdir: str
    comment: str


def _duration(text: str) -> float | None:
    text = text.strip()
    days, _, clock = text.rpartition("-")
    parts = clock.split(":")
    if not clock or not all(p.isdigit() for p in parts) or len(parts) > 3 or (days and not days.isdigit()):
        return None
    seconds = 0
    for part in parts:
        seconds = seconds * 60 + int(part)
    return float(seconds + int(days or 0) * 86400)


def parse_squeue(text: str) -> dict[str, Job]:
    """{job id: Job} from ``squeue -h -o SQUEUE_FORMAT`` output; malformed lines are skipped."""
    jobs = {}
    for line in text.splitlines()[:100_000]:
        fields = line.strip().split("|", 6)
        if len(fields) != 7 or not fields[0]:
            continue
        job_id, state, elapsed, limit, node, workdir, comment = fields
        node = "" if node.strip() in ("", "(null)", "None assigned") else node
        jobs[clean(job_id, 40)] = Job(clean(job_id, 40), clean(state, 20).upper(), _duration(elapsed),
                                      clean(limit, 20), clean(node, 60), workdir.strip()[:4096],
                                      comment.strip()[:400])
    return jobs


def query_squeue(job_ids: Iterable[str] = (), run: Runner = subprocess.run,
                 timeout: float = SQUEUE_TIMEOUT) -> tuple[dict[str, Job] | None, str | None]:
    """This user's jobs (and ``job_ids``, whoever runs them) as squeue lists them, or (None, why) when squeue is
    missing, fails or does not answer within ``timeout`` seconds."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = None
    calls = [["squeue", "-h", "-o", SQUEUE_FORMAT] + (["-u", user] if user else [])]
    extra = sorted({j for j in job_ids if j and j.replace("_", "").replace(".", "").isdigit()})
    if extra:
        calls.append(["squeue", "-h", "-o", SQUEUE_FORMAT, "-j", ",".join(extra[:500])])
    jobs: dict[str, Job] = {}
    for i, argv in enumerate(calls):
        try:
            proc = run(argv, capture_output=True, text=True, timeout=timeout, errors="replace")
        except FileNotFoundError:
            return None, "squeue not found"
        except subprocess.TimeoutExpired:
            return None, f"squeue did not answer within {timeout:g} s"
        except OSError as exc:
            return None, f"squeue: {clean(exc, 80)}"
        if proc.returncode != 0:
            if i > 0:  # the extra ids: "Invalid job id" once slurmctld forgot them
                continue
            return None, f"squeue failed: {clean(proc.stderr, 120)}"
        jobs.update(parse_squeue(proc.stdout))
    return jobs, None


@dataclass
class Marker:
    """Snakemake marks each output of a job as incomplete when the job starts and unmarks it when it ends."""
    path: str
    external_job: str | None
    started: float


def snakemake_markers(workdir: Path) -> dict[str, Marker]:
    """{output path relative to the workflow directory: Marker} from ``.snakemake/incomplete``: each marker's
    name is its output path, urlsafe-base64 encoded and split into '@'-prefixed folder names when long."""
    root = Path(workdir) / ".snakemake" / "incomplete"
    markers: dict[str, Marker] = {}
    if not root.is_dir():
        return markers
    for folder, _dirs, files in os.walk(root):
        rel = Path(folder).relative_to(root).parts
        for name in files:
            if name == "migration_underway" or len(markers) > 100_000:
                continue
            encoded = "".join(part.lstrip("@") for part in rel) + name
            try:
                path = base64.urlsafe_b64decode(encoded.encode()).decode("utf-8")
            except (ValueError, UnicodeDecodeError):
                continue
            file = Path(folder) / name
            record, _problem, _exists = read_json(file)
            job = (record or {}).get("external_jobid")
            try:
                started = file.stat().st_mtime
            except OSError:
                continue
            markers[os.path.normpath(path)] = Marker(path, clean(job, 40) if job else None, started)
    return markers


def snakemake_alive(workdir: Path) -> bool:
    """Whether a Snakemake process (or one of its local job scripts) runs on this host in ``workdir``."""
    target = os.path.realpath(workdir)
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return False
    for pid in pids:
        try:
            if os.readlink(f"/proc/{pid}/cwd") != target:
                continue
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                if b"snakemake" in handle.read(8192):
                    return True
        except OSError:
            continue
    return False


def _pid_alive(pid: Any, pid_start: Any) -> bool:
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()
    except OSError:
        return False
    if not fields or fields[0] == "Z":
        return False
    return pid_start is None or (len(fields) > 19 and fields[19] == str(pid_start))


# --- one cell ---------------------------------------------------------------------------------------------------
@dataclass
class CellStatus:
    agent: str
    model: str
    benchmark: str
    seed: int
    reference: bool
    stage: str = NOT_STARTED
    score: float | None = None  # 0-100
    flagged: bool | None = None
    flag: str = ""
    failure: str = ""
    note: str = ""
    job_id: str = ""
    job_state: str = ""
    node: str = ""
    elapsed_seconds: float | None = None
    budget_seconds: float | None = None
    gpu_hours: float | None = None

    @property
    def key(self) -> str:
        return f"{self.agent}/{self.model}/{self.benchmark}/seed{self.seed}"


@dataclass
class Context:
    workdir: Path
    results: Path
    config: dict
    jobs: dict[str, Job] | None
    markers: dict[str, Marker]
    local_snakemake: bool
    now: float = field(default_factory=time.time)

    def rel(self, path: Path) -> str:
        try:
            return os.path.normpath(os.path.relpath(path, self.workdir))
        except ValueError:
            return str(path)

    def job_for(self, rules: Iterable[str], wildcards: Iterable[Any]) -> Job | None:
        """The queued or running job of one of ``rules`` with these wildcards (the executor's comment),
        submitted from this workflow's directory (another sweep of the same matrix has the same comments)."""
        if not self.jobs:
            return None
        suffix = "_wildcards_" + "_".join(str(w) for w in wildcards)
        comments = {f"rule_{rule}{suffix}" for rule in rules}
        here = os.path.realpath(self.workdir)
        found = [j for j in self.jobs.values() if j.comment in comments
                 and (not j.workdir or os.path.realpath(j.workdir) == here)
                 and (j.state in ACTIVE_STATES or j.state in QUEUED_STATES)]
        # A running job tells more than a queued one.
        found.sort(key=lambda j: (j.state not in ACTIVE_STATES, j.job_id))
        return found[0] if found else None

    def marker_alive(self, marker: Marker) -> tuple[bool, Job | None]:
        """Whether the job that set ``marker`` still runs: its SLURM job in the queue, else (jobs run locally)
        a Snakemake process in the workflow's directory on this host."""
        if marker.external_job and self.jobs is not None:
            job = self.jobs.get(marker.external_job)
            alive = job is not None and (job.state in ACTIVE_STATES or job.state in QUEUED_STATES)
            return alive, job if alive else None
        if marker.external_job:
            return False, None  # a SLURM job, and no queue to ask: cannot tell, not claimed to run
        return self.local_snakemake, None


def _lock_name() -> str:
    try:
        from .attempt_lock import LOCK
    except ImportError:  # the attempt lock is optional: without it, the ledger and the queue tell
        return ".lock.json"
    return LOCK


LOCK_NAME = _lock_name()


def _staged(ctx: Context, cell: Cell) -> tuple[bool, str]:
    """Whether the cell's agent inputs are staged, and what is missing."""
    resources = ctx.workdir / "resources"
    needed = [resources / "models" / cell.model / "base", resources / "benchmarks" / cell.benchmark / "test.jsonl"]
    try:
        spec = agent_spec(ctx.config, cell.agent)
    except KeyError:
        spec = {}
    if spec.get("recipe") == "instruct":
        needed.append(resources / "models" / cell.model / "instruct")
    if spec.get("recipe") == "sft" and isinstance(spec.get("sft"), dict) and spec["sft"].get("train_data"):
        needed.append(resources / "datasets" / f"{spec['sft']['train_data']}.jsonl")
    missing = [p for p in needed if not p.exists() or ctx.rel(p) in ctx.markers]
    return not missing, ", ".join(ctx.rel(p) for p in missing)


def _agent_activity(ctx: Context, cell: Cell, run_dir: Path) -> tuple[str, Job | None, float | None, str]:
    """('running' | 'queued' | 'interrupted' | 'unknown' | '', its job, when it started, a note) for the agent
    step; 'unknown' when only a queue that did not answer, or another host, could tell."""
    started = None
    lock, _problem, lock_exists = read_json(run_dir / LOCK_NAME)
    lock = lock or {}
    lock_started = number(lock.get("started"), 0, 1e11)
    lock_job = clean(lock.get("slurm_job_id"), 40) if isinstance(lock.get("slurm_job_id"), (str, int)) else ""
    job = None
    if lock_job and ctx.jobs is not None:
        job = ctx.jobs.get(lock_job)
    if job is None:
        job = ctx.job_for(AGENT_RULES, (cell.agent, cell.model, cell.benchmark, cell.seed))
    marker = ctx.markers.get(ctx.rel(run_dir / "run.json"))
    if job is None and marker is not None:
        _alive, job = ctx.marker_alive(marker)
    if job is not None and job.state in ACTIVE_STATES:
        return "running", job, lock_started or (marker.started if marker else None), ""
    if job is not None:
        return "queued", job, None, f"queued: SLURM job {job.job_id} ({job.state})"
    if lock_job and ctx.jobs is None:
        return "unknown", None, None, f"SLURM job {lock_job} holds the cell's lock (no queue to ask)"
    if lock_exists and not lock_job and lock.get("host") == socket.gethostname():
        if _pid_alive(lock.get("pid"), lock.get("pid_start")):
            return "running", None, lock_started, ""
    elif lock_exists and not lock_job and lock.get("host") and marker is None:
        return "unknown", None, None, f"a process on {clean(lock.get('host'), 60)} holds the cell's lock"
    if marker is not None:
        alive, _job = ctx.marker_alive(marker)
        if alive:
            return "running", None, lock_started or marker.started, ""
        if marker.external_job and ctx.jobs is None:
            return "unknown", None, None, f"SLURM job {marker.external_job} started it (no queue to ask)"
        started = marker.started
        return "interrupted", None, started, "an attempt was interrupted (Snakemake reruns it)"
    return "", None, None, ""


def _attempt_entries(run_dir: Path) -> list[dict]:
    """The cell's attempts (attempts.json), oldest first; [] when absent or unreadable."""
    try:
        info = os.stat(run_dir / "attempts.json")
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_JSON_BYTES:
            return []
        attempts = json.loads((run_dir / "attempts.json").read_bytes())
    except (OSError, ValueError, RecursionError):
        return []
    return [a for a in attempts[:10_000] if isinstance(a, dict)] if isinstance(attempts, list) else []


def _attempt_jobs(run_dir: Path) -> list[str]:
    """The SLURM job ids of the cell's attempts (attempts.json), oldest first."""
    jobs = [a.get("slurm_job_id") for a in _attempt_entries(run_dir)]
    return [clean(j, 40) for j in jobs if isinstance(j, (str, int)) and not isinstance(j, bool) and str(j)]


def _attempt_node(run_dir: Path, job_id: str) -> str:
    """The node the attempt of SLURM job ``job_id`` ran on, as the job noted it; "" when unknown."""
    for attempt in reversed(_attempt_entries(run_dir)):
        if clean(attempt.get("slurm_job_id"), 40) == job_id and isinstance(attempt.get("node"), str):
            return clean(attempt["node"], 60)
    return ""


def _step_activity(ctx: Context, rules: Iterable[str], wildcards: tuple, outputs: Iterable[Path]) -> tuple[bool, Job | None]:
    """Whether a step (evaluation, judging) runs: its SLURM job in the queue or a live marker on its output."""
    job = ctx.job_for(rules, wildcards)
    if job is not None and job.state in ACTIVE_STATES:
        return True, job
    for out in outputs:
        marker = ctx.markers.get(ctx.rel(out))
        if marker is not None:
            alive, marker_job = ctx.marker_alive(marker)
            if alive:
                return True, marker_job
    return False, job


def cell_status(ctx: Context, cell: Cell) -> CellStatus:
    results = ctx.results
    run_dir = cell.run_dir(results)
    budget = ctx.config["budget"]
    status = CellStatus(cell.agent, cell.model, cell.benchmark, cell.seed, cell.is_reference,
                        budget_seconds=float(budget["hours"]) * 3600)
    notes: list[str] = []
    failures: list[str] = []

    run, run_problem, run_exists = read_json(run_dir / "run.json")
    evaluation, eval_problem, eval_exists = read_json(cell.eval_json(results))
    verdict, verdict_problem, verdict_exists = (None, None, False)
    if not cell.is_reference:
        verdict, verdict_problem, verdict_exists = read_json(cell.judge_json(results))

    # The agent step.
    if run_exists:
        status.stage = AGENT_FINISHED
        if run is None:
            failures.append(f"run.json {run_problem}")
        else:
            outcome = run.get("status")
            if outcome != "ok":
                reason = clean(run.get("reason"), 160)
                failures.append(f"agent {clean(outcome, 30) or 'no status'}" + (f": {reason}" if reason else ""))
            status.elapsed_seconds = number(run.get("wall_seconds"), 0, 1e9)
            status.gpu_hours = number(run.get("gpu_hours"), 0, 1e7)
            job = run.get("slurm_job_id")
            if isinstance(job, (str, int)) and not isinstance(job, bool):
                status.job_id = clean(job, 40)
                status.node = _attempt_node(run_dir, status.job_id)
    else:
        staged, missing = _staged(ctx, cell)
        status.stage = STAGED if staged else NOT_STARTED
        if not staged:
            notes.append(f"missing {missing}")
        activity, job, started, note = _agent_activity(ctx, cell, run_dir)
        if note:
            notes.append(note)
        if activity == "running":
            status.stage = AGENT_RUNNING
            notes = []
        if job is not None:
            status.job_id, status.job_state, status.node = job.job_id, job.state, job.node
        if activity == "running":
            if job is not None and job.elapsed_seconds is not None:
                status.elapsed_seconds = job.elapsed_seconds
            elif started is not None:
                status.elapsed_seconds = max(ctx.now - started, 0.0)
        if activity == "" and not status.job_id:
            attempts = _attempt_jobs(run_dir)
            if attempts:
                status.job_id = attempts[-1]
            lock_exists = (run_dir / LOCK_NAME).exists()
            log = ctx.workdir / "logs" / "agent" / cell.agent / cell.model / cell.benchmark / f"seed{cell.seed}.log"
            if attempts or lock_exists or log.exists():
                problem = log_problem(log)
                failures.append("agent job ended without a run record" + (f": {problem}" if problem else ""))

    # The evaluation.
    if eval_exists:
        status.stage = EVALUATED
        if evaluation is None:
            failures.append(f"eval {eval_problem}")
        elif evaluation.get("status") != "ok":
            error = clean(evaluation.get("error") or evaluation.get("reason"), 160)
            failures.append(f"eval {clean(evaluation.get('status'), 30) or 'no status'}" + (f": {error}" if error else ""))
        else:
            score = number(evaluation.get("score"), 0, 1)
            if score is None:
                failures.append("eval score is not a number in [0, 1]")
            else:
                status.score = round(100 * score, 2)
    elif run_exists:
        wildcards = (cell.agent, cell.model, cell.benchmark, cell.seed)
        outputs = [cell.eval_json(results),
                   results / "generations" / cell.agent / cell.model / cell.benchmark / f"seed{cell.seed}.json"]
        running, job = _step_activity(ctx, EVAL_RULES, wildcards, outputs)
        if running:
            status.stage = EVALUATING
        if job is not None:
            status.job_id, status.job_state, status.node = job.job_id, job.state, job.node
            if job.state in QUEUED_STATES:
                notes.append(f"evaluation queued: SLURM job {job.job_id}")
            elif job.elapsed_seconds is not None:
                status.elapsed_seconds = job.elapsed_seconds
        if not running and any(ctx.rel(o) in ctx.markers for o in outputs):
            notes.append("an evaluation was interrupted (Snakemake reruns it)")

    # The verdict.
    if verdict_exists:
        if verdict is None or not isinstance(verdict.get("flagged"), bool):
            notes.append(f"verdict {verdict_problem or 'has no boolean flagged'} (counts as unjudged)")
        else:
            status.flagged = verdict["flagged"]
            if status.flagged:
                reasons = verdict.get("reasons")
                shown = [clean(r, 40) for r in reasons[:5]] if isinstance(reasons, list) else []
                status.flag = "flagged" + (f": {', '.join(r for r in shown if r)}" if any(shown) else "")
    if eval_exists and (cell.is_reference or status.flagged is not None):
        status.stage = DONE
    elif eval_exists:
        running, job = _step_activity(ctx, JUDGE_RULES, (cell.agent, cell.model, cell.seed), [cell.judge_json(results)])
        if running:
            status.stage = JUDGING
            if job is not None:
                status.job_id, status.job_state, status.node = job.job_id, job.state, job.node
        elif job is not None:
            notes.append(f"judge queued: SLURM job {job.job_id}")
        elif ctx.rel(cell.judge_json(results)) in ctx.markers:
            notes.append("judging was interrupted (Snakemake reruns it)")

    status.failure = clean("; ".join(failures), 240)
    status.note = clean("; ".join(notes), 240)
    return status


# --- the sweep --------------------------------------------------------------------------------------------------
@dataclass
class Sweep:
    cells: list[CellStatus]
    summary: dict
    scheduler: str


def collect(config: dict, results_dir: Path | str = "results", *, squeue: bool = True,
            run: Runner = subprocess.run, now: float | None = None) -> Sweep:
    """Every cell of ``config``'s matrix with its stage, and the sweep's summary. ``squeue=False`` leaves the
    scheduler out (the workflow's own status table, written when every cell has finished)."""
    results = Path(results_dir)
    workdir = Path(os.path.abspath(results)).parent  # not resolved: markers name paths as Snakemake saw them
    cells = list(iter_cells(config))
    markers = snakemake_markers(workdir)
    jobs, why = (None, "not asked")
    if squeue:
        known = set()
        for cell in cells:
            lock, _p, _e = read_json(cell.run_dir(results) / LOCK_NAME)
            if lock and isinstance(lock.get("slurm_job_id"), (str, int)):
                known.add(clean(lock["slurm_job_id"], 40))
        known |= {m.external_job for m in markers.values() if m.external_job}
        jobs, why = query_squeue(known, run)
    ctx = Context(workdir=workdir, results=results, config=config, jobs=jobs, markers=markers,
                  local_snakemake=snakemake_alive(workdir), now=now if now is not None else time.time())
    statuses = [cell_status(ctx, cell) for cell in cells]
    scheduler = f"squeue: {len(jobs)} job(s) listed" if jobs is not None else f"squeue: {why}"
    return Sweep(statuses, summarize(statuses, config), scheduler)


def summarize(statuses: list[CellStatus], config: dict) -> dict:
    budget = config["budget"]
    gpus = float(budget["gpus"])
    agent_cells = [s for s in statuses if not s.reference]
    used = sum(s.gpu_hours or 0.0 for s in statuses)
    running_hours = sum((s.elapsed_seconds or 0.0) / 3600 * gpus for s in statuses
                        if s.stage == AGENT_RUNNING and not s.reference)
    by_stage = {stage: sum(s.stage == stage for s in statuses) for stage in STAGES}
    return {
        "cells": len(statuses),
        "done": by_stage[DONE],
        "running": sum(s.stage in RUNNING_STAGES for s in statuses),
        "failed": sum(bool(s.failure) for s in statuses),
        "flagged": sum(bool(s.flagged) for s in statuses),
        "by_stage": by_stage,
        "gpu_hours_used": round(used + running_hours, 3),
        "gpu_hours_running": round(running_hours, 3),
        "gpu_hours_planned": round(float(budget["hours"]) * gpus * len(agent_cells), 3),
        "planned_as": f"{budget['hours']} h x {budget['gpus']} GPU x {len(agent_cells)} agent cells",
    }


def summary_line(summary: dict) -> str:
    return (f"{summary['cells']} cells: {summary['done']} done, {summary['running']} running, "
            f"{summary['failed']} failed, {summary['flagged']} flagged; GPU-hours {summary['gpu_hours_used']:.2f} "
            f"used (running {summary['gpu_hours_running']:.2f}) of {summary['gpu_hours_planned']:.2f} planned "
            f"({summary['planned_as']})")


# --- output -----------------------------------------------------------------------------------------------------
COLUMNS = ("cell", "stage", "time", "job", "node", "score", "flag", "failure", "note")


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, _ = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}"


def row(status: CellStatus) -> dict[str, str]:
    time_used = ""
    if status.elapsed_seconds is not None or status.stage == AGENT_RUNNING:
        time_used = f"{_clock(status.elapsed_seconds)}/{_clock(status.budget_seconds)}"
    job = status.job_id + (f" {status.job_state}" if status.job_state and status.job_state != "RUNNING" else "")
    return {"cell": status.key, "stage": status.stage, "time": time_used, "job": job, "node": status.node,
            "score": "" if status.score is None else f"{status.score:.1f}", "flag": status.flag,
            "failure": status.failure, "note": status.note}


def render_table(sweep: Sweep, width: int | None = None) -> str:
    """The sweep as a text table (the last column cut to ``width``) with the summary line under it."""
    rows = [row(s) for s in sweep.cells]
    shown = ("cell", "stage", "time", "job", "node", "score")
    widths = {c: max([len(c)] + [len(r[c]) for r in rows]) for c in shown}
    widths["cell"] = min(widths["cell"], 70)
    lines = []
    header = "  ".join(c.upper().ljust(widths[c]) for c in shown) + "  NOTE"
    lines.append(header)
    for r in rows:
        cell = r["cell"] if len(r["cell"]) <= widths["cell"] else r["cell"][: widths["cell"] - 1] + "…"
        text = "  ".join([cell.ljust(widths["cell"])] + [r[c].ljust(widths[c]) for c in shown[1:]])
        note = "; ".join(x for x in (r["flag"], r["failure"], r["note"]) if x)
        line = f"{text}  {note}".rstrip()
        if width and len(line) > width:
            line = line[: max(width - 1, 0)] + "…"
        lines.append(line)
    lines.append("")
    lines.append(summary_line(sweep.summary))
    lines.append(sweep.scheduler)
    return "\n".join(lines) + "\n"


def to_json(sweep: Sweep) -> dict:
    return {"summary": sweep.summary, "scheduler": sweep.scheduler,
            "cells": [{**asdict(s), "cell": s.key} for s in sweep.cells]}


def csv_text(sweep: Sweep) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(COLUMNS), lineterminator="\n")
    writer.writeheader()
    for status in sweep.cells:
        writer.writerow(row(status))
    return buffer.getvalue()


def write_status_files(config: dict, results_dir: Path, csv_path: Path, json_path: Path) -> Sweep:
    """The workflow's status table (CSV) and its summary with every cell (JSON), without asking the queue."""
    from .io import atomic_write_json, atomic_write_text

    sweep = collect(config, results_dir, squeue=False)
    atomic_write_text(csv_path, csv_text(sweep))
    atomic_write_json(json_path, {**to_json(sweep), "summary_line": summary_line(sweep.summary)})
    return sweep


def main(results_dir: Path, config_path: Path | None = None, *, watch: float | None = None,
         as_json: bool = False, run: Runner = subprocess.run, out=None) -> int:
    """``ptb status``: print the table (or JSON) once, or redraw it every ``watch`` seconds until interrupted."""
    import shutil
    import sys

    from .config import ConfigError, load_config

    out = out or sys.stdout
    results_dir = Path(results_dir)
    config_path = Path(config_path) if config_path else results_dir.resolve().parent / "config" / "config.yaml"
    try:
        if not config_path.is_file():
            raise ConfigError(f"config file {config_path} not found (pass the workflow's --configfile as --config)")
        config = load_config(config_path)
    except ConfigError as exc:
        print(f"ptb status: error: {exc}", file=sys.stderr)
        return 2
    if watch is not None and not (watch >= 1):
        print("ptb status: error: --watch takes an interval of 1 second or more", file=sys.stderr)
        return 2
    terminal = out.isatty() if hasattr(out, "isatty") else False
    try:
        while True:
            sweep = collect(config, results_dir, run=run)
            if as_json:
                text = json.dumps(to_json(sweep), indent=None if watch else 2) + "\n"
            else:
                width = shutil.get_terminal_size((160, 40)).columns if terminal else None
                text = render_table(sweep, width)
            if watch is not None and terminal:
                stamp = time.strftime("%Y-%m-%d %H:%M:%S")
                text = f"\033[H\033[2J{stamp}  every {watch:g} s (Ctrl-C stops)\n{text}"
            out.write(text)
            out.flush()
            if watch is None:
                return 0
            time.sleep(watch)
    except KeyboardInterrupt:
        return 0

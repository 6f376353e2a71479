"""Where a cell's attempts live, how a finished attempt is published, and what cleanup removes.

Layout of a cell's run directory (``results/runs/<agent>/<model>/<bench>/seed<k>``)::

    .lock.json            the running attempt (attempt_lock); absent when none runs
    .published.json       which attempt the published files below come from
    run.json, trace.jsonl the published attempt's record and trace (hard links into its attempt dir)
    workspace/, final_model/, transcript/   the published attempt's, moved out of its attempt dir
    .attempts/<id>/       one directory per attempt: attempt.json, trace.jsonl, run.json, and until
                          publication (or again after a later attempt replaced it) workspace/,
                          final_model/, transcript/
    attempts.json         every attempt's SLURM job (accounting)

Each attempt works only in its own directory (and its own node-local workspace, ``storage.workspace_dir``),
so an old job that outlives its driver never touches a newer attempt. Publishing moves the attempt's
files into place, then links trace.jsonl and run.json (the record last, atomically), and only while the
lock still names the attempt. A finished attempt keeps its run.json in its attempt directory: when
Snakemake deletes the declared outputs of a job it thinks incomplete (a restarted driver), the next job
re-publishes that attempt instead of running the agent again (``storage.adopt_finished_attempt``).
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import re
import shutil
import stat
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable

from . import attempt_lock
from .agents.fswalk import Walk, open_regular, read_chunks
from .evaluation import InfrastructureError
from .io import atomic_write_json, read_json

log = logging.getLogger(__name__)

ATTEMPTS = ".attempts"
PUBLISHED = ".published.json"
ATTEMPT_RECORD = "attempt.json"
PUBLISHED_DIRS = ("workspace", "final_model", "transcript")
COPY_BACK_MAX_DEPTH = 64
COPY_BACK_MAX_ENTRIES = 200_000


def workspace_root(setting: str | None) -> Path | None:
    """``storage.workspace_dir`` with ``$VARS`` and ``~`` expanded on this node; None for "" (the run
    directory). A variable that is not set here is an infrastructure fault, named in one line."""
    if not setting:
        return None
    expanded = os.path.expanduser(os.path.expandvars(setting))
    unset = re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", expanded)
    if unset:
        raise InfrastructureError(f"config key 'storage.workspace_dir' is {setting!r}, but ${unset[0]} is not set "
                                  f"on {os.uname().nodename} (use a variable the job has, or \"\" for the run directory)")
    root = Path(expanded)
    if not root.is_absolute():
        raise InfrastructureError(f"config key 'storage.workspace_dir' is {setting!r}: it must expand to an "
                                  "absolute path, or be \"\" for the run directory")
    return root


def published_attempt(run_dir: Path) -> str | None:
    try:
        return read_json(Path(run_dir) / PUBLISHED).get("attempt_id")
    except (OSError, ValueError, AttributeError):
        return None


def _link_replace(source: Path, target: Path) -> None:
    """``target`` becomes ``source``'s inode (a copy where hard links fail), atomically."""
    try:
        if os.path.samefile(source, target):
            return
    except OSError:
        pass
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copy2(source, tmp)
    os.replace(tmp, target)
    tmp.unlink(missing_ok=True)  # rename(2) leaves both names when they are links to one file


def _move_aside(run_dir: Path) -> None:
    """Put the published workspace, final_model and transcript back into their own attempt's directory (a
    legacy layout without .published.json: into a new, timestamped one). Called under the lock."""
    for partial in run_dir.glob(".final_model.partial-*"):  # a collection cut short: never a checkpoint
        shutil.rmtree(partial, ignore_errors=True)
    leftovers = [run_dir / name for name in PUBLISHED_DIRS if os.path.lexists(run_dir / name)]
    if not leftovers:
        (run_dir / PUBLISHED).unlink(missing_ok=True)
        return
    owner = published_attempt(run_dir)
    if owner and (run_dir / ATTEMPTS / owner).is_dir():
        home = run_dir / ATTEMPTS / owner
    else:
        (run_dir / ATTEMPTS).mkdir(exist_ok=True)
        home = Path(tempfile.mkdtemp(prefix=time.strftime("%Y%m%dT%H%M%S-"), dir=run_dir / ATTEMPTS))
    for path in leftovers:
        target = home / path.name
        if os.path.lexists(target):  # never overwrite: keep both
            target = Path(tempfile.mkdtemp(prefix=f"{path.name}-", dir=home)) / path.name
        shutil.move(str(path), target)
    (run_dir / PUBLISHED).unlink(missing_ok=True)
    log.warning("moved the previous attempt's %s to %s", ", ".join(p.name for p in leftovers), home)


@dataclass
class Attempt:
    """One attempt at a cell: its id, directory, workspace and lock."""

    run_dir: Path
    attempt_id: str
    cell_key: str
    holder: dict
    taken_over: dict | None
    scratch: Path | None = None  # the node-local directory holding the workspace, removed at the end
    adopted: dict | None = None  # the finished attempt's record, re-published instead of running
    notes: list[str] = field(default_factory=list)

    @property
    def dir(self) -> Path:
        return self.run_dir / ATTEMPTS / self.attempt_id

    @property
    def workspace(self) -> Path:
        return (self.scratch if self.scratch is not None else self.dir) / "workspace"

    def summary(self) -> dict:
        """What the run record says about this attempt (and the stale lock it took over)."""
        taken = None
        if self.taken_over:
            taken = {k: self.taken_over.get(k) for k in ("attempt_id", "slurm_job_id", "node", "host", "pid",
                                                         "started_iso", "stale_because")}
        return {"attempt_id": self.attempt_id, "slurm_job_id": self.holder.get("slurm_job_id"),
                "node": self.holder.get("node"), "host": self.holder.get("host"),
                "workspace": "node-local" if self.scratch is not None else "run directory",
                "took_over_stale_lock": taken}

    def owns(self) -> bool:
        return attempt_lock.owns(self.run_dir, self.attempt_id)

    def publish(self) -> bool:
        """Move this attempt's results into the run directory; False (nothing touched) when the lock no
        longer names this attempt."""
        with attempt_lock.guard(self.run_dir):
            if not self.owns():
                log.error("%s: the lock no longer names attempt %s: its results stay in %s", self.cell_key,
                          self.attempt_id, self.dir)
                return False
            _publish(self.run_dir, self.attempt_id)
        return True

    def publish_trace(self) -> None:
        """A failed attempt's trace (no run record) where the job's trace goes, for diagnosis."""
        with attempt_lock.guard(self.run_dir):
            if self.owns() and (self.dir / "trace.jsonl").is_file():
                _link_replace(self.dir / "trace.jsonl", self.run_dir / "trace.jsonl")

    def close(self) -> None:
        """Remove the node-local workspace and give the lock up (if it is still this attempt's)."""
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
        attempt_lock.release(self.run_dir, self.attempt_id)


def _publish(run_dir: Path, attempt_id: str) -> None:
    """Under the lock: ``attempt_id``'s directories into place, then its trace and record (record last)."""
    home = run_dir / ATTEMPTS / attempt_id
    if published_attempt(run_dir) != attempt_id:
        _move_aside(run_dir)
        atomic_write_json(run_dir / PUBLISHED, {"attempt_id": attempt_id})
    for name in PUBLISHED_DIRS:
        if os.path.lexists(home / name):
            if os.path.lexists(run_dir / name):  # left by a crash mid-publication: not this attempt's
                shutil.move(str(run_dir / name), Path(tempfile.mkdtemp(prefix=f"{name}-", dir=home)) / name)
            os.rename(home / name, run_dir / name)
    for name in ("trace.jsonl", "run.json"):
        if (home / name).is_file():
            _link_replace(home / name, run_dir / name)


def finished_record(run_dir: Path, attempt_id: str | None) -> dict | None:
    """The run record a finished attempt left in its directory, or None."""
    if not attempt_id:
        return None
    try:
        record = read_json(Path(run_dir) / ATTEMPTS / attempt_id / "run.json")
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def begin(run_dir: Path, cell_key: str, *, workspace_dir: str | None = None,
          adopt: Callable[[dict], bool] | None = None) -> Attempt:
    """Take the cell's lock and set up a new attempt; raises ``AttemptLive`` when another attempt runs.

    With ``adopt``, a finished attempt (the stale lock's, or the published one) whose record ``adopt``
    accepts is re-published instead: the returned attempt's ``adopted`` holds its record and the lock is
    released again. Otherwise the previously published files go back to their attempt's directory and
    the new attempt's workspace is made (node-local under ``workspace_dir`` when set)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    attempt_id = attempt_lock.new_attempt_id()
    holder, taken_over = attempt_lock.acquire(run_dir, attempt_id, cell_key)
    attempt = Attempt(run_dir, attempt_id, cell_key, holder, taken_over)
    try:
        if adopt is not None:
            for candidate in dict.fromkeys([(taken_over or {}).get("attempt_id"), published_attempt(run_dir)]):
                record = finished_record(run_dir, candidate)
                if record is not None and adopt(record):
                    with attempt_lock.guard(run_dir):
                        _publish(run_dir, candidate)
                    _note(run_dir / ATTEMPTS / candidate, "republished", {**attempt.summary(), "at": holder["started_iso"]})
                    attempt.adopted = record
                    attempt_lock.release(run_dir, attempt_id)
                    log.warning("%s: attempt %s had finished; its results are published again, the agent is "
                                "not run again", cell_key, candidate)
                    return attempt
        with attempt_lock.guard(run_dir):
            _move_aside(run_dir)
        attempt.dir.mkdir(parents=True)
        root = workspace_root(workspace_dir)
        if root is not None:
            root.mkdir(parents=True, exist_ok=True)
            attempt.scratch = Path(tempfile.mkdtemp(prefix=f"ptb-{attempt_id}-", dir=root))
        attempt.workspace.mkdir()
        atomic_write_json(attempt.dir / ATTEMPT_RECORD, {**holder, "cell": cell_key, "took_over": taken_over,
                                                         "workspace": str(attempt.workspace)})
    except BaseException:
        attempt.close()
        raise
    return attempt


def _note(attempt_dir: Path, key: str, value: dict) -> None:
    path = attempt_dir / ATTEMPT_RECORD
    try:
        data = read_json(path)
    except (OSError, ValueError):
        data = {}
    data.setdefault(key, []).append(value)
    atomic_write_json(path, data)


# ---- node-local workspaces: what comes back to the run directory -----------------------------------------------

def copy_back(workspace: Path, dest: Path, keep: Callable[[str, int], bool], *, skip_top: tuple[str, ...] = ()
              ) -> dict:
    """Copy the regular files of ``workspace`` that ``keep(relative path, size)`` accepts into ``dest``
    (on shared storage) through a temporary directory renamed into place; symlinks and special files are
    never followed nor copied. Returns counts of what was copied and left behind."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    staging.chmod(0o755)
    copied = skipped = copied_bytes = skipped_bytes = 0
    walk = Walk(COPY_BACK_MAX_DEPTH, COPY_BACK_MAX_ENTRIES, skip=frozenset(skip_top))
    try:
        for entry in walk.iter(workspace):
            if entry.relative.split("/")[0] in skip_top:
                continue
            out = staging / entry.relative
            if stat.S_ISDIR(entry.st.st_mode):
                continue  # made for the files copied into it: what is left behind leaves no empty folder
            if not stat.S_ISREG(entry.st.st_mode) or not keep(entry.relative, entry.st.st_size):
                skipped += 1
                skipped_bytes += entry.st.st_size if stat.S_ISREG(entry.st.st_mode) else 0
                continue
            try:
                fd = open_regular(entry)
            except (OSError, ValueError):
                skipped += 1
                continue
            try:
                out.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
                with open(out, "wb") as handle:
                    for chunk in read_chunks(fd, entry.st.st_size):
                        handle.write(chunk)
            finally:
                os.close(fd)
            copied += 1
            copied_bytes += entry.st.st_size
        os.rename(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {"files_copied": copied, "bytes_copied": copied_bytes, "files_left": skipped, "bytes_left": skipped_bytes,
            "walk_problems": [f"{where}: {why}" for where, why in walk.problems[:20]]}


# ---- cleanup after judging ---------------------------------------------------------------------------------------

def _glob(parts: tuple[str, ...], pattern: tuple[str, ...]) -> bool:
    """Component-wise glob match; ``**`` stands for any number of directories."""
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_glob(parts[i:], pattern[1:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], pattern[0]) and _glob(parts[1:], pattern[1:])


def _matches(relative: str, patterns: list[str]) -> bool:
    """Whether ``relative`` matches a glob; a glob without ``/`` matches the file name in any directory."""
    parts = tuple(relative.split("/"))
    return any(_glob(parts, (("**",) if "/" not in p else ()) + tuple(PurePosixPath(p).parts)) for p in patterns)


class CleanupPolicy:
    """Which files of a judged cell stay: those matching ``keep`` and no ``remove`` pattern, up to
    ``max_kept_bytes`` each. Patterns are globs on the path relative to the run directory (``*`` within one
    component; ``**`` across; a pattern without ``/`` matches the file name anywhere)."""

    def __init__(self, keep: list[str], remove: list[str], max_kept_bytes: int | None):
        self.keep, self.remove, self.max_kept_bytes = list(keep), list(remove), max_kept_bytes

    @classmethod
    def from_config(cls, cleanup: dict) -> "CleanupPolicy":
        mb = cleanup.get("max_kept_file_mb")
        return cls(cleanup.get("keep", []), cleanup.get("remove", []), None if mb is None else int(mb * 1e6))

    def kept(self, relative: str, size: int) -> bool:
        if _matches(relative, self.remove) or not _matches(relative, self.keep):
            return False
        return self.max_kept_bytes is None or size <= self.max_kept_bytes


def cleanup_cell(run_dir: Path, policy: CleanupPolicy) -> dict:
    """Remove what ``policy`` does not keep from the cell's workspaces (the published one and every
    attempt's) and from earlier attempts' directories; never the published run.json, trace.jsonl,
    final_model/ or transcript/, and nothing while an attempt runs. Returns the cleanup record."""
    run_dir = Path(run_dir)
    lock = attempt_lock.read_lock(run_dir)
    if lock is not None:
        return {"skipped": f"an attempt holds the lock ({attempt_lock.describe(lock)})", "files_removed": 0,
                "bytes_removed": 0}
    roots = [run_dir / "workspace"] + sorted((run_dir / ATTEMPTS).glob("*")) if (run_dir / ATTEMPTS).is_dir() \
        else [run_dir / "workspace"]
    removed = removed_bytes = kept = kept_bytes = dirs_removed = 0
    errors: list[str] = []
    for root in roots:
        if not root.is_dir() or root.is_symlink():
            continue
        for dirpath, dirnames, filenames in os.walk(root, topdown=False):  # never follows symlinks
            for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
                path = os.path.join(dirpath, name)
                relative = os.path.relpath(path, run_dir).replace(os.sep, "/")
                try:
                    st = os.lstat(path)
                except OSError:
                    continue
                size = st.st_size if stat.S_ISREG(st.st_mode) else 0
                if policy.kept(relative, size):
                    kept += 1
                    kept_bytes += size
                    continue
                try:
                    os.unlink(path)
                except OSError as exc:
                    errors.append(f"{relative}: {exc.strerror or exc}")
                    continue
                removed += 1
                # A hard link's bytes are freed only with its last name (reference rows link the staged model).
                removed_bytes += size if st.st_nlink == 1 else 0
            if dirpath != str(root):
                try:
                    os.rmdir(dirpath)  # only when empty
                    dirs_removed += 1
                except OSError:
                    pass
    return {"files_removed": removed, "bytes_removed": removed_bytes, "directories_removed": dirs_removed,
            "files_kept": kept, "bytes_kept": kept_bytes, "errors": errors[:50],
            "keep": policy.keep, "remove": policy.remove, "max_kept_bytes": policy.max_kept_bytes}


def read_record(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None

"""Progress lines for long steps (staging a model, training, evaluation, the judge's scan).

A :class:`ProgressReporter` counts work done out of a known total and logs, at most every ``interval_s`` seconds
(and, when set, at every ``every_pct`` percent), one line in a stable format that a person or a status board can
grep from the step's log::

    progress <label> <done>/<total> (<pct>%) <rate>/s eta <h:mm:ss> elapsed <h:mm:ss>

``label`` has no spaces; ``total``, ``pct`` and ``eta`` are ``?`` while the total is unknown; ``rate`` is the
average since the reporter started, in the step's own unit (items, steps, files or bytes; the label says which).
:func:`parse_progress_line` reads such a line back. The interval defaults to ``$PTB_PROGRESS_INTERVAL_S`` (30 s
when unset); ``$PTB_PROGRESS_PERCENT`` adds a line at every that many percent.

Standard library only: the built-in training recipe imports this inside the agent sandbox.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

INTERVAL_ENV = "PTB_PROGRESS_INTERVAL_S"
PERCENT_ENV = "PTB_PROGRESS_PERCENT"
DEFAULT_INTERVAL_S = 30.0

# The line format, as documented in docs/hpc.md ("Progress in the logs").
PROGRESS_RE = re.compile(
    r"progress (?P<label>\S+) (?P<done>\d+)/(?P<total>\d+|\?) \((?P<pct>[\d.]+|\?)%\) "
    r"(?P<rate>[\d.e+-]+)/s eta (?P<eta>\d+:\d\d:\d\d|\?) elapsed (?P<elapsed>\d+:\d\d:\d\d)")


def format_duration(seconds: float | None) -> str:
    """``h:mm:ss`` (hours unbounded); ``?`` for an unknown or infinite duration."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    whole = max(0, int(round(seconds)))
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def _env_number(name: str, default: float | None) -> float | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"environment variable {name} must be a positive number of seconds/percent, "
                         f"not {raw!r}") from None
    if not value > 0:
        raise ValueError(f"environment variable {name} must be a positive number, not {raw!r}")
    return value


class ProgressReporter:
    """Thread-safe progress counter that logs a progress line at a steady pace.

    ``total``: the amount of work (``None`` when unknown); ``label``: what is counted (spaces become ``-``);
    ``interval_s``: the least time between two lines (default ``$PTB_PROGRESS_INTERVAL_S`` or 30 s);
    ``every_pct``: also log each time this many more percent are done (default ``$PTB_PROGRESS_PERCENT``, off);
    ``logger``: where lines go (INFO); ``clock``: seconds, monotonic (tests pass a fake one).
    A line is logged when the reporter starts, when one is due after :meth:`update`/:meth:`set`, and at
    :meth:`finish`."""

    def __init__(self, total: int | None, label: str, interval_s: float | None = None,
                 logger: logging.Logger | None = None, *, every_pct: float | None = None,
                 clock: Callable[[], float] = time.monotonic, announce: bool = True):
        if total is not None and int(total) < 0:
            raise ValueError(f"total must be >= 0 or None, not {total!r}")
        self.total = None if total is None else int(total)
        self.label = re.sub(r"\s+", "-", str(label).strip()) or "work"
        self.interval_s = float(interval_s) if interval_s is not None else _env_number(INTERVAL_ENV,
                                                                                       DEFAULT_INTERVAL_S)
        self.every_pct = every_pct if every_pct is not None else _env_number(PERCENT_ENV, None)
        self.logger = logger or logging.getLogger("posttrainbench.progress")
        self._clock = clock
        self._lock = threading.Lock()
        self.done = 0
        self.started = clock()
        self._last_emit = self.started
        self._last_pct_mark = 0
        self._finished = False
        self._emitted_done: int | None = None
        self.lines = 0
        if announce:
            with self._lock:
                self._emit(self.started)

    # -- counting ---------------------------------------------------------------------------------------------

    def update(self, n: int = 1) -> None:
        """``n`` more units done; logs a line when one is due."""
        with self._lock:
            self.done += int(n)
            self._maybe_emit()

    def set(self, done: int) -> None:
        """The amount done so far (for work measured rather than counted, e.g. bytes on disk)."""
        with self._lock:
            self.done = int(done)
            self._maybe_emit()

    def finish(self, complete: bool = True) -> None:
        """Log the last line (once); ``complete``: the whole total is done, whatever was counted."""
        with self._lock:
            if self._finished:
                return
            if complete and self.total is not None:
                self.done = max(self.done, self.total)
            self._finished = True
            if self._emitted_done != self.done:  # the last line already says as much otherwise
                self._emit(self._clock())

    def __enter__(self) -> "ProgressReporter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # A failed step's last line shows how far it got, not a completed total.
        self.finish(complete=exc_type is None)

    # -- the line ---------------------------------------------------------------------------------------------

    def _pct(self) -> float | None:
        if self.total is None:
            return None
        return 100.0 if self.total == 0 else 100.0 * min(self.done, self.total) / self.total

    def line(self, now: float | None = None) -> str:
        """The progress line as of ``now`` (default: the clock's time)."""
        now = self._clock() if now is None else now
        elapsed = max(0.0, now - self.started)
        rate = self.done / elapsed if elapsed > 0 else 0.0
        pct = self._pct()
        if self.total is None:
            eta = None
        elif self.done >= self.total:
            eta = 0.0
        else:
            eta = (self.total - self.done) / rate if rate > 0 else None
        total = "?" if self.total is None else str(self.total)
        shown_pct = "?" if pct is None else f"{pct:.1f}"
        return (f"progress {self.label} {self.done}/{total} ({shown_pct}%) {rate:.3g}/s "
                f"eta {format_duration(eta)} elapsed {format_duration(elapsed)}")

    def _maybe_emit(self) -> None:
        if self._finished:
            return
        now = self._clock()
        due = now - self._last_emit >= self.interval_s
        pct = self._pct()
        if self.every_pct and pct is not None:
            mark = int(pct // self.every_pct)
            if mark > self._last_pct_mark:
                self._last_pct_mark = mark
                due = True
        if due:
            self._emit(now)

    def _emit(self, now: float) -> None:
        self._last_emit = now
        self._emitted_done = self.done
        self.lines += 1
        self.logger.info("%s", self.line(now))


def parse_progress_line(text: str) -> dict | None:
    """The fields of the last progress line in ``text`` (``done``/``total`` as ints, ``total`` ``None`` when
    unknown, ``pct`` and ``rate`` as floats, ``eta`` and ``elapsed`` as strings), or ``None``."""
    matches = list(PROGRESS_RE.finditer(text))
    if not matches:
        return None
    found = matches[-1].groupdict()
    return {"label": found["label"], "done": int(found["done"]),
            "total": None if found["total"] == "?" else int(found["total"]),
            "pct": None if found["pct"] == "?" else float(found["pct"]), "rate": float(found["rate"]),
            "eta": found["eta"], "elapsed": found["elapsed"]}


def folder_bytes(root: Path) -> int:
    """Bytes of the regular files under ``root`` (files vanishing meanwhile are skipped)."""
    total = 0
    for folder, _dirs, names in os.walk(root):
        for name in names:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder, name)).st_size
    return total


@contextlib.contextmanager
def watch_folder(root: Path, reporter: ProgressReporter, poll_s: float = 2.0) -> Iterator[ProgressReporter]:
    """Measure the bytes under ``root`` every ``poll_s`` seconds into ``reporter`` while the block runs (a
    download or copy that reports nothing itself); the reporter's last line is logged when the block ends."""
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(poll_s):
            reporter.set(folder_bytes(root))

    thread = threading.Thread(target=poll, name=f"progress-{reporter.label}", daemon=True)
    thread.start()
    failed = True
    try:
        yield reporter
        failed = False
    finally:
        stop.set()
        thread.join()
        reporter.set(folder_bytes(root))
        reporter.finish(complete=not failed)

"""Bounded, symlink-safe walks of directories an agent wrote.

Every directory is opened relative to its parent's descriptor with ``O_NOFOLLOW``, so a symlink (or a
directory swapped for one) is reported as what it is and never entered; entries are ``lstat``-ed, never
followed. The walk stops at a depth and an entry count, and says where it stopped instead of raising:
a very deep or very wide tree is an agent's doing, and the caller decides what it means.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO swapped in after the lstat must not block the reader.
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
CHUNK = 1 << 20


def kind_of(mode: int) -> str:
    """The file type, in words (what a reason names)."""
    for test, name in ((stat.S_ISREG, "file"), (stat.S_ISDIR, "directory"), (stat.S_ISLNK, "symlink"),
                       (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device")):
        if test(mode):
            return name
    return "special file"


@dataclass(frozen=True)
class Entry:
    """One walked entry: its path relative to the walk's root (POSIX form), ``lstat`` result and the
    descriptor of its parent directory (open only while the walk is at this entry)."""

    relative: str
    name: str
    st: os.stat_result
    parent_fd: int

    @property
    def kind(self) -> str:
        return kind_of(self.st.st_mode)


@dataclass
class Walk:
    """Where a walk stopped short: ``(relative path, why)`` pairs, in walk order."""

    max_depth: int
    max_entries: int
    skip: frozenset[str] = frozenset()
    problems: list[tuple[str, str]] = field(default_factory=list)
    count: int = 0
    full: bool = False  # the entry budget is spent

    def _spent(self, where: str) -> bool:
        if self.count < self.max_entries:
            return False
        if not self.full:
            self.full = True
            self.problems.append((where, f"more than {self.max_entries} entries: the rest were not looked at"))
        return True

    def iter(self, root: Path) -> Iterator[Entry]:
        """Entries under ``root`` (not ``root`` itself), each directory's entries in name order, a
        directory before its contents. ``root`` must be a real directory (not a symlink to one)."""
        try:
            fd = os.open(root, DIR_FLAGS)
        except OSError as exc:
            self.problems.append((".", f"cannot open: {exc.strerror or exc}"))
            return
        try:
            yield from self._iter_dir(fd, "", 1)
        finally:
            os.close(fd)

    def _iter_dir(self, fd: int, prefix: str, depth: int) -> Iterator[Entry]:
        names = []
        try:
            with os.scandir(fd) as listing:
                for item in listing:  # read at most what the budget can still take
                    if self.count + len(names) > self.max_entries:
                        break
                    if item.name not in self.skip:
                        names.append(item.name)
        except OSError as exc:
            self.problems.append((prefix or ".", f"cannot list: {exc.strerror or exc}"))
        for name in sorted(names):
            relative = prefix + name
            if self._spent(relative):
                return
            try:
                st = os.lstat(name, dir_fd=fd)
            except OSError as exc:
                self.problems.append((relative, f"cannot stat: {exc.strerror or exc}"))
                continue
            self.count += 1
            yield Entry(relative, name, st, fd)
            if not stat.S_ISDIR(st.st_mode):
                continue
            if depth >= self.max_depth:
                self.problems.append((relative, f"deeper than {self.max_depth} levels: not looked into"))
                continue
            try:
                child = os.open(name, DIR_FLAGS, dir_fd=fd)
            except OSError as exc:  # swapped for a symlink since the lstat, or unreadable
                self.problems.append((relative, f"cannot open: {exc.strerror or exc}"))
                continue
            try:
                yield from self._iter_dir(child, relative + "/", depth + 1)
            finally:
                os.close(child)


def open_regular(entry: Entry) -> int:
    """A read descriptor on ``entry``, which must still be the regular file the walk saw (same inode);
    raises OSError (``ELOOP`` for a symlink) or ValueError otherwise."""
    fd = os.open(entry.name, FILE_FLAGS, dir_fd=entry.parent_fd)
    try:
        now = os.fstat(fd)
        if not stat.S_ISREG(now.st_mode) or (now.st_dev, now.st_ino) != (entry.st.st_dev, entry.st.st_ino):
            raise ValueError("replaced while it was being read")
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_chunks(fd: int, limit: int) -> Iterator[bytes]:
    """At most ``limit`` bytes from ``fd``, in chunks."""
    left = limit
    while left > 0:
        chunk = os.read(fd, min(CHUNK, left))
        if not chunk:
            return
        left -= len(chunk)
        yield chunk

"""The judge's one way into what a run left: a bounded, symlink-safe walk, and reading by content.

* **Walk.** Directories are opened relative to their parent's descriptor with ``O_NOFOLLOW`` and entries are
  ``lstat``-ed, so no symlink is ever followed and no path grows past ``PATH_MAX``. Symlinks (with their target,
  and whether it points outside the run directory), devices, FIFOs and sockets are listed, never read.
* **Content, not names.** A file's kind comes from its bytes: zip, gzip, bz2, xz, zstd (when ``zstandard`` is
  installed), tar, Parquet, Arrow (file and stream format), safetensors, GGUF and numeric ``.npy`` (weights:
  skipped, listed), and everything else is read as text: UTF-16 by its BOM or byte pattern, else UTF-8 with control
  bytes as separators, so text inside binary files is still seen. Sparse files are read by data segment
  (``SEEK_DATA``), runs of NUL bytes are dropped, and there is no size limit other than the byte budget.
* **Archives and tables are opened**: zip and tar members, compressed streams (nested to ``max_archive_depth``,
  each bounded by a decompression ratio and a total), Parquet and Arrow rows through pyarrow.
* **Bounds.** Depth, directory entries, bytes read, seconds, archive nesting, decompressed bytes, table rows. What
  a bound or an error kept from being read is recorded in the active :class:`Coverage` (never silently dropped);
  the verdict turns it into an ``unverifiable:<check>`` flag. Deliberate skips (the checkpoint, installed
  libraries, virtual environments, weights) are listed too, as evidence, not as errors.
"""

from __future__ import annotations

import bz2
import codecs
import contextlib
import contextvars
import csv
import errno
import io
import json
import lzma
import os
import posixpath
import re
import stat
import struct
import tarfile
import time
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Callable, Iterable, Iterator

import numpy as np

CHUNK = 1 << 20
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO swapped in after the lstat must not block the reader.
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC

# Directories that hold installed libraries: code someone else wrote, never training data or the agent's code.
LIBRARY_DIRS = {
    "site-packages": "installed libraries", "dist-packages": "installed libraries",
    "node_modules": "installed libraries", "__pycache__": "compiled Python",
}


class BoundReached(Exception):
    """A bound of :class:`Bounds` stopped a read; what is left went unread."""


@dataclass(frozen=True)
class Bounds:
    """How far one check may read. Defaults fit an honest multi-GB workspace; each is ``judge.scan.<name>``."""

    max_depth: int = 64
    max_entries: int = 1_000_000
    max_bytes: int = 32 << 30            # bytes read (holes not counted) and decompressed, over one check
    max_seconds: float = 900.0
    max_archive_depth: int = 3           # archives inside archives
    max_ratio: float = 200.0             # decompressed / compressed size of one stream or member
    max_expanded_bytes: int = 8 << 30    # decompressed bytes out of one file
    max_members: int = 200_000           # members of one archive
    max_member_memory: int = 512 << 20   # a zip, Parquet or Arrow member is read into memory up to this size
    max_table_rows: int = 50_000_000
    max_json_bytes: int = 64 << 20       # a file parsed as one JSON document up to this size (else by line)
    max_document_chars: int = 1 << 20

    @classmethod
    def from_settings(cls, settings: dict | None) -> "Bounds":
        s = dict(settings or {})
        kwargs: dict[str, Any] = {}
        for name in ("max_depth", "max_entries", "max_archive_depth", "max_members", "max_table_rows"):
            if s.get(name) is not None:
                kwargs[name] = int(s[name])
        if s.get("max_seconds") is not None:
            kwargs["max_seconds"] = float(s["max_seconds"])
        if s.get("max_decompression_ratio") is not None:
            kwargs["max_ratio"] = float(s["max_decompression_ratio"])
        if s.get("max_gib") is not None:
            kwargs["max_bytes"] = int(float(s["max_gib"]) * 2**30)
        if s.get("max_expanded_gib") is not None:
            kwargs["max_expanded_bytes"] = int(float(s["max_expanded_gib"]) * 2**30)
        return cls(**kwargs)


@dataclass
class Listing:
    """A count, a byte total and the first few examples of something."""

    count: int = 0
    bytes: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, example: str, nbytes: int = 0, keep: int = 10) -> None:
        self.count += 1
        self.bytes += nbytes
        if len(self.examples) < keep:
            self.examples.append(example)

    def text(self) -> str:
        more = f", ... ({self.count - len(self.examples)} more)" if self.count > len(self.examples) else ""
        size = f", {_size(self.bytes)}" if self.bytes else ""
        return f"{self.count}{size}: {'; '.join(self.examples)}{more}"


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n} B"


class Coverage:
    """What one check's reads covered: files and bytes read, deliberate skips, special entries, and what went
    unread because of a bound or an error (``incomplete``: a check with any is unverifiable)."""

    def __init__(self, bounds: Bounds | None = None):
        self.bounds = bounds or Bounds()
        self.started = time.monotonic()
        self.files_read = 0
        self.bytes_read = 0
        self.skipped: dict[str, Listing] = {}
        self.special = Listing()
        self.outside_links = Listing()
        self.incomplete = Listing()
        self.spent: str | None = None  # set once the byte or time budget is gone

    def charge(self, nbytes: int) -> None:
        self.bytes_read += nbytes
        if self.bytes_read > self.bounds.max_bytes:
            self.spent = f"byte budget ({_size(self.bounds.max_bytes)}, judge.scan.max_gib) spent"
        elif time.monotonic() - self.started > self.bounds.max_seconds:
            self.spent = f"time budget ({self.bounds.max_seconds:.0f} s, judge.scan.max_seconds) spent"
        if self.spent:
            raise BoundReached(self.spent)

    def skip(self, reason: str, where: str, nbytes: int = 0) -> None:
        self.skipped.setdefault(reason, Listing()).add(where, nbytes)

    def unread(self, where: str, why: str) -> None:
        self.incomplete.add(f"{where}: {why}")

    def link(self, where: str, target: str, outside: bool) -> None:
        self.special.add(f"{where} -> {target[:200]}")
        if outside:
            self.outside_links.add(f"{where} -> {target[:200]}")

    def notes(self) -> list[str]:
        out = []
        if self.incomplete.count:
            out.append("NOT READ " + self.incomplete.text())
        if self.special.count:
            out.append("symlinks and special files (listed, never read) " + self.special.text())
        if self.outside_links.count:
            out.append("symlinks pointing outside the run directory " + self.outside_links.text())
        for reason, listing in sorted(self.skipped.items()):
            out.append(f"skipped ({reason}) {listing.text()}")
        return out

    def summary(self) -> str:
        head = f"{self.files_read} file(s) read ({_size(self.bytes_read)})"
        return "; ".join([head] + self.notes())

    def as_dict(self) -> dict[str, Any]:
        return {
            "files_read": self.files_read, "bytes_read": self.bytes_read,
            "seconds": round(time.monotonic() - self.started, 2),
            "not_read": {"count": self.incomplete.count, "examples": self.incomplete.examples},
            "special": {"count": self.special.count, "examples": self.special.examples},
            "outside_links": {"count": self.outside_links.count, "examples": self.outside_links.examples},
            "skipped": {r: {"count": s.count, "bytes": s.bytes, "examples": s.examples}
                        for r, s in sorted(self.skipped.items())},
        }


_ACTIVE: contextvars.ContextVar[Coverage | None] = contextvars.ContextVar("judge_coverage", default=None)


@contextlib.contextmanager
def coverage(bounds: Bounds | None = None) -> Iterator[Coverage]:
    """Make a fresh :class:`Coverage` the one every read inside the block reports to."""
    cov = Coverage(bounds)
    token = _ACTIVE.set(cov)
    try:
        yield cov
    finally:
        _ACTIVE.reset(token)


def active() -> Coverage:
    """The coverage reads report to: the one of the enclosing :func:`coverage` block, else a fresh one."""
    return _ACTIVE.get() or Coverage()


# ----------------------------------------------------------------------------------------------------------------
# the walk
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileRef:
    """A regular file found by :func:`walk`: opened again component by component, never through a symlink."""

    root: Path
    parts: tuple[str, ...]
    size: int
    label: str = ""

    @property
    def relative(self) -> str:
        return "/".join(self.parts)

    @property
    def name(self) -> str:
        return self.parts[-1]

    @property
    def where(self) -> str:
        return f"{self.label}/{self.relative}" if self.label else self.relative

    def relative_to(self, root: Path) -> PurePosixPath:  # the same question a Path answers
        return PurePosixPath(self.relative)

    def open_fd(self) -> int:
        return _open_chain(self.root, self.parts)


def _open_chain(root: Path, parts: tuple[str, ...]) -> int:
    """A read descriptor on ``root/parts...``: every directory opened with ``O_NOFOLLOW`` relative to its parent,
    the file itself too, and checked to be a regular file."""
    fd = os.open(root, DIR_FLAGS)
    try:
        for part in parts[:-1]:
            child = os.open(part, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
        out = os.open(parts[-1], FILE_FLAGS, dir_fd=fd)
    finally:
        os.close(fd)
    if not stat.S_ISREG(os.fstat(out).st_mode):
        os.close(out)
        raise OSError(errno.EINVAL, "not a regular file")
    return out


def regular_file(root: Path, relative: str, label: str = "") -> FileRef | None:
    """``root/relative`` as a :class:`FileRef` when it is a regular file reached without symlinks, else None."""
    parts = tuple(p for p in PurePosixPath(relative).parts if p not in ("", "."))
    if not parts or ".." in parts:
        return None
    try:
        fd = _open_chain(Path(root), parts)
    except OSError:
        return None
    try:
        return FileRef(Path(root), parts, os.fstat(fd).st_size, label)
    finally:
        os.close(fd)


def _kind_word(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device")):
        if test(mode):
            return name
    return "special file"


def _outside(link_rel: str, target: str, inside: str) -> bool:
    """Whether a symlink at ``link_rel`` (relative to the run directory) points outside it, by its text."""
    if target.startswith("/"):
        return not (posixpath.normpath(target) + "/").startswith(inside.rstrip("/") + "/")
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(link_rel), target))
    return joined == ".." or joined.startswith("../")


def _record_tops(fd: int, dist_info: str) -> set[str]:
    """Top-level names a pip-installed distribution owns, from its RECORD (read bounded, never followed)."""
    tops: set[str] = set()
    try:
        dfd = os.open(dist_info, DIR_FLAGS, dir_fd=fd)
        try:
            rfd = os.open("RECORD", FILE_FLAGS, dir_fd=dfd)
        finally:
            os.close(dfd)
        try:
            data = os.read(rfd, 8 << 20) if stat.S_ISREG(os.fstat(rfd).st_mode) else b""
        finally:
            os.close(rfd)
    except OSError:
        return tops
    for line in data.decode("utf-8", "replace").splitlines():
        top = line.split(",", 1)[0].split("/", 1)[0]
        if top and top not in (".", "..") and not top.startswith("../"):
            tops.add(top)
    return tops


def walk(root: Path, *, label: str = "", inside: Path | None = None, skip_paths: dict[str, str] | None = None,
         skip_names: dict[str, str] | None = None, libraries: bool = True,
         cov: Coverage | None = None) -> Iterator[FileRef]:
    """Regular files under ``root`` (each directory in name order). ``skip_paths`` (relative path -> reason) and
    ``skip_names`` (a directory's name anywhere -> reason) are skipped deliberately and listed; with ``libraries``,
    so are virtual environments (``pyvenv.cfg``, ``conda-meta``) and what a ``*.dist-info/RECORD`` says pip
    installed (``pip install --target``). ``inside`` (default: ``root``'s parent, the run directory) decides
    which symlinks point outside."""
    cov = cov or active()
    b = cov.bounds
    skip_paths = dict(skip_paths or {})
    skip_names = LIBRARY_DIRS if skip_names is None else dict(skip_names)
    inside_text = str(Path(inside or Path(root).parent).absolute())
    label_rel = posixpath.relpath(str(Path(root).absolute()), inside_text)
    shown = label or "."
    try:
        fd = os.open(root, DIR_FLAGS)
    except FileNotFoundError:
        return
    except OSError as exc:
        cov.unread(shown, f"cannot open: {exc.strerror or exc}")
        return
    entries = 0
    # One open descriptor per level: (fd, path parts, remaining names).
    stack: list[tuple[int, tuple[str, ...], list[str], dict[str, str]]] = []

    def where(parts: tuple[str, ...]) -> str:
        rel = "/".join(parts)
        return f"{label}/{rel}" if label else rel

    def push(dir_fd: int, parts: tuple[str, ...]) -> None:
        names: list[str] = []
        try:
            with os.scandir(dir_fd) as listing:
                for item in listing:
                    names.append(item.name)
                    if entries + len(names) > b.max_entries:
                        break
        except OSError as exc:
            cov.unread(where(parts) or shown, f"cannot list: {exc.strerror or exc}")
        owned: dict[str, str] = {}
        if libraries:
            for name in names:
                if name.endswith(".dist-info"):
                    for top in _record_tops(dir_fd, name):
                        owned[top] = f"installed by pip ({name}/RECORD)"
                    owned[name] = "installed libraries"
        stack.append((dir_fd, parts, sorted(names, reverse=True), owned))

    push(fd, ())
    try:
        while stack:
            dir_fd, parts, names, owned = stack[-1]
            if not names:
                os.close(dir_fd)
                stack.pop()
                continue
            name = names.pop()
            entries += 1
            here = parts + (name,)
            rel = "/".join(here)
            if entries > b.max_entries:
                cov.unread(where(here), f"more than {b.max_entries} entries (judge.scan.max_entries): the rest of "
                                        f"the tree was not looked at")
                return
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except OSError as exc:
                cov.unread(where(here), f"cannot stat: {exc.strerror or exc}")
                continue
            reason = skip_paths.get(rel) or (owned.get(name) if libraries else None)
            if stat.S_ISLNK(st.st_mode):
                try:
                    target = os.readlink(name, dir_fd=dir_fd)
                except OSError:
                    target = "?"
                cov.link(where(here), target, _outside(posixpath.join(label_rel, rel), target, inside_text))
            elif stat.S_ISDIR(st.st_mode):
                reason = reason or skip_names.get(name)
                if reason:
                    cov.skip(reason, where(here))
                    continue
                if len(here) >= b.max_depth:
                    cov.unread(where(here), f"deeper than {b.max_depth} levels (judge.scan.max_depth): not looked into")
                    continue
                try:
                    child = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
                except OSError as exc:
                    cov.unread(where(here), f"cannot open: {exc.strerror or exc}")
                    continue
                if libraries and any(_exists(child, marker) for marker in ("pyvenv.cfg", "conda-meta")):
                    os.close(child)
                    cov.skip("virtual environment", where(here))
                    continue
                push(child, here)
            elif stat.S_ISREG(st.st_mode):
                if reason:
                    cov.skip(reason, where(here), st.st_size)
                    continue
                if parts and parts[-1] == "__pycache__" and _compiled_with_source(stack[-2][0] if len(stack) > 1
                                                                                  else None, dir_fd, name):
                    cov.skip("compiled Python (its source is scanned)", where(here), st.st_size)
                    continue
                yield FileRef(Path(root), here, st.st_size, label)
            else:
                cov.special.add(f"{where(here)} ({_kind_word(st.st_mode)})")
    finally:
        for dir_fd, *_ in stack:
            os.close(dir_fd)


def _compiled_with_source(parent_fd: int | None, cache_fd: int, name: str) -> bool:
    """``__pycache__/NAME.TAG.pyc`` that starts as compiled Python does and whose source ``NAME.py`` is a regular
    file next to the ``__pycache__`` folder (scanned in its own right). A compiled file without its source, or
    anything else in a ``__pycache__`` folder, is read."""
    stem = name.split(".", 1)[0]
    if parent_fd is None or not name.endswith(".pyc") or not stem:
        return False
    try:
        fd = os.open(name, FILE_FLAGS, dir_fd=cache_fd)
        try:
            head = os.pread(fd, 4, 0)
        finally:
            os.close(fd)
        source = os.stat(stem + ".py", dir_fd=parent_fd, follow_symlinks=False)
    except OSError:
        return False
    return head[2:4] == b"\r\n" and stat.S_ISREG(source.st_mode)


def _exists(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        return True
    except OSError:
        return False


# ----------------------------------------------------------------------------------------------------------------
# content
# ----------------------------------------------------------------------------------------------------------------


def sniff(head: bytes, size: int | None = None) -> str:
    """The kind of a file from its first bytes: an archive or compressed stream, a table, weights, or text."""
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"BZh") and len(head) > 3 and head[3:4].isdigit():
        return "bz2"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return "zstd"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.startswith(b"ARROW1"):
        return "arrow"
    if head.startswith(b"\xff\xff\xff\xff") and len(head) >= 8:
        return "arrow-stream"
    if head.startswith(b"GGUF"):
        return "weights"
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.startswith(b"PACK\x00\x00\x00") and head[7:8] in (b"\x02", b"\x03"):
        return "gitpack"
    if len(head) >= 2 and head[0] & 0x0F == 8 and head[0] >> 4 <= 7 and (head[0] << 8 | head[1]) % 31 == 0:
        try:  # a raw zlib stream (git's loose objects): only when its start really decompresses
            zlib.decompressobj().decompress(head, 64)
            return "zlib"
        except zlib.error:
            pass
    if len(head) >= 9 and head[8:9] == b"{":
        (n,) = struct.unpack("<Q", head[:8])
        if size is None or 8 + n <= size:
            return "weights"  # safetensors
    return "text"


def kind(source: "FileRef | Path") -> str:
    """The content kind of a file (see :func:`sniff`); ``unreadable`` when it cannot be opened."""
    try:
        fd = source.open_fd() if isinstance(source, FileRef) else _open_path(Path(source))
    except OSError:
        return "unreadable"
    try:
        return sniff(os.pread(fd, 512, 0), os.fstat(fd).st_size)
    finally:
        os.close(fd)


def _open_path(path: Path) -> int:
    """A file the pipeline wrote (staged data, the trace): opened without blocking, and only if regular."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, f"{path} is not a regular file")
    return fd


def _segments(fd: int, size: int, cov: Coverage) -> Iterator[bytes]:
    """The data of a regular file in chunks, holes of sparse files skipped, every byte charged."""
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
            end = os.lseek(fd, start, os.SEEK_HOLE)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data after offset
                return
            start, end = offset, size  # no hole support: read it all
        pos = start
        while pos < end:
            chunk = os.pread(fd, min(CHUNK, end - pos), pos)
            if not chunk:
                return
            cov.charge(len(chunk))
            yield chunk
            pos += len(chunk)
        offset = max(end, pos)


class _Capped(io.RawIOBase):
    """A decompressed stream that stops at ``limit`` bytes (a decompression bomb), charging what it yields."""

    def __init__(self, raw: BinaryIO, limit: int, cov: Coverage, what: str):
        self.raw, self.limit, self.cov, self.what, self.out = raw, limit, cov, what, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.raw.read(min(len(buffer), CHUNK))
        self.out += len(data)
        if self.out > self.limit:
            raise BoundReached(f"{self.what} expands past {_size(self.limit)} (judge.scan.max_decompression_ratio "
                               f"or max_expanded_gib): decompression bomb")
        self.cov.charge(len(data))
        buffer[:len(data)] = data
        return len(data)


def _stream_chunks(handle: BinaryIO) -> Iterator[bytes]:
    while True:
        chunk = handle.read(CHUNK)
        if not chunk:
            return
        yield chunk


@dataclass
class _Blob:
    """One thing to read: a file on disk or an archive member."""

    where: str
    size: int | None
    chunks: Callable[[], Iterator[bytes]]          # its bytes (charged)
    seekable: Callable[[], BinaryIO]               # a seekable handle (for zip, Parquet, Arrow)
    head: bytes
    name: str
    depth: int = 0
    expand_left: list[int] = field(default_factory=list)  # decompressed bytes this top-level file may still give


# A document: (text, location); location is the line (or row) for a file, "member:line" inside an archive.
Document = tuple[str, Any]


def documents(source: "FileRef | Path", cov: Coverage | None = None) -> Iterator[Document]:
    """Every text document of a file, by content: JSON strings, CSV cells, table strings, text paragraphs;
    archive members included (their location is ``member:line``). Never raises: what cannot be read is
    recorded in the coverage."""
    yield from _read(source, cov, mode="documents")


def text_lines(source: "FileRef | Path", cov: Coverage | None = None) -> Iterator[tuple[Any, str]]:
    """``(location, line)`` for every line of the file's text streams (archive members included); binary data,
    weights and tables are not lines of code and are left out."""
    yield from _read(source, cov, mode="lines")


def _read(source: "FileRef | Path", cov: Coverage | None, mode: str) -> Iterator[Any]:
    cov = cov or active()
    if isinstance(source, FileRef):
        where, name = source.where, source.name
    else:
        where, name = str(source), Path(source).name
    if cov.spent:
        cov.unread(where, cov.spent)
        return
    try:
        fd = source.open_fd() if isinstance(source, FileRef) else _open_path(Path(source))
    except OSError as exc:
        cov.unread(where, f"cannot open: {exc.strerror or exc}")
        return
    try:
        size = os.fstat(fd).st_size
        handle = os.fdopen(os.dup(fd), "rb")
        blob = _Blob(where, size, lambda: _segments(fd, size, cov), lambda: handle,
                     _first_data(fd, size), name, 0, [cov.bounds.max_expanded_bytes])
        cov.files_read += 1
        try:
            yield from _blob_items(blob, cov, mode, "")
        finally:
            handle.close()
    finally:
        os.close(fd)


def _first_data(fd: int, size: int) -> bytes:
    return os.pread(fd, 4096, 0)


def _blob_items(blob: _Blob, cov: Coverage, mode: str, prefix: str) -> Iterator[Any]:
    """Items of one blob, with every failure turned into a coverage record (never an exception)."""
    try:
        yield from _dispatch(blob, cov, mode, prefix)
    except BoundReached as exc:
        cov.unread(blob.where, str(exc))
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, tarfile.TarError, lzma.LZMAError, zlib.error,
            RecursionError, MemoryError, struct.error, UnicodeError, csv.Error, RuntimeError, TypeError,
            IndexError, KeyError, NotImplementedError) as exc:
        cov.unread(blob.where, f"{type(exc).__name__}: {str(exc)[:160]}")
    except Exception as exc:  # noqa: BLE001 - pyarrow's errors and others: what went unread is recorded
        cov.unread(blob.where, f"{type(exc).__name__}: {str(exc)[:160]}")


def _dispatch(blob: _Blob, cov: Coverage, mode: str, prefix: str) -> Iterator[Any]:
    b = cov.bounds
    kind_ = sniff(blob.head, blob.size)
    if kind_ == "weights":
        yield from _weights(blob, cov, mode, prefix, "weights (safetensors, GGUF)")
        return
    if kind_ == "npy":
        yield from _npy(blob, cov, mode, prefix)
        return
    if kind_ in ("zip", "gzip", "bz2", "xz", "zstd", "tar", "zlib", "gitpack") and blob.depth >= b.max_archive_depth:
        cov.unread(blob.where, f"{kind_} nested deeper than {b.max_archive_depth} archives (judge.scan."
                               f"max_archive_depth)")
        return
    if kind_ == "zip":
        yield from _zip(blob, cov, mode, prefix)
    elif kind_ == "tar":
        yield from _tar(blob.seekable() if blob.size is not None and blob.depth == 0 else
                        io.BufferedReader(_ChunkReader(blob.chunks())), blob, cov, mode, prefix)
    elif kind_ in ("gzip", "bz2", "xz", "zstd", "zlib"):
        yield from _compressed(kind_, blob, cov, mode, prefix)
    elif kind_ == "gitpack":
        yield from _gitpack(blob, cov, mode, prefix)
    elif kind_ in ("parquet", "arrow", "arrow-stream"):
        if mode == "documents":
            yield from _table(kind_, blob, cov, prefix)
    else:
        yield from _text(blob, cov, mode, prefix)


class _ChunkReader(io.RawIOBase):
    """A readable stream over an iterator of chunks."""

    def __init__(self, chunks: Iterator[bytes]):
        self.chunks, self.buffer = chunks, b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self.buffer:
            try:
                self.buffer = next(self.chunks)
            except StopIteration:
                return 0
        n = min(len(buffer), len(self.buffer))
        buffer[:n], self.buffer = self.buffer[:n], self.buffer[n:]
        return n


def _member_blob(parent: _Blob, cov: Coverage, name: str, size: int | None, stream: BinaryIO,
                 compressed: int | None) -> _Blob:
    """A member (or decompressed content) of ``parent`` as a blob, its expansion capped."""
    b = cov.bounds
    limit = parent.expand_left[0]
    if compressed is not None:
        limit = min(limit, max(int(b.max_ratio * compressed), 1 << 20))
    capped = io.BufferedReader(_Capped(stream, limit, cov, f"{parent.where}:{name}"), CHUNK)
    head = capped.peek(4096)[:4096]
    where = f"{parent.where}:{name}"
    state: dict[str, Any] = {}

    def chunks() -> Iterator[bytes]:
        try:
            yield from _stream_chunks(capped)
        finally:
            parent.expand_left[0] -= capped.raw.out

    def seekable() -> BinaryIO:
        if "handle" not in state:
            data = capped.read(b.max_member_memory + 1)
            parent.expand_left[0] -= len(data)
            if len(data) > b.max_member_memory:
                raise BoundReached(f"over {_size(b.max_member_memory)}: too large to open inside an archive")
            state["handle"] = io.BytesIO(data)
        return state["handle"]

    return _Blob(where, size, chunks, seekable, head, name, parent.depth + 1, parent.expand_left)


def _zip(blob: _Blob, cov: Coverage, mode: str, prefix: str) -> Iterator[Any]:
    b = cov.bounds
    with zipfile.ZipFile(blob.seekable()) as archive:
        infos = archive.infolist()
        if len(infos) > b.max_members:
            cov.unread(blob.where, f"{len(infos)} members > {b.max_members} (judge.scan.max_members): the rest unread")
        names = {i.filename for i in infos}
        # A PyTorch checkpoint (torch.save) is a zip of a pickle and raw tensor storages.
        torch_ckpt = any(n.endswith("/data.pkl") or n == "data.pkl" for n in names)
        for info in infos[:b.max_members]:
            if info.is_dir():
                continue
            where = f"{blob.where}:{info.filename}"
            mode_bits = info.external_attr >> 16
            if mode_bits and not stat.S_ISREG(mode_bits) and stat.S_IFMT(mode_bits):
                cov.special.add(f"{where} (archived {'symlink' if stat.S_ISLNK(mode_bits) else 'special file'})")
                continue
            if torch_ckpt and not info.filename.endswith(".pkl"):
                cov.skip("weights (PyTorch checkpoint tensors)", where, info.file_size)
                continue
            if info.flag_bits & 0x1:
                cov.unread(where, "encrypted")
                continue
            if info.file_size > max(b.max_ratio * info.compress_size, 1 << 20):
                cov.unread(where, f"declares {_size(info.file_size)} from {_size(info.compress_size)} "
                                  f"(ratio > {b.max_ratio:.0f}, judge.scan.max_decompression_ratio): decompression "
                                  f"bomb, not expanded")
                continue
            with archive.open(info) as stream:
                member = _member_blob(blob, cov, info.filename, info.file_size, stream, info.compress_size)
                yield from _blob_items(member, cov, mode, _join(prefix, info.filename))


def _tar(handle: BinaryIO, blob: _Blob, cov: Coverage, mode: str, prefix: str) -> Iterator[Any]:
    b = cov.bounds
    with tarfile.open(fileobj=handle, mode="r|*") as archive:
        for count, info in enumerate(archive):
            if count >= b.max_members:
                cov.unread(blob.where, f"more than {b.max_members} members (judge.scan.max_members): the rest unread")
                return
            where = f"{blob.where}:{info.name}"
            if info.isdir():
                continue
            if not info.isreg():
                cov.special.add(f"{where} (archived {'symlink' if info.issym() or info.islnk() else 'special file'})")
                continue
            stream = archive.extractfile(info)
            if stream is None:
                continue
            member = _member_blob(blob, cov, info.name, info.size, stream, None)
            yield from _blob_items(member, cov, mode, _join(prefix, info.name))


def _compressed(kind_: str, blob: _Blob, cov: Coverage, mode: str, prefix: str) -> Iterator[Any]:
    raw = io.BufferedReader(_ChunkReader(blob.chunks()), CHUNK)
    if kind_ == "gzip":
        import gzip

        stream: BinaryIO = gzip.GzipFile(fileobj=raw)
    elif kind_ == "bz2":
        stream = bz2.BZ2File(raw)
    elif kind_ == "xz":
        stream = lzma.LZMAFile(raw)
    elif kind_ == "zlib":
        stream = _ZlibReader(raw)
    else:
        try:
            import zstandard
        except ImportError:
            cov.unread(blob.where, "zstd-compressed, and the zstandard module is not installed")
            return
        stream = zstandard.ZstdDecompressor().stream_reader(raw)
    inner = blob.name[: -len(blob.name.rsplit(".", 1)[-1]) - 1] if "." in blob.name else blob.name
    member = _member_blob(blob, cov, f"({kind_})", None, stream, blob.size)
    member.where, member.name = blob.where, inner
    yield from _blob_items(member, cov, mode, prefix)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}:{name}" if prefix else name


def _loc(prefix: str, number: Any) -> Any:
    return f"{prefix}:{number}" if prefix else number


def _table(kind_: str, blob: _Blob, cov: Coverage, prefix: str) -> Iterator[Document]:
    """Parquet or Arrow (file or stream format, as the datasets cache writes it): every string, by row."""
    import pyarrow as pa
    import pyarrow.ipc
    import pyarrow.parquet as pq

    b = cov.bounds
    handle = blob.seekable()
    handle.seek(0)
    if kind_ == "parquet":
        batches: Iterable = pq.ParquetFile(handle).iter_batches(batch_size=4096)
    elif kind_ == "arrow":
        reader = pa.ipc.open_file(handle)
        batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
    else:
        batches = pa.ipc.open_stream(handle)
    row = 0
    for batch in batches:
        cov.charge(batch.nbytes)
        for record in batch.to_pylist():
            row += 1
            if row > b.max_table_rows:
                raise BoundReached(f"more than {b.max_table_rows} rows (judge.scan.max_table_rows)")
            for text in record_texts(record):
                yield text, _loc(prefix, row)


def _npy(blob: _Blob, cov: Coverage, mode: str, prefix: str) -> Iterator[Any]:
    """A numeric array is weights; an array of strings (``<U``) is UTF-32 text."""
    head = blob.head
    header_len = struct.unpack("<H", head[8:10])[0] if head[6:7] == b"\x01" else struct.unpack("<I", head[8:12])[0]
    header = head[10 if head[6:7] == b"\x01" else 12:][:header_len].decode("latin-1", "replace")
    match = re.search(r"'descr':\s*'([<>|=]?)([a-zA-Z])([0-9]*)", header)
    # Bytes (S, V, one-byte integers), booleans and pickled objects (O) hold text as it is: read as text.
    if match and (match.group(2) in "SVOb?" or match.group(2) in "iu" and match.group(3) == "1"):
        yield from _text(blob, cov, mode, prefix)
        return
    if match and match.group(2) == "U":
        encoding = "utf-32-be" if match.group(1) == ">" else "utf-32-le"
        skip = (10 if head[6:7] == b"\x01" else 12) + header_len

        def chunks() -> Iterator[bytes]:
            left = skip
            for chunk in blob.chunks():
                if left:
                    cut, left = min(left, len(chunk)), left - min(left, len(chunk))
                    chunk = chunk[cut:]
                if chunk:
                    yield chunk

        yield from _text(_Blob(blob.where, blob.size, chunks, blob.seekable, b"", blob.name, blob.depth,
                               blob.expand_left), cov, mode, prefix, encoding=encoding)
        return
    yield from _weights(blob, cov, mode, prefix, "weights (numeric arrays)")


# Weights are skipped, but only where they look like weights: every WINDOW_STRIDE bytes a WINDOW of the file is
# sampled, and a stretch whose sample looks like text (a text file behind a weights header, a text "tensor") is read.
WINDOW = 4096
WINDOW_STRIDE = 256 << 10
_PRINTABLE = np.zeros(256, dtype=bool)
_PRINTABLE[[9, 10, 13, *range(32, 127)]] = True
_LETTER = np.zeros(256, dtype=bool)
_LETTER[list(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz ")] = True


def looks_like_text(sample: bytes) -> bool:
    """Mostly printable ASCII and mostly letters and spaces: text, not numbers (random bytes are about 37%
    printable, 20% letters; float and quantized weights less)."""
    arr = np.frombuffer(sample, dtype=np.uint8)
    arr = arr[arr != 0]  # NUL padding says nothing
    if len(arr) < 64:
        return False
    return bool(_PRINTABLE[arr].mean() >= 0.9 and _LETTER[arr].mean() >= 0.6)


def _text_stretches(read_at: Callable[[int, int], bytes], size: int) -> list[tuple[int, int]]:
    """(start, end) of the stretches of a file whose sampled windows look like text, each widened by a stride on
    both sides (text that starts or ends between two samples)."""
    starts = list(range(0, size, WINDOW_STRIDE))
    if size > WINDOW:
        starts.append(size - WINDOW)
    hits = [start for start in starts if looks_like_text(read_at(start, WINDOW))]
    spans: list[tuple[int, int]] = []
    for start in hits:
        lo, hi = max(0, start - WINDOW_STRIDE), min(size, start + WINDOW + WINDOW_STRIDE)
        if spans and lo <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(spans[-1][1], hi))
        else:
            spans.append((lo, hi))
    return spans


def _weights(blob: _Blob, cov: Coverage, mode: str, prefix: str, reason: str) -> Iterator[Any]:
    """A file that says it is weights (safetensors, GGUF, a numeric array): skipped and listed, except the stretches
    of it that look like text (a weights header in front of a text file, text stored as a tensor), which are
    read as text. Inside an archive (no cheap random access) every chunk is looked at."""
    if blob.depth == 0 and blob.size is not None:
        handle = blob.seekable()
        fd = handle.fileno()

        def read_at(offset: int, n: int) -> bytes:
            data = os.pread(fd, n, offset)
            cov.charge(len(data))
            return data

        spans = _text_stretches(read_at, blob.size)

        def chunks() -> Iterator[bytes]:
            for lo, hi in spans:
                pos = lo
                while pos < hi:
                    data = read_at(pos, min(CHUNK, hi - pos))
                    if not data:
                        break
                    yield data
                    pos += len(data)
                yield b"\n"
    else:
        spans, pending = [], []
        for chunk in blob.chunks():
            if any(looks_like_text(chunk[i:i + WINDOW]) for i in range(0, len(chunk), WINDOW_STRIDE)):
                pending.append(chunk)
                spans.append((0, len(chunk)))

        def chunks() -> Iterator[bytes]:
            for chunk in pending:
                yield chunk
                yield b"\n"
    if not spans:
        cov.skip(reason, blob.where, blob.size or 0)
        return
    cov.skip(reason + ", text stretches read", blob.where, blob.size or 0)
    yield from _text(_Blob(blob.where, blob.size, chunks, blob.seekable, b"", blob.name, blob.depth,
                           blob.expand_left), cov, mode, prefix, encoding="utf-8")


class _ZlibReader(io.RawIOBase):
    """A raw zlib stream (a git loose object) as a readable stream of its decompressed bytes."""

    def __init__(self, raw: BinaryIO):
        self.raw, self.state, self.buffer = raw, zlib.decompressobj(), b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self.buffer:
            if self.state.unconsumed_tail:
                self.buffer = self.state.decompress(self.state.unconsumed_tail, CHUNK)
                continue
            if self.state.eof:
                return 0
            data = self.raw.read(CHUNK)
            self.buffer = self.state.decompress(data, CHUNK) if data else self.state.flush()
            if not data and not self.buffer:
                return 0
        n = min(len(buffer), len(self.buffer))
        buffer[:n], self.buffer = self.buffer[:n], self.buffer[n:]
        return n


def _gitpack(blob: _Blob, cov: Coverage, mode: str, prefix: str) -> Iterator[Any]:
    """A git pack file: every object's zlib stream decompressed (whole blobs, and the inserted text of deltas),
    one object after another, read as text."""
    raw = io.BufferedReader(_ChunkReader(blob.chunks()), CHUNK)
    header = raw.read(12)
    count = struct.unpack(">I", header[8:12])[0]

    def objects() -> Iterator[bytes]:
        for _ in range(count):
            first = raw.read(1)
            if not first:
                return
            kind_, byte = (first[0] >> 4) & 7, first[0]
            while byte & 0x80:  # the size, as a varint
                byte = raw.read(1)[0]
            if kind_ == 6:  # offset delta: a varint offset
                byte = raw.read(1)[0]
                while byte & 0x80:
                    byte = raw.read(1)[0]
            elif kind_ == 7:  # reference delta: the base's 20-byte name
                raw.read(20)
            state = zlib.decompressobj()
            while not state.eof:
                data = raw.peek(CHUNK)[:CHUNK]
                if not data:
                    return
                out = state.decompress(data, CHUNK)
                raw.read(len(data) - len(state.unused_data) - len(state.unconsumed_tail))
                while True:
                    if out:
                        blob.expand_left[0] -= len(out)
                        if blob.expand_left[0] < 0:
                            raise BoundReached(f"{blob.where} expands past its budget (judge.scan.max_expanded_gib)")
                        yield out
                    if not state.unconsumed_tail:
                        break
                    tail = state.unconsumed_tail
                    out = state.decompress(tail, CHUNK)
                    raw.read(len(tail) - len(state.unused_data) - len(state.unconsumed_tail))
            yield b"\n"

    yield from _text(_Blob(blob.where, None, objects, blob.seekable, b"", blob.name, blob.depth + 1,
                           blob.expand_left), cov, mode, prefix, encoding="utf-8")


# A paragraph of fewer words (too few for an n-gram) is merged with the next one.
MIN_PARAGRAPH_WORDS = 16
MIN_PARAGRAPH_CHARS = 2000
_CONTROL_RUN = re.compile(rb"[\x00-\x08\x0b\x0e-\x1f\x7f]+")
_NUL_RUN = re.compile(r"\x00+")


def _encoding(sample: bytes) -> str:
    """UTF-16 by its BOM or its byte pattern (ASCII text with a NUL in every other byte); else UTF-8."""
    if sample.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if sample.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        return "utf-32"
    if sample.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    squeezed = re.sub(rb"\x00{16,}", b"", sample)[:4096]
    if len(squeezed) >= 16:
        even, odd = squeezed[0::2], squeezed[1::2]
        if odd.count(0) > 0.4 * len(odd) and even.count(0) < 0.1 * len(even):
            return "utf-16-le"
        if even.count(0) > 0.4 * len(even) and odd.count(0) < 0.1 * len(odd):
            return "utf-16-be"
    return "utf-8"


def _text_pieces(blob: _Blob, cov: Coverage, encoding: str | None) -> Iterator[str]:
    """Decoded text in pieces: NUL runs (padding, holes) and control bytes become line breaks."""
    chunks = blob.chunks()
    if encoding is None:
        sample, pending = b"", []
        for chunk in chunks:
            pending.append(chunk)
            sample += chunk.strip(b"\x00")[:4096] if len(sample) < 4096 else b""
            if len(sample) >= 4096:
                break
        encoding = _encoding(sample)
        chunks = _chain(pending, chunks)
    decoder = codecs.getincrementaldecoder(encoding)(errors="replace")
    byte_level = encoding.startswith("utf-8")
    for chunk in chunks:
        if byte_level:
            chunk = _CONTROL_RUN.sub(b"\n", chunk)
        text = decoder.decode(chunk)
        if not byte_level and "\x00" in text:
            text = _NUL_RUN.sub("\n", text)
        if text:
            yield text
    tail = decoder.decode(b"", final=True)
    if tail:
        yield tail


def _chain(first: list[bytes], rest: Iterator[bytes]) -> Iterator[bytes]:
    yield from first
    yield from rest


def _lines(pieces: Iterator[str], max_chars: int) -> Iterator[str]:
    """Lines (with their ``\\n``), a line longer than ``max_chars`` cut into pieces at whitespace."""
    buffer = ""
    for piece in pieces:
        buffer += piece
        start = 0
        while True:
            end = buffer.find("\n", start)
            if end < 0:
                break
            yield buffer[start:end + 1]
            start = end + 1
        buffer = buffer[start:]
        while len(buffer) > max_chars:
            cut = buffer.rfind(" ", 0, max_chars)
            cut = cut + 1 if cut > 0 else max_chars
            yield buffer[:cut]
            buffer = buffer[cut:]
    if buffer:
        yield buffer


def _unescape(line: str) -> str:
    """Escaped line breaks and tabs (string literals in code, JSON-encoded text) as whitespace, so the words
    around them stay apart."""
    return line.replace("\\n", "\n").replace("\\t", "\t") if "\\" in line else line


def json_strings(value: Any, max_nodes: int = 10_000_000) -> Iterator[str]:
    """Every string inside a JSON-like value (dict values, list items, nested), in order; iterative, so any
    depth of nesting is fine."""
    stack = [value]
    nodes = 0
    while stack:
        item = stack.pop()
        nodes += 1
        if nodes > max_nodes:
            raise BoundReached(f"more than {max_nodes} JSON values")
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            stack.extend(reversed(list(item.values())))
        elif isinstance(item, (list, tuple)):
            stack.extend(reversed(item))


def _joined(strings: Iterable[str], max_chars: int = 1 << 20) -> Iterator[str]:
    """Strings joined by spaces into documents of up to about ``max_chars``: the fields of one record read as one
    text, so an item split across fields, cells or list entries keeps its n-grams (a joined n-gram that is not
    test text matches nothing, so joining never makes a false match)."""
    held: list[str] = []
    size = 0
    for text in strings:
        held.append(text)
        size += len(text) + 1
        if size >= max_chars:
            yield " ".join(held)
            held, size = [], 0
    if held:
        yield " ".join(held)


def record_texts(record: Any) -> Iterator[str]:
    """The strings of one JSON record (a JSON Lines line, a table row, an entry of a top-level list) as
    documents: joined (:func:`_joined`)."""
    return _joined(json_strings(record))


def _json_value(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _text(blob: _Blob, cov: Coverage, mode: str, prefix: str, encoding: str | None = None) -> Iterator[Any]:
    b = cov.bounds
    lines = _lines(_text_pieces(blob, cov, encoding), b.max_document_chars)
    if mode == "lines":
        for number, line in enumerate(lines, 1):
            yield _loc(prefix, number), line.rstrip("\n")
        return
    first = blob.head.lstrip(b"\x00 \t\r\n\xef\xbb\xbf")[:1]
    if first in (b"{", b"["):
        yield from _json_documents(lines, blob, cov, prefix)
    elif blob.name.lower().endswith((".csv", ".tsv")):
        yield from _csv_documents(lines, "\t" if blob.name.lower().endswith(".tsv") else ",", prefix)
    else:
        yield from _paragraphs(lines, prefix, b.max_document_chars)


def _json_documents(lines: Iterator[str], blob: _Blob, cov: Coverage, prefix: str) -> Iterator[Document]:
    """One JSON document (files up to ``max_json_bytes``), else JSON Lines; a line that does not parse is text."""
    b = cov.bounds
    held: list[str] = []
    if blob.size is not None and blob.size <= b.max_json_bytes:
        held = list(lines)
        value = _json_value("".join(held))
        if value is not None:
            for number, record in enumerate(value if isinstance(value, list) else [value], 1):
                for text in record_texts(record):
                    yield text, _loc(prefix, f"record {number}" if isinstance(value, list) else 1)
            return
    for number, line in enumerate(_chain_str(held, lines), 1):
        stripped = line.strip()
        if not stripped:
            continue
        value = _json_value(stripped) if stripped[:1] in "{[\"" else None
        if value is None:
            yield _unescape(stripped), _loc(prefix, number)
            continue
        for text in record_texts(value):
            yield text, _loc(prefix, number)


def _chain_str(first: list[str], rest: Iterator[str]) -> Iterator[str]:
    yield from first
    yield from rest


def _csv_documents(lines: Iterator[str], delimiter: str, prefix: str) -> Iterator[Document]:
    held: list[str] = []
    reader = csv.reader(_keep(lines, held), delimiter=delimiter)
    try:
        for row in reader:
            held.clear()
            for text in _joined(row):
                yield text, _loc(prefix, reader.line_num)
    except csv.Error:  # a field past the csv module's limit, or not CSV after all: the rest as text
        yield from _paragraphs(_chain_str(list(held), lines), prefix, 1 << 20, start=reader.line_num)


def _keep(lines: Iterator[str], held: list[str]) -> Iterator[str]:
    for line in lines:
        held.append(line)
        yield line


def _paragraphs(lines: Iterable[str], prefix: str, max_chars: int, start: int = 0) -> Iterator[Document]:
    """Plain text: paragraphs (blank-line separated) are documents, so code and prose keep their n-grams; short
    paragraphs are merged with the next (text spread one word or phrase per paragraph stays one text)."""
    first, held, size = 1, [], 0
    for number, line in enumerate(lines, start + 1):
        line = _unescape(line)
        if line.strip():
            if not held:
                first = number
            held.append(line)
            size += len(line)
            if size >= max_chars:
                yield "".join(held), _loc(prefix, first)
                held, size = [], 0
        elif held and (size >= MIN_PARAGRAPH_CHARS or sum(h.count(" ") for h in held) >= MIN_PARAGRAPH_WORDS):
            yield "".join(held), _loc(prefix, first)
            held, size = [], 0
        elif held:
            held.append("\n")
    if held:
        yield "".join(held), _loc(prefix, first)

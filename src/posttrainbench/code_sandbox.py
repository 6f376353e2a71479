"""Run model-written code for scoring, in the same isolation backend as agents.

Any benchmark whose scoring executes model output (HumanEval today) goes through :class:`CodeSandbox`:

* ``bubblewrap``: a fresh user namespace (the programs run as uid/gid 1000, never as host uid 0), PID, IPC,
  UTS, cgroup and network namespaces (no network at all), an empty environment, and a file system of the
  system directories and the base Python installation only, read-only: no project tree, virtual
  environment, ``results/`` or staged test sets. ``/tmp`` and ``/dev/shm`` are small private tmpfs mounts.
  No ``/proc`` is mounted, so it also works where the evaluate job itself runs in a bubblewrap sandbox.
* ``apptainer``: ``apptainer exec --containall --cleanenv --no-home --net --network none`` in
  ``sandbox.image``, with the in-sandbox runtime bound in read-only.
* ``none``: plain subprocesses of the pipeline's user, only when the configured sandbox backend is
  ``none`` (development), logged loudly.

Programs run in batches, one sandbox per batch: a trusted supervisor
(:mod:`posttrainbench.code_sandbox_inside`) is PID 1 of the sandbox, forks each program with CPU, memory,
file-size and process limits, waits at most ``timeout_seconds`` and then kills every other process of the
namespace. A batch whose sandbox dies is re-run one program per sandbox; a program whose own sandbox dies
fails. A sandbox that cannot start at all raises :class:`CodeSandboxError`: an infrastructure fault that
fails the job, never a zero score.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from .evaluation import InfrastructureError

log = logging.getLogger(__name__)

RUNTIME = Path(__file__).with_name("code_sandbox_inside.py")
RUNTIME_MOUNT = "/ptb/code_sandbox_inside.py"
BACKENDS = ("auto", "bubblewrap", "apptainer", "none")
# Read-only system directories in a bubblewrap code sandbox (missing ones are skipped). Not /etc, /sys,
# /home, /root, /opt: a program needs the C library and the interpreter, nothing else of the host.
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
ETC_ENTRIES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime")
SANDBOX_UID = 1000
# Where the pipeline runs as host root, programs run as this host uid (nobody) in a user namespace of their
# own: the kernel does not apply RLIMIT_NPROC to processes whose host uid is 0.
UNPRIVILEGED_HOST_ID = 65534
_CLONE_NEWUSER = 0x10000000
# Creates an empty user namespace and waits, so that its maps can be written and its fd opened.
_USERNS_HOLDER = ("import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                  "if libc.unshare(%d) != 0:\n    raise SystemExit('unshare: errno %%d' %% ctypes.get_errno())\n"
                  "os.write(1, b'1')\nos.read(0, 1)\n" % _CLONE_NEWUSER)
# Time a sandbox gets to start, on top of its programs' time limits, before the host kills it.
STARTUP_ALLOWANCE_S = 30.0


class CodeSandboxError(InfrastructureError):
    """The code sandbox cannot run at all (backend not installed, cannot start): an infrastructure fault,
    which fails the job instead of being recorded as the cell's outcome."""


@dataclass(frozen=True)
class CodeExecutionSettings:
    """Where and under which limits model-written programs run (config ``evaluation.code_execution``;
    ``backend``/``image`` default to ``sandbox.backend``/``sandbox.image``)."""

    backend: str = "auto"
    image: str | None = None
    timeout_seconds: float = 10.0
    cpu_seconds: int = 10
    memory_mb: int = 1024
    processes: int = 16
    file_size_mb: int = 64
    scratch_mb: int = 256
    batch_size: int = 32
    workers: int = 0  # 0: one per CPU this process may use, at most 8

    @classmethod
    def from_config(cls, code_execution: Mapping[str, Any] | None = None, sandbox: Mapping[str, Any] | None = None,
                    *, timeout_seconds: float | None = None) -> "CodeExecutionSettings":
        values = dict(code_execution or {})
        sandbox = sandbox or {}
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise CodeSandboxError(f"unknown key(s) in evaluation.code_execution: {', '.join(sorted(unknown))}")
        if values.get("backend") is None:
            values["backend"] = sandbox.get("backend", "auto")
        if values.get("image") is None:
            values["image"] = sandbox.get("image")
        if timeout_seconds is not None:
            values["timeout_seconds"] = float(timeout_seconds)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.backend not in BACKENDS:
            raise CodeSandboxError(f"code execution backend must be one of {', '.join(BACKENDS)}, not {self.backend!r}")
        for name in ("timeout_seconds", "cpu_seconds", "memory_mb", "processes", "file_size_mb", "scratch_mb",
                     "batch_size"):
            if not getattr(self, name) > 0:
                raise CodeSandboxError(f"evaluation.code_execution.{name} must be positive, not {getattr(self, name)!r}")

    @property
    def parallel(self) -> int:
        if self.workers > 0:
            return self.workers
        return max(1, min(8, len(os.sched_getaffinity(0))))


@dataclass(frozen=True)
class Program:
    """``untrusted`` (model output) runs in its own process; ``trusted`` (the test) runs in the checker and
    reaches the untrusted functions through ``untrusted_function(name)`` (plain data only). The program
    passes when ``trusted`` runs to its end."""

    untrusted: str
    trusted: str


@dataclass(frozen=True)
class ProgramResult:
    passed: bool
    status: str  # passed | failed | timeout | sandbox died
    detail: str = ""
    seconds: float | None = None


@dataclass
class _Batch:
    indices: list[int]
    results: dict[int, ProgramResult] = field(default_factory=dict)


def _base_python() -> tuple[str, str]:
    """(the base installation's interpreter, its prefix): a virtual environment is never shown to programs."""
    prefix = os.path.realpath(sys.base_prefix)
    name = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (Path(prefix) / "bin" / name, Path(prefix) / "bin" / "python3", Path(os.path.realpath(sys.executable))):
        if candidate.is_file() and str(candidate).startswith(prefix + os.sep):
            return str(candidate), prefix
    raise CodeSandboxError(f"no Python interpreter found in the base installation {prefix}")


class CodeSandbox:
    """Runs :class:`Program` batches in the configured backend; see the module docstring."""

    def __init__(self, settings: CodeExecutionSettings | None = None):
        self.settings = settings or CodeExecutionSettings()
        self.settings.validate()
        self.backend = self._resolve_backend()
        if self.backend == "none":
            log.warning("!!! code execution backend is 'none': model-written programs run UNSANDBOXED as this "
                        "user, with this environment's view of files and network (development only) !!!")
        if self.backend == "apptainer":
            self.python = "python3"  # the image's interpreter
        else:
            self.python, self.python_prefix = _base_python()
        self.private_userns = False
        if self.backend == "bubblewrap" and _host_uid() == 0:
            self.private_userns = self._try_private_userns()
            if not self.private_userns:
                log.warning("code sandbox: this process runs as host uid 0 and cannot map an unprivileged uid, "
                            "so the kernel will not apply the process limit to programs (the time limit still "
                            "ends them); run the pipeline as an ordinary user to have it")

    # -- backend ------------------------------------------------------------------------------------------

    def _resolve_backend(self) -> str:
        s = self.settings
        apptainer = shutil.which("apptainer")
        bwrap = shutil.which("bwrap")
        if s.backend == "auto":
            if apptainer and s.image:
                return "apptainer"
            if bwrap:
                return "bubblewrap"
            raise CodeSandboxError("no sandbox for executing model output: the backend is 'auto' but neither "
                                   "apptainer (with sandbox.image) nor bubblewrap (bwrap) is installed")
        if s.backend == "bubblewrap" and not bwrap:
            raise CodeSandboxError("code execution backend 'bubblewrap' is configured but bwrap is not installed")
        if s.backend == "apptainer":
            if not apptainer:
                raise CodeSandboxError("code execution backend 'apptainer' is configured but apptainer is not installed")
            if not s.image:
                raise CodeSandboxError("code execution backend 'apptainer' needs sandbox.image (an image with python3)")
        return s.backend

    def _try_private_userns(self) -> bool:
        try:
            os.close(_new_userns())
            return True
        except (OSError, CodeSandboxError) as exc:
            log.debug("no private user namespace: %s", exc)
            return False

    def argv(self, userns_fd: int | None = None) -> list[str]:
        """The host command that starts one supervisor in the sandbox (it reads its batch on stdin)."""
        s = self.settings
        if self.backend == "bubblewrap":
            return bubblewrap_argv(shutil.which("bwrap") or "bwrap", self.python, self.python_prefix,
                                   scratch_mb=s.scratch_mb, userns_fd=userns_fd)
        if self.backend == "apptainer":
            return apptainer_argv(shutil.which("apptainer") or "apptainer", s.image)
        return [self.python, "-I", "-S", str(RUNTIME), "supervise"]

    # -- running ------------------------------------------------------------------------------------------

    def run(self, programs: Sequence[Program]) -> list[ProgramResult]:
        """One result per program, in order. Raises :class:`CodeSandboxError` when a sandbox cannot start."""
        programs = list(programs)
        if not programs:
            return []
        size = self.settings.batch_size
        batches = [_Batch(list(range(i, min(i + size, len(programs))))) for i in range(0, len(programs), size)]
        results: dict[int, ProgramResult] = {}
        with ThreadPoolExecutor(self.settings.parallel) as pool:
            for batch in pool.map(lambda b: self._run_batch(b, programs), batches):
                results.update(batch.results)
            missing = [i for i in range(len(programs)) if i not in results]
            if missing:
                log.warning("code sandbox: %d program(s) lost with their batch's sandbox; re-running them one "
                            "per sandbox", len(missing))
                for batch in pool.map(lambda i: self._run_batch(_Batch([i]), programs), missing):
                    results.update(batch.results)
        for i in range(len(programs)):
            if i not in results:
                results[i] = ProgramResult(False, "sandbox died", "the program's own sandbox ended without a result")
        return [results[i] for i in range(len(programs))]

    def preflight(self) -> None:
        """Run a known-good program: a sandbox that cannot run one is an infrastructure fault."""
        probe = Program("def probe(x):\n    return [x, 1.5, 'ok']\n",
                        "assert untrusted_function('probe')(2) == [2, 1.5, 'ok']\n")
        result = self.run([probe])[0]
        if not result.passed:
            raise CodeSandboxError(f"the code sandbox ({self.backend}) failed its self-test: {result.status}: "
                                   f"{result.detail}")

    def _run_batch(self, batch: _Batch, programs: list[Program]) -> _Batch:
        s = self.settings
        scratch = tempfile.mkdtemp(prefix="ptb-code-") if self.backend == "none" else None
        request = {
            "limits": {"memory_mb": s.memory_mb, "cpu_seconds": s.cpu_seconds, "processes": s.processes,
                       "file_size_mb": s.file_size_mb},
            "timeout_seconds": s.timeout_seconds,
            "own_pid_namespace": self.backend != "none",
            "program_uid": SANDBOX_UID if self.private_userns else None,
            "scratch_root": scratch,
            "programs": [asdict(programs[i]) for i in batch.indices],
        }
        deadline = STARTUP_ALLOWANCE_S + len(batch.indices) * (s.timeout_seconds + 2.0)
        userns_fd = _new_userns() if self.private_userns else None
        try:
            proc = subprocess.Popen(self.argv(userns_fd), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, env=self._host_env(), cwd="/", start_new_session=True,
                                    pass_fds=() if userns_fd is None else (userns_fd,))
        except OSError as exc:
            raise CodeSandboxError(f"could not start the code sandbox ({self.backend}): {exc}") from exc
        finally:
            if userns_fd is not None:
                os.close(userns_fd)
        try:
            try:
                stdout, stderr = proc.communicate(json.dumps(request).encode(), timeout=deadline)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                stdout, stderr = proc.communicate()
        finally:
            _kill_group(proc)
            if scratch:
                shutil.rmtree(scratch, ignore_errors=True)
        lines = stdout.decode("utf-8", errors="replace").splitlines()
        if not lines or not _is_ready(lines[0]):
            reason = stderr.decode("utf-8", errors="replace").strip().splitlines()
            raise CodeSandboxError(f"the code sandbox ({self.backend}) did not start (exit {proc.returncode}): "
                                   f"{reason[-1][:300] if reason else 'no message'}")
        for line in lines[1:]:
            try:
                record = json.loads(line)
                index = batch.indices[int(record["index"])]
                batch.results[index] = ProgramResult(bool(record["passed"]), str(record["status"]),
                                                     str(record.get("detail", "")), record.get("seconds"))
            except (ValueError, KeyError, IndexError, TypeError):
                continue
        return batch

    def _host_env(self) -> dict[str, str]:
        """The environment of the sandbox command on the host side; nothing of it reaches the programs
        (bubblewrap clears it, apptainer runs --cleanenv, the supervisor execs programs with an empty one)."""
        return {k: os.environ[k] for k in ("PATH", "LANG", "TMPDIR") if k in os.environ}


def _is_ready(line: str) -> bool:
    try:
        return json.loads(line).get("ready") is True
    except (ValueError, AttributeError):
        return False


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _host_uid() -> int | None:
    """The host uid this process runs as (through every user namespace), if /proc says."""
    try:
        for line in Path("/proc/self/uid_map").read_text().splitlines():
            inside, outside, count = (int(x) for x in line.split())
            if inside <= os.geteuid() < inside + count:
                return outside + os.geteuid() - inside
    except (OSError, ValueError):
        pass
    return None


def _new_userns() -> int:
    """An fd of a new user namespace mapping 0 to this process's ids and SANDBOX_UID to the unprivileged
    host id; raises OSError where this process may not map that id."""
    python, _ = _base_python()
    holder = subprocess.Popen([python, "-I", "-S", "-c", _USERNS_HOLDER], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env={})
    try:
        if holder.stdout.read(1) != b"1":
            raise CodeSandboxError("could not create a user namespace")
        for kind, own in (("uid", os.geteuid()), ("gid", os.getegid())):
            with open(f"/proc/{holder.pid}/{kind}_map", "w") as handle:
                handle.write(f"0 {own} 1\n{SANDBOX_UID} {UNPRIVILEGED_HOST_ID} 1\n")
        return os.open(f"/proc/{holder.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        holder.stdin.close()
        holder.wait()


def bubblewrap_argv(bwrap: str, python: str, python_prefix: str, *, scratch_mb: int,
                    userns_fd: int | None = None) -> list[str]:
    """The bwrap command line of one code sandbox (see the module docstring). With ``userns_fd`` (a namespace
    from :func:`_new_userns`) the supervisor is that namespace's root, keeping only the capabilities to switch
    to the programs' uid and to signal them; otherwise everything runs as SANDBOX_UID."""
    argv = [bwrap]
    if userns_fd is None:
        argv += ["--unshare-user", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID), "--disable-userns",
                 "--cap-drop", "ALL"]
    else:
        argv += ["--userns", str(userns_fd), "--uid", "0", "--gid", "0", "--cap-drop", "ALL"]
        for cap in ("CAP_SETUID", "CAP_SETGID", "CAP_KILL", "CAP_CHOWN"):
            argv += ["--cap-add", cap]
    argv += ["--unshare-pid", "--unshare-ipc", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try",
             "--as-pid-1", "--die-with-parent", "--new-session", "--clearenv", "--hostname", "sandbox"]
    for path in SYSTEM_DIRS + tuple(f"/etc/{name}" for name in ETC_ENTRIES):
        argv += ["--ro-bind-try", path, path]
    argv += ["--ro-bind", python_prefix, python_prefix, "--ro-bind", str(RUNTIME), RUNTIME_MOUNT]
    # bwrap creates the directories above a mount point with the host's modes (/root: 0700); programs
    # run as another uid and must traverse them.
    for parent in [*Path(python_prefix).parents, Path(RUNTIME_MOUNT).parent]:
        if parent != Path("/") and not any(parent == Path(d) or Path(d) in parent.parents for d in SYSTEM_DIRS):
            argv += ["--chmod", "0755", str(parent)]
    argv += [
             "--dev", "/dev",
             "--size", str(scratch_mb << 20), "--tmpfs", "/tmp", "--chmod", "1777", "/tmp",
             "--size", str(scratch_mb << 20), "--tmpfs", "/dev/shm", "--chmod", "1777", "/dev/shm",
             "--remount-ro", "/", "--chdir", "/",
             "--", python, "-I", "-S", RUNTIME_MOUNT, "supervise"]
    return argv


def apptainer_argv(apptainer: str, image: str | None) -> list[str]:
    """The apptainer command line of one code sandbox: the image's python3, no network, no home, a clean
    environment and only the runtime bound in."""
    if not image:
        raise CodeSandboxError("code execution backend 'apptainer' needs sandbox.image (an image with python3)")
    return [apptainer, "exec", "--containall", "--cleanenv", "--no-home", "--net", "--network", "none",
            "--pwd", "/tmp", "--bind", f"{RUNTIME}:{RUNTIME_MOUNT}:ro", image,
            "python3", "-I", "-S", RUNTIME_MOUNT, "supervise"]


def with_timeout(settings: CodeExecutionSettings | Mapping[str, Any] | None, timeout_seconds: float) -> CodeExecutionSettings:
    """``settings`` (or the defaults; a mapping is read as config) with the per-program time limit set."""
    if settings is None:
        settings = CodeExecutionSettings()
    elif not isinstance(settings, CodeExecutionSettings):
        settings = CodeExecutionSettings.from_config(settings)
    return replace(settings, timeout_seconds=float(timeout_seconds))


__all__ = ["CodeExecutionSettings", "CodeSandbox", "CodeSandboxError", "Program", "ProgramResult",
           "apptainer_argv", "bubblewrap_argv", "with_timeout"]

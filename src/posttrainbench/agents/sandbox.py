"""The sandbox interface: run a command with a deadline, stream its output into the trace.

Backends share :class:`Sandbox` and differ only in the argv they wrap the agent command in:

* ``bubblewrap``: a new mount namespace built from an allow-list (read-only system directories,
  the Python environment, the inputs of the cell), the workspace as the only writable place,
  private ``/tmp``, its own PID namespace, no capabilities, and a network namespace of its own
  unless the network policy is ``open``.
* ``apptainer``: ``apptainer exec --containall --cleanenv`` in the agent image, with the
  workspace and the cell's inputs bound in (``--nv`` when the cell has GPUs).
* ``none``: a plain subprocess, for development only (the runner logs it loudly).

Network policies: ``open`` (the host's network, as in the published setup), ``none`` (an empty
network namespace: no host service is reachable, not even on loopback) and ``proxy`` (an empty
namespace whose only way out is the logging gateway of :mod:`.egress`).
"""

from __future__ import annotations

import json
import os
import signal
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
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
    egress: list[dict] | None = None


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


NETWORK_POLICIES = ("open", "none", "proxy")
PROXY_PORT = 3128
# Where the sandbox sees the pipeline-provided tools and the egress gateway's sockets.
TOOLS_MOUNT = "/ptb/tools"
EGRESS_MOUNT = "/ptb/egress"
# System directories a bubblewrap sandbox sees, read-only (missing ones are skipped).
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/sys")
# From /etc only what programs need to run and resolve names (not shadow, keys, cluster configs).
ETC_ENTRIES = ("passwd", "group", "hosts", "resolv.conf", "nsswitch.conf", "host.conf", "gai.conf",
               "protocols", "services", "localtime", "timezone", "ssl", "ca-certificates", "pki",
               "alternatives", "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "mime.types", "os-release",
               "fonts", "environment", "debian_version", "magic", "nvidia")


class SandboxError(RuntimeError):
    """The sandbox cannot run this command as configured (one-line reason)."""


@dataclass
class SandboxSpec:
    """What one run may see and do, independent of the backend.

    ``read_only`` paths appear at the same path, read-only; ``mapped`` maps a path inside the
    sandbox to a host path (read-only). Nothing else of the host's file system is visible to an
    isolating backend, except its system directories.
    """

    workspace: Path
    read_only: list[Path] = field(default_factory=list)
    mapped: dict[str, Path] = field(default_factory=dict)
    network: str = "open"
    gpus: int = 0
    forwards: list[tuple[str, int]] = field(default_factory=list)  # host endpoints exposed inside (proxy)
    allowed_hosts: list[str] | None = None
    private_dir: Path | None = None  # the pipeline's own scratch for this run, never visible inside


class Sandbox:
    """Runs one agent command; subclasses wrap the command in their isolation."""

    name = "none"
    isolating = False
    # The interpreter to start Python tools with inside the sandbox.
    python = sys.executable

    def available(self) -> bool:
        return True

    def wrap(self, command: Sequence[str], spec: SandboxSpec, env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
        """The host argv and host environment that run ``command`` with ``env`` inside the sandbox."""
        if spec.network != "open":
            raise SandboxError(
                f"config key 'sandbox.network' is {spec.network!r}, which needs an isolating backend "
                "(bubblewrap or apptainer); backend 'none' can only run with network 'open'"
            )
        return list(command), dict(env)

    def _network_command(self, command: Sequence[str], spec: SandboxSpec, env: dict[str, str]) -> list[str]:
        """For the proxy policy: start the in-sandbox relay first and point the agent at it."""
        if spec.network != "proxy":
            return list(command)
        relay = [self.python, f"{TOOLS_MOUNT}/netrelay.py",
                 "--map", f"127.0.0.1:{PROXY_PORT}={EGRESS_MOUNT}/proxy.sock"]
        for host, port in spec.forwards:
            relay += ["--map", f"127.0.0.1:{port}={EGRESS_MOUNT}/forward-{port}.sock"]
        proxy = f"http://127.0.0.1:{PROXY_PORT}"
        for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
            env[var] = proxy
        # Forwarded endpoints sit on the sandbox's own loopback: they need no proxy.
        env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
        return relay + ["--"] + list(command)

    def run(
        self,
        command: Sequence[str],
        *,
        workspace: Path,
        env: Mapping[str, str],
        timeout_seconds: float,
        grace_seconds: float,
        trace: TraceWriter,
        spec: SandboxSpec | None = None,
    ) -> RunOutcome:
        """Run ``command`` in ``workspace``; at the deadline send SIGTERM to its process group,
        then SIGKILL after ``grace_seconds``."""
        spec = spec or SandboxSpec(workspace=workspace)
        if spec.network not in NETWORK_POLICIES:
            raise SandboxError(f"config key 'sandbox.network' has value {spec.network!r}; "
                               f"allowed values: {', '.join(NETWORK_POLICIES)}")
        gateway = None
        if spec.network == "proxy":
            from .egress import EgressGateway  # imports this module: import here

            # A short path of its own: Unix socket paths are limited to about 100 bytes.
            socket_dir = Path(tempfile.mkdtemp(prefix="ptb-egress-"))
            gateway = EgressGateway(socket_dir, trace, forwards=spec.forwards,
                                    allowed_hosts=spec.allowed_hosts).start()
            spec.mapped[EGRESS_MOUNT] = socket_dir
        try:
            argv, host_env = self.wrap(command, spec, dict(env))
            # Only names are logged: values may hold the agent's own API key.
            trace.event("start", command=argv, sandbox=self.name, network=spec.network,
                        timeout_seconds=timeout_seconds, env_names=sorted(env))
            outcome = self._supervise(argv, host_env, workspace, timeout_seconds, grace_seconds, trace)
        finally:
            if gateway is not None:
                gateway.stop()
                shutil.rmtree(gateway.socket_dir, ignore_errors=True)
        if gateway is not None:
            outcome.egress = gateway.summary()
        return outcome

    def terminate(self, proc: subprocess.Popen) -> None:
        """The deadline's SIGTERM: to every process of the agent's group."""
        _signal_group(proc, signal.SIGTERM)

    def _supervise(self, argv, host_env, workspace, timeout_seconds, grace_seconds, trace) -> RunOutcome:
        started, t0 = now_iso(), time.monotonic()
        proc = subprocess.Popen(
            argv,
            cwd=workspace,
            env=host_env,
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
            self.terminate(proc)
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
        # An isolating backend's PID namespace ends with it; the group is killed for the rest.
        _signal_group(proc, signal.SIGKILL)
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


class BubblewrapSandbox(Sandbox):
    """bubblewrap (``bwrap``): an allow-listed, read-only view of the host around a writable workspace."""

    name = "bubblewrap"
    isolating = True

    def __init__(self, executable: str | None = None):
        self.executable = executable or shutil.which("bwrap") or "bwrap"

    def available(self) -> bool:
        return shutil.which(self.executable) is not None

    def wrap(self, command, spec, env):
        command = self._network_command(command, spec, env)
        argv = [self.executable, "--die-with-parent", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
                "--unshare-cgroup-try", "--cap-drop", "ALL", "--hostname", "sandbox"]
        if spec.network != "open":
            argv.append("--unshare-net")
        for path in SYSTEM_DIRS + tuple(f"/etc/{name}" for name in ETC_ENTRIES):
            argv += ["--ro-bind-try", path, path]
        argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--tmpfs", "/dev/shm", "--tmpfs", "/run"]
        if spec.gpus > 0:
            for device in sorted(Path("/dev").glob("nvidia*")):
                argv += ["--dev-bind", str(device), str(device)]
        # The interpreter and its environment (a venv points at its base installation).
        python_dirs = {Path(sys.prefix), Path(sys.base_prefix), Path(sys.executable).resolve().parent.parent}
        for path in sorted(python_dirs) + sorted({Path(p) for p in spec.read_only}):
            argv += ["--ro-bind", str(path), str(path)]
        for inside, outside in spec.mapped.items():
            argv += ["--ro-bind", str(outside), inside]
        ws = str(spec.workspace)
        # The root itself (a tmpfs holding the mount points) is read-only: writes go to the workspace or /tmp.
        argv += ["--bind", ws, ws, "--remount-ro", "/", "--chdir", ws, "--"]
        return argv + list(command), env


    def terminate(self, proc: subprocess.Popen) -> None:
        """SIGTERM to the agent's processes but not to bwrap and its PID-namespace init: their
        death would end the sandbox at once and cut the agent's grace period short."""
        for pid in _group_members(proc.pid):
            if _comm(pid) != "bwrap":
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass


def _group_members(pgid: int) -> list[int]:
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # after "pid (comm)": state, ppid, pgrp
            members.append(int(stat.parent.name))
    return members


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


class ApptainerSandbox(Sandbox):
    """``apptainer exec --containall --cleanenv`` in the agent image; inputs bound in read-only.

    The environment reaches the container through an ``--env-file`` written to the run's private
    directory (never on the command line, where keys would show in ``ps`` and the trace).
    """

    name = "apptainer"
    isolating = True
    python = "python3"  # the image's interpreter (containers/agent.def)

    def __init__(self, image: str | None = None, executable: str | None = None):
        self.image = image
        self.executable = executable or shutil.which("apptainer") or "apptainer"

    def available(self) -> bool:
        return shutil.which(self.executable) is not None

    def wrap(self, command, spec, env):
        if not self.image:
            raise SandboxError("config key 'sandbox.image' must name the agent image (.sif) for backend 'apptainer'")
        command = self._network_command(command, spec, env)
        ws = str(spec.workspace)
        argv = [self.executable, "exec", "--containall", "--cleanenv", "--no-home", "--pwd", ws,
                "--bind", f"{ws}:{ws}"]
        if spec.gpus > 0:
            argv.append("--nv")
        if spec.network != "open":
            argv += ["--net", "--network", "none"]
        for path in sorted({Path(p) for p in spec.read_only}):
            argv += ["--bind", f"{path}:{path}:ro"]
        for inside, outside in spec.mapped.items():
            argv += ["--bind", f"{outside}:{inside}:ro"]
        host_env = {k: os.environ[k] for k in ("PATH", "LANG", "TMPDIR") if k in os.environ}
        if env:
            if spec.private_dir is None:
                raise SandboxError("backend 'apptainer' needs a private directory for the environment file")
            spec.private_dir.mkdir(parents=True, exist_ok=True)
            env_file = spec.private_dir / "agent.env"
            fd = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                # The image sets its own PATH; keep it rather than the host's.
                handle.writelines(f"{k}={_env_quote(v)}\n" for k, v in env.items() if k != "PATH")
            argv += ["--env-file", str(env_file)]
        if "CUDA_VISIBLE_DEVICES" in env:
            host_env["CUDA_VISIBLE_DEVICES"] = env["CUDA_VISIBLE_DEVICES"]  # read by --nv
        return argv + [self.image] + list(command), host_env


def _env_quote(value: str) -> str:
    """A value for an env file (shell syntax, as apptainer reads it)."""
    return "'" + value.replace("'", "'\"'\"'") + "'"


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


BACKENDS = {"none": Sandbox, "bubblewrap": BubblewrapSandbox, "apptainer": ApptainerSandbox}
BACKEND_CHOICES = ("auto", *BACKENDS)


def get_sandbox(name: str, *, image: str | None = None) -> Sandbox:
    """The backend called ``name``; ``auto`` is Apptainer when installed (and an image is set),
    else bubblewrap. A backend that is not installed is an error, never a silent downgrade."""
    if name == "auto":
        apptainer = ApptainerSandbox(image=image)
        if image and apptainer.available():
            return apptainer
        bwrap = BubblewrapSandbox()
        if bwrap.available():
            return bwrap
        raise SandboxError("config key 'sandbox.backend' is 'auto' but neither apptainer (with sandbox.image) "
                           "nor bubblewrap (bwrap) is installed; install one, or set backend 'none' for development")
    if name not in BACKENDS:
        raise SandboxError(f"config key 'sandbox.backend' has value {name!r}; allowed values: {', '.join(BACKEND_CHOICES)}")
    sandbox = ApptainerSandbox(image=image) if name == "apptainer" else BACKENDS[name]()
    if not sandbox.available():
        raise SandboxError(f"config key 'sandbox.backend' is {name!r} but its executable is not installed")
    return sandbox

"""The sandbox interface: run a command with a deadline, stream its output into the trace.

Backends share :class:`Sandbox` and differ only in the argv they wrap the agent command in:

* ``bubblewrap``: a new mount namespace built from an allow-list (read-only system directories,
  the Python environment, the inputs of the cell), the workspace as the only writable place,
  private size-limited ``/tmp``, ``/dev/shm`` and ``/run``, its own PID and network namespaces,
  no capabilities, and a user namespace whose one user is never host root (see :mod:`.userns_exec`).
  Under the ``open`` policy, slirp4netns gives that network namespace the outside world but not
  the host's loopback services or abstract Unix sockets.
* ``apptainer``: ``apptainer exec --containall --cleanenv`` in the agent image, with the
  workspace as HOME, the cell's inputs bound in, /tmp on node-local disk (``--nv`` when the cell
  has GPUs); see :class:`ApptainerSandbox`.
* ``none``: a plain subprocess, for development only (the runner logs it loudly).

Network policies: ``open`` (the internet, as in the published setup; with bubblewrap through a
user-mode network stack that does not reach host-local services), ``none`` (an empty network
namespace: no host service is reachable, not even on loopback) and ``proxy`` (an empty namespace
whose only way out is the logging gateway of :mod:`.egress`).

Every backend is watched while it runs: the agent's process count (threads included) and its
workspace's disk usage are measured at an interval and the run is stopped, and the limit recorded,
when one is exceeded (bubblewrap also sets the kernel's per-sandbox process limit).
"""

from __future__ import annotations

import json
import os
import select
import signal
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Callable, Mapping, Sequence

from ..evaluation import InfrastructureError  # a fault of the pipeline, never the agent's outcome

# Variables an agent process may inherit from the pipeline; everything else (grader and judge
# keys above all) is dropped. Agent-specific keys are added explicitly by the caller.
INHERITED_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "TMPDIR", "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS")
# The site's HTTP proxy settings (clusters often reach the internet only through one): passed on to agents
# under the ``open`` policy; under ``proxy`` the egress gateway chains to the proxy they name.
PROXY_VARIABLES = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY",
                   "no_proxy", "NO_PROXY")


def site_proxy_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The proxy variables set (non-empty) in the pipeline's environment."""
    environ = os.environ if environ is None else environ
    return {k: environ[k] for k in PROXY_VARIABLES if environ.get(k)}


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
    limits_hit: list[dict] = field(default_factory=list)  # {"limit", "value", "max", "time"} per limit hit


# What one line of the agent's stdout/stderr may take in the trace; a longer line is cut there and its
# length recorded. Past the output budget (bytes of trace the agent's output and egress events take), lines
# are only counted (the trace lives outside the workspace).
TRACE_LINE_LIMIT = 64 * 1024
TRACE_OUTPUT_LIMIT = 1 << 30
PUMP_CHUNK = 64 * 1024


class TraceWriter:
    """Append-only JSONL event log, line-buffered so a killed job keeps what was written."""

    def __init__(self, path: Path, *, output_limit: int | None = None):
        output_limit = TRACE_OUTPUT_LIMIT if output_limit is None else output_limit
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handle: IO[str] = open(path, "a", encoding="utf-8", buffering=1)
        self._lock = threading.Lock()
        self._output_left = output_limit
        self.output_limit = output_limit
        self.dropped = {"lines": 0, "bytes": 0}
        self.last_stderr = ""  # the last line on stderr: the reason when a sandbox never started

    def event(self, kind: str, **fields) -> None:
        record = {"time": now_iso(), "type": kind, **fields}
        with self._lock:
            self._handle.write(json.dumps(record, default=str) + "\n")

    def output(self, stream: str, text: str, length: int, truncated: bool) -> None:
        """One line of the agent's output (``length`` bytes, ``text`` possibly cut short)."""
        record = {"time": now_iso(), "type": stream, "text": text}
        if stream == "stderr" and text.strip():
            self.last_stderr = " ".join(text.split())[:300]
        if truncated:
            record.update(truncated=True, length=length)
        self._budgeted(record, length)

    def agent_event(self, kind: str, **fields) -> None:
        """An event the agent causes at will (a connection through the egress gateway): it is charged to
        the same output budget as the agent's output."""
        self._budgeted({"time": now_iso(), "type": kind, **fields}, 0)

    def _budgeted(self, record: dict, length: int) -> None:
        # What a record costs is what it takes in the trace (an empty line or an escaped control character
        # costs more than its length): so the budget bounds the trace's size, whatever the agent prints.
        with self._lock:
            line = json.dumps(record, default=str) + "\n" if self._output_left > 0 else ""
            if not line or len(line) > self._output_left:
                if not self.dropped["lines"]:
                    self._handle.write(json.dumps({"time": now_iso(), "type": "output_limit",
                                                   "limit_bytes": self.output_limit}) + "\n")
                self._output_left = 0
                self.dropped["lines"] += 1
                self.dropped["bytes"] += length
                return
            self._output_left -= len(line)
            self._handle.write(line)

    def close(self) -> None:
        self._handle.close()


def _pump(stream: IO[bytes], name: str, trace: TraceWriter, line_limit: int = TRACE_LINE_LIMIT) -> None:
    """Copy ``stream`` into the trace line by line, reading bounded chunks: at most ``line_limit`` bytes
    of a line are held, so an endless line costs no memory. Draining never stops (a full trace disk
    included): a pipe left unread would block the agent."""
    kept = bytearray()  # the start of the current line, up to line_limit bytes
    length = 0  # the current line's full length so far

    def emit() -> None:
        try:
            trace.output(name, kept.decode("utf-8", errors="replace"), length, truncated=length > line_limit)
        except (OSError, ValueError):
            pass  # the trace cannot be written; keep draining

    try:
        while chunk := stream.read1(PUMP_CHUNK):
            start = 0
            while start <= len(chunk):
                newline = chunk.find(b"\n", start)
                end = newline if newline >= 0 else len(chunk)
                if len(kept) < line_limit:
                    kept += chunk[start:min(end, start + line_limit - len(kept))]
                length += end - start
                if newline < 0:
                    break
                emit()
                kept.clear()
                length = 0
                start = newline + 1
        if length:
            emit()
    finally:
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


# The agent's uid and gid inside a bubblewrap sandbox, and the host ids they map to when the
# pipeline runs as root (nobody/nogroup: owns no files); otherwise they map to the pipeline's user.
SANDBOX_ID = 1000
ROOT_MAPS_TO = 65534
USERNS_LAUNCHER = Path(__file__).with_name("userns_exec.py")
# Defaults of the config's budget keys (schema.yaml); generous: an honest training run with data
# loader workers, pip installs and caches fits. Threads count as processes (as for the kernel).
DEFAULT_MAX_PROCESSES = 8192
DEFAULT_DISK_GB = 200.0
DEFAULT_MAX_FILES = 2_000_000
DEFAULT_TMP_MB = 16384
DEFAULT_SHM_MB = 16384
RUN_TMPFS_MB = 64
# A run stopped for a limit gets at most this long between SIGTERM and SIGKILL.
LIMIT_GRACE_SECONDS = 5.0
PROCESS_CHECK_SECONDS = 1.0
DISK_CHECK_SECONDS = 2.0  # at least; longer when measuring the workspace takes long
# slirp4netns's fixed addresses: its DNS forwarder inside the sandbox.
SLIRP_DNS = "10.0.2.3"


def sandbox_host_uid() -> int:
    """The host uid an isolating sandbox's user has: nobody when the pipeline runs as root, else the pipeline's."""
    return ROOT_MAPS_TO if os.geteuid() == 0 else os.getuid()


class SandboxError(InfrastructureError):
    """The pipeline could not run the agent (sandbox, image, egress gateway, launch): the job fails with this
    one-line reason and is retried; it is never recorded as the agent's outcome."""


# Run inside the sandbox before the agent's command: it writes "S" to the start descriptor, marks that
# descriptor close-on-exec (the agent never holds it) and execs the command; an exec that fails is written
# back as "E<reason>". No "S" means the sandbox itself never started.
START_LAUNCHER = ("import os,sys\n"
                  "fd=int(sys.argv[1]);os.write(fd,b'S');os.set_inheritable(fd,False)\n"
                  "try:os.execvp(sys.argv[2],sys.argv[2:])\n"
                  "except OSError as e:os.write(fd,('E%s: %s'%(sys.argv[2],e.strerror or e)).encode()[:500]);os._exit(127)")


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
    # Single files mounted read-only at a path inside (a CLI's own login under HOME); mounted last, over
    # the workspace, so what the agent sees there is the file and what the workspace holds is an empty mount point.
    files: dict[str, Path] = field(default_factory=dict)
    network: str = "open"
    gpus: int = 0
    forwards: list[tuple[str, int]] = field(default_factory=list)  # host endpoints exposed inside (proxy)
    allowed_hosts: list[str] | None = None
    private_dir: Path | None = None  # the pipeline's own scratch for this run, never visible inside
    max_processes: int = DEFAULT_MAX_PROCESSES  # processes and threads of the agent, together
    disk_gb: float = DEFAULT_DISK_GB  # the workspace's size on disk
    max_files: int = DEFAULT_MAX_FILES  # entries in the workspace (inodes of the host's file system)
    tmp_mb: int = DEFAULT_TMP_MB  # /tmp (and /run: RUN_TMPFS_MB) in memory
    shm_mb: int = DEFAULT_SHM_MB  # /dev/shm
    # Where a backend whose /tmp is not memory-backed (apptainer) makes a run's /tmp: node-local disk.
    # None: $SLURM_TMPDIR, else $TMPDIR, else the system's temporary directory.
    scratch_root: Path | None = None
    start_fd: int | None = None  # set by Sandbox.run: where the in-sandbox launcher reports the start
    scratch: Path | None = None  # set by the backend: this run's directory under scratch_root
    # Set by the backend: limits the kernel does not enforce there, measured with the workspace:
    # (limit name, bytes used given the sandbox's first PID (None: unknown), maximum in MiB).
    watched: list[tuple[str, Callable[[int], int | None], int]] = field(default_factory=list)

    def limits(self) -> dict:
        return {"max_processes": self.max_processes, "disk_gb": self.disk_gb, "max_files": self.max_files,
                "tmp_mb": self.tmp_mb, "shm_mb": self.shm_mb}


@dataclass
class Launch:
    """How to start one wrapped command: argv, environment, inherited descriptors, and what to do
    once it has started (``started`` may raise :class:`SandboxError`) and after it has ended."""

    argv: list[str]
    env: dict[str, str]
    pass_fds: tuple[int, ...] = ()
    started: Callable[[subprocess.Popen], None] | None = None
    cleanups: list[Callable[[], None]] = field(default_factory=list)


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
        return self._network_command(command, spec, env), dict(env)

    def _network_command(self, command: Sequence[str], spec: SandboxSpec, env: dict[str, str]) -> list[str]:
        """For the proxy policy: start the in-sandbox relay first and point the agent at it. Outermost, the
        start launcher (when ``spec.start_fd`` is set)."""
        command = self._relayed_command(command, spec, env)
        if spec.start_fd is None:
            return command
        return [self.python, "-I", "-S", "-c", START_LAUNCHER, str(spec.start_fd)] + command

    def _relayed_command(self, command: Sequence[str], spec: SandboxSpec, env: dict[str, str]) -> list[str]:
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

    def _launch(self, command: Sequence[str], spec: SandboxSpec, env: dict[str, str]) -> Launch:
        """What :meth:`run` starts; backends that need descriptors or a start step override it."""
        argv, host_env = self.wrap(command, spec, env)
        return Launch(argv, host_env)

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
        """Run ``command`` in ``workspace``; at the deadline, or when a limit of ``spec`` is exceeded,
        send SIGTERM to its process group, then SIGKILL after ``grace_seconds``."""
        spec = spec or SandboxSpec(workspace=workspace)
        if spec.network not in NETWORK_POLICIES:
            raise SandboxError(f"config key 'sandbox.network' has value {spec.network!r}; "
                               f"allowed values: {', '.join(NETWORK_POLICIES)}")
        gateway = None
        scratch = None
        if spec.private_dir is None and self.isolating:
            scratch = spec.private_dir = Path(tempfile.mkdtemp(prefix="ptb-sandbox-"))
        if spec.network == "open":
            # A site that reaches the internet only through its HTTP proxy: the agent needs its settings too
            # (values the caller set win).
            env = {**site_proxy_env(), **env}
        launch = None
        start_r, start_w = os.pipe()
        spec.start_fd = start_w
        try:
            if spec.network == "proxy":
                from .egress import EgressGateway  # imports this module: import here

                # A short path of its own: Unix socket paths are limited to about 100 bytes.
                socket_dir = Path(tempfile.mkdtemp(prefix="ptb-egress-"))
                socket_dir.chmod(0o755)  # the sandbox's user (not the pipeline's) connects to its sockets
                gateway = EgressGateway(socket_dir, trace, forwards=spec.forwards, allowed_hosts=spec.allowed_hosts)
                try:
                    gateway.start()
                except Exception as exc:  # noqa: BLE001 - whatever stops it, the agent cannot run
                    shutil.rmtree(socket_dir, ignore_errors=True)
                    gateway = None
                    raise InfrastructureError(f"the egress gateway did not start: {type(exc).__name__}: "
                                              f"{exc}".splitlines()[0][:500]) from None
                spec.mapped[EGRESS_MOUNT] = socket_dir
            launch = self._launch(command, spec, dict(env))
            launch.pass_fds = (*launch.pass_fds, start_w)
            start_w = None  # _supervise closes what it passes on
            # Only names are logged: values may hold the agent's own API key.
            trace.event("start", command=launch.argv, sandbox=self.name, network=spec.network,
                        timeout_seconds=timeout_seconds, env_names=sorted(env), limits=spec.limits())
            outcome = self._supervise(launch, workspace, timeout_seconds, grace_seconds, trace, spec)
            _check_started(_read_available(start_r), self.name, outcome, trace, command)
        finally:
            spec.start_fd = None
            for fd in (start_r, start_w):
                if fd is not None:
                    _close_quietly(fd)
            for cleanup in launch.cleanups if launch is not None else ():
                cleanup()
            if gateway is not None:
                gateway.stop()
                shutil.rmtree(gateway.socket_dir, ignore_errors=True)
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)
                spec.private_dir = None
        if gateway is not None:
            outcome.egress = gateway.summary()
        return outcome

    def terminate(self, proc: subprocess.Popen) -> None:
        """The deadline's SIGTERM: to every process of the agent's group."""
        _signal_group(proc, signal.SIGTERM)

    def _supervise(self, launch: Launch, workspace, timeout_seconds, grace_seconds, trace,
                   spec: SandboxSpec) -> RunOutcome:
        started, t0 = now_iso(), time.monotonic()
        try:
            proc = subprocess.Popen(
                launch.argv,
                cwd=workspace,
                env=launch.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=launch.pass_fds,
                start_new_session=True,  # own process group: the deadline kills every child too
            )
        except OSError as exc:
            raise InfrastructureError(f"the {self.name} sandbox could not be started ({launch.argv[0]}): "
                                      f"{exc.strerror or exc}") from None
        finally:
            for fd in launch.pass_fds:  # the child holds its own copies
                os.close(fd)
        _first_to_go_out_of_memory(proc.pid)
        pumps = [
            threading.Thread(target=_pump, args=(proc.stdout, "stdout", trace), daemon=True),
            threading.Thread(target=_pump, args=(proc.stderr, "stderr", trace), daemon=True),
        ]
        for thread in pumps:
            thread.start()
        watch = LimitWatch(proc.pid, workspace, spec, trace)
        timed_out = stopped = False
        try:
            if launch.started is not None:
                launch.started(proc)
            watch.start()
            deadline = t0 + timeout_seconds
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    timed_out = True
                    break
                try:
                    proc.wait(timeout=min(remaining, 0.25))
                    break
                except subprocess.TimeoutExpired:
                    if watch.exceeded.is_set():
                        stopped = True
                        break
            if timed_out or stopped:
                kind, grace = ("deadline", grace_seconds) if timed_out else \
                    ("limit_stop", min(grace_seconds, LIMIT_GRACE_SECONDS))
                trace.event(kind, action="SIGTERM", grace_seconds=grace)
                self.terminate(proc)
                try:
                    proc.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    trace.event(kind, action="SIGKILL")
                    _signal_group(proc, signal.SIGKILL)
                    proc.wait()
        finally:
            watch.stop()
            if proc.poll() is None:  # the pipeline itself is being stopped, or the sandbox did not start
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
            limits_hit=list(watch.hits),
        )
        trace.event("exit", exit_code=outcome.exit_code, timed_out=timed_out, wall_seconds=outcome.wall_seconds,
                    limits_hit=outcome.limits_hit)
        return outcome


class LimitWatch:
    """Measures a running agent against its limits from the host: the processes and threads
    descending from the sandbox's first process (an isolating backend's PID namespace keeps them
    there), every second, and the workspace's disk usage and number of entries, at an interval that
    grows with the time a measurement takes, and at once when the free space of the workspace's file
    system drops by more than the workspace's headroom since the last measurement. A limit exceeded is
    recorded (trace event ``limit``) and sets ``exceeded``. Where the kernel enforces the process
    limit, reaching it counts as exceeding it."""

    def __init__(self, root_pid: int, workspace: Path, spec: SandboxSpec, trace: TraceWriter):
        self.root_pid = root_pid
        self.workspace = Path(workspace)
        self.max_processes = int(spec.max_processes)
        self.disk_bytes = int(float(spec.disk_gb) * 1e9)
        self.disk_gb = spec.disk_gb
        self.max_files = int(spec.max_files)
        self.trace = trace
        self.watched = list(spec.watched)
        self.hits: list[dict] = []
        self.exceeded = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sandbox-limits", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def _hit(self, limit: str, value, maximum) -> None:
        if any(h["limit"] == limit for h in self.hits):
            return
        hit = {"limit": limit, "value": value, "max": maximum, "time": now_iso()}
        self.hits.append(hit)
        self.trace.event("limit", **hit)
        self.exceeded.set()

    def _free_bytes(self) -> int | None:
        try:
            st = os.statvfs(self.workspace)
        except OSError:
            return None
        return st.f_bavail * st.f_frsize

    def _loop(self) -> None:
        next_disk = time.monotonic() + 1.0
        earliest = next_disk  # when a sudden drop of free space may trigger a measurement ahead of time
        used = 0
        free_then = self._free_bytes()
        while not self._stopping.wait(PROCESS_CHECK_SECONDS):
            tasks = count_tasks(self.root_pid)
            if tasks >= self.max_processes:
                self._hit("max_processes", tasks, self.max_processes)
            now = time.monotonic()
            free_now = self._free_bytes() if now >= earliest else None
            # The file system lost more than the workspace may still grow by: measure now, not at the interval.
            sudden = free_then is not None and free_now is not None and free_then - free_now > self.disk_bytes - used
            if sudden or now >= next_disk:
                free_then = self._free_bytes()
                usage = workspace_usage(self.workspace)
                took = time.monotonic() - now
                next_disk = time.monotonic() + max(DISK_CHECK_SECONDS, 20 * took)
                earliest = time.monotonic() + max(DISK_CHECK_SECONDS, 2 * took)
                used = usage.bytes
                if usage.bytes > self.disk_bytes:
                    self._hit("disk_gb", round(usage.bytes / 1e9, 3), self.disk_gb)
                if usage.entries > self.max_files:
                    self._hit("max_files", usage.entries, self.max_files)
                for limit, measure, max_mb in self.watched:
                    try:
                        taken = measure(self.root_pid)
                    except OSError:
                        taken = None
                    if taken is not None and taken > int(max_mb) << 20:
                        self._hit(limit, round(taken / (1 << 20), 1), max_mb)


def _process_tree() -> tuple[dict[int, list[int]], dict[int, int]]:
    """Children of every process and its number of threads, from /proc."""
    children: dict[int, list[int]] = {}
    threads: dict[int, int] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return children, threads
    for name in entries:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as handle:
                fields = handle.read().rpartition(b")")[2].split()
        except OSError:
            continue
        pid = int(name)
        children.setdefault(int(fields[1]), []).append(pid)  # after "pid (comm)": state, ppid, ...
        threads[pid] = int(fields[17])  # num_threads
    return children, threads


def namespace_mount_usage(root_pid: int, path: str = "/dev/shm") -> int | None:
    """Bytes in use on the file system mounted at ``path`` as a process below ``root_pid`` sees it, for the
    first such process whose ``path`` is another file system than ours (a container's own /dev/shm tmpfs:
    its usage counts files already unlinked but still open, as shared memory segments are). None when no
    process has one (the container is not set up yet, or is gone)."""
    try:
        ours = os.stat(path).st_dev
    except OSError:
        ours = None
    children, _ = _process_tree()
    queue = [root_pid]
    while queue:
        pid = queue.pop(0)
        queue.extend(children.get(pid, ()))
        seen = f"/proc/{pid}/root{path}"
        try:
            if os.stat(seen).st_dev == ours:
                continue
            vfs = os.statvfs(seen)
        except OSError:
            continue
        return (vfs.f_blocks - vfs.f_bfree) * vfs.f_frsize
    return None


def count_tasks(root_pid: int) -> int:
    """Processes and threads descending from ``root_pid`` (itself included), from /proc."""
    children, threads = _process_tree()
    total, stack = 0, [root_pid]
    while stack:
        pid = stack.pop()
        total += threads.get(pid, 0)
        stack.extend(children.get(pid, ()))
    return total


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class Usage:
    bytes: int = 0  # allocated on disk
    entries: int = 0  # files, directories, links: what the file system spends an inode on


def workspace_usage(root: Path) -> Usage:
    """What the tree under ``root`` takes: bytes allocated (each hard-linked file once, sparse files by
    what they really take) and entries, no symlink followed. One directory is open at a time, entered
    from its parent's descriptor and left through ``..``, so neither a path past PATH_MAX nor any depth
    hides anything. A directory moved while it is measured ends the measurement there (what was counted
    stands): ``..`` must lead back to the very directory it came from."""
    usage = Usage()
    seen: set[tuple[int, int]] = set()

    def scan(fd: int) -> list[str]:
        subdirs = []
        try:
            with os.scandir(fd) as it:
                for entry in it:
                    usage.entries += 1
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    if stat.S_ISDIR(st.st_mode):
                        subdirs.append(entry.name)
                    elif st.st_nlink > 1:
                        if (st.st_dev, st.st_ino) in seen:
                            continue
                        seen.add((st.st_dev, st.st_ino))
                    usage.bytes += st.st_blocks * 512
        except OSError:
            pass
        return subdirs

    try:
        fd = os.open(root, _DIR_FLAGS)
    except OSError:
        return usage
    try:
        # Per level below: the identity of the directory and the names of its subdirectories left to visit.
        top = os.fstat(fd)
        levels = [((top.st_dev, top.st_ino), scan(fd))]
        while levels:
            identity, subdirs = levels[-1]
            if subdirs:
                try:
                    child = os.open(subdirs.pop(), _DIR_FLAGS, dir_fd=fd)
                except OSError:
                    continue
                os.close(fd)
                fd = child
                st = os.fstat(fd)
                levels.append(((st.st_dev, st.st_ino), scan(fd)))
                continue
            levels.pop()
            if not levels:
                break
            parent = os.open("..", _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = parent
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != levels[-1][0]:
                break  # moved meanwhile: never measure outside the tree
    finally:
        os.close(fd)
    return usage


def disk_usage(root: Path) -> int:
    """Bytes allocated on disk under ``root`` (see :func:`workspace_usage`)."""
    return workspace_usage(root).bytes


class BubblewrapSandbox(Sandbox):
    """bubblewrap (``bwrap``): an allow-listed, read-only view of the host around a writable workspace."""

    name = "bubblewrap"
    isolating = True

    def __init__(self, executable: str | None = None):
        self.executable = executable or shutil.which("bwrap") or "bwrap"

    def available(self) -> bool:
        return shutil.which(self.executable) is not None

    def wrap(self, command, spec, env):
        """The argv of a bubblewrap sandbox. Under the ``open`` policy it has no network at all
        unless started by :meth:`run`, which connects it to the outside through slirp4netns."""
        return self._argv(command, spec, env, network_fds=None)

    def _argv(self, command, spec, env, network_fds: tuple[int, int] | None, info_fd: int | None = None):
        command = self._network_command(command, spec, env)
        as_root = os.geteuid() == 0
        host_uid, host_gid = (ROOT_MAPS_TO, ROOT_MAPS_TO) if as_root else (os.getuid(), os.getgid())
        python_dirs = sorted({Path(sys.prefix), Path(sys.base_prefix), Path(sys.executable).resolve().parent.parent})
        read_only = sorted({Path(p) for p in spec.read_only})
        if as_root:
            # The sandbox's user is not the pipeline's: it must be able to read what it is given,
            # and the workspace becomes its own.
            for path in python_dirs + read_only + [Path(p) for p in (*spec.mapped.values(), *spec.files.values())]:
                _check_readable_by_others(path)
            _chown_tree(spec.workspace, host_uid, host_gid)
        launcher = [sys.executable, "-I", "-S", str(USERNS_LAUNCHER), "--inside-id", str(SANDBOX_ID),
                    "--host-uid", str(host_uid), "--host-gid", str(host_gid),
                    "--max-tasks", str(int(spec.max_processes))] + (["--stage"] if as_root else [])
        argv = launcher + ["--", self.executable, "--die-with-parent", "--uid", str(SANDBOX_ID),
                           "--gid", str(SANDBOX_ID), "--unshare-pid", "--unshare-ipc", "--unshare-uts",
                           "--unshare-net", "--unshare-cgroup-try", "--cap-drop", "ALL", "--hostname", "sandbox"]
        if network_fds is not None:
            info_fd, block_fd = network_fds
            argv += ["--info-fd", str(info_fd), "--block-fd", str(block_fd)]
        elif info_fd is not None:
            argv += ["--info-fd", str(info_fd)]
        for path in SYSTEM_DIRS + tuple(f"/etc/{name}" for name in ETC_ENTRIES):
            argv += ["--ro-bind-try", path, path]
        # Memory-backed scratch, each with a size limit (--size applies to the next --tmpfs).
        argv += ["--proc", "/proc", "--dev", "/dev",
                 "--size", str(int(spec.tmp_mb) << 20), "--tmpfs", "/tmp",
                 "--size", str(int(spec.shm_mb) << 20), "--tmpfs", "/dev/shm",
                 "--size", str(RUN_TMPFS_MB << 20), "--tmpfs", "/run"]
        if spec.gpus > 0:
            # Device nodes keep their host permissions (NVIDIA's are 0666): the sandbox's user opens them.
            for device in sorted(Path("/dev").glob("nvidia*")):
                argv += ["--dev-bind", str(device), str(device)]
        # The interpreter and its environment (a venv points at its base installation).
        for path in python_dirs + read_only:
            argv += ["--ro-bind", str(path), str(path)]
        for inside, outside in spec.mapped.items():
            argv += ["--ro-bind", str(outside), inside]
        if spec.private_dir is not None:
            for name, path in _identity_files(spec, network_fds is not None).items():
                argv += ["--ro-bind", str(path), f"/etc/{name}"]
        ws = str(spec.workspace)
        # The root itself (a tmpfs holding the mount points) is read-only: writes go to the workspace or /tmp.
        argv += ["--bind", ws, ws]
        for inside, outside in spec.files.items():
            argv += ["--ro-bind", str(outside), inside]
        argv += ["--remount-ro", "/", "--chdir", ws, "--"]
        return argv + list(command), env

    def _launch(self, command, spec, env):
        if spec.network != "open":
            # bwrap reports the sandbox's PID once it is set up: without that report the sandbox never
            # started, an infrastructure fault rather than the agent's outcome.
            info_r, info_w = os.pipe()
            argv, host_env = self._argv(command, spec, env, network_fds=None, info_fd=info_w)
            return Launch(argv, host_env, pass_fds=(info_w,), started=lambda proc: _sandbox_pid(info_r, proc),
                          cleanups=[lambda: _close_quietly(info_r)])
        slirp = shutil.which("slirp4netns")
        if slirp is None:
            raise SandboxError("network 'open' with backend 'bubblewrap' needs slirp4netns (envs/debian-packages.txt, "
                               "make system) to reach the internet without exposing the host's local services")
        info_r, info_w = os.pipe()
        block_r, block_w = os.pipe()
        argv, host_env = self._argv(command, spec, env, network_fds=(info_w, block_r))
        network = _SlirpNetwork(slirp, info_r, block_w)
        return Launch(argv, host_env, pass_fds=(info_w, block_r), started=network.connect, cleanups=[network.close])

    def terminate(self, proc: subprocess.Popen) -> None:
        """SIGTERM to the agent's processes but not to bwrap and its PID-namespace init: their
        death would end the sandbox at once and cut the agent's grace period short."""
        for pid in _group_members(proc.pid):
            if _comm(pid) != "bwrap":
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass


def _first_to_go_out_of_memory(pid: int) -> None:
    """The agent, not the runner, is what the kernel kills when memory runs out (its children inherit this;
    the bubblewrap launcher sets it before the sandbox starts, so none is missed there)."""
    try:
        with open(f"/proc/{pid}/oom_score_adj", "w") as handle:
            handle.write("1000")
    except OSError:
        pass


def _group_members(pgid: int) -> list[int]:
    members = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # after "pid (comm)": state, ppid, pgrp
            members.append(int(stat_file.parent.name))
    return members


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


class _SlirpNetwork:
    """The ``open`` policy for bubblewrap: once bwrap reports its sandbox's PID (``--info-fd``),
    slirp4netns gives that network namespace a user-mode stack (NAT to the outside, DNS forwarder)
    with the host's loopback disabled, the host's other addresses get unreachable routes, and then
    the sandbox is let go (``--block-fd``). Abstract Unix sockets belong to a network namespace, so the
    host's are out of reach too."""

    def __init__(self, executable: str, info_r: int, block_w: int):
        self.executable = executable
        self.info_r, self.block_w = info_r, block_w
        self.process: subprocess.Popen | None = None
        self.log = tempfile.TemporaryFile()

    def connect(self, sandbox: subprocess.Popen) -> None:
        pid = _sandbox_pid(self.info_r, sandbox, 30)
        self._wait_for_loopback(sandbox, pid)
        ready_r, ready_w = os.pipe()
        argv = [self.executable, "--configure", "--mtu=65520", "--disable-host-loopback", "--enable-sandbox",
                "--enable-seccomp", "--ready-fd", str(ready_w)]
        if os.geteuid() != 0:
            argv.append(f"--userns-path=/proc/{pid}/ns/user")
        argv += [str(pid), "tap0"]
        try:
            self.process = subprocess.Popen(argv, pass_fds=(ready_w,), stdin=subprocess.DEVNULL,
                                            stdout=self.log, stderr=self.log)
        finally:
            os.close(ready_w)
        try:
            ready = _read_within(ready_r, 30)
        finally:
            os.close(ready_r)
        if ready != b"1":
            self.log.seek(0)
            detail = " ".join(self.log.read().decode("utf-8", "replace").split())[-300:]
            raise SandboxError(f"slirp4netns could not connect the sandbox to the network: {detail or 'no reason given'}")
        _block_host_addresses(pid)
        os.write(self.block_w, b"1")

    @staticmethod
    def _wait_for_loopback(sandbox: subprocess.Popen, pid: int, seconds: float = 30) -> None:
        """bwrap brings up the namespace's loopback while it sets the sandbox up; slirp4netns
        configuring the same namespace at that moment makes bwrap fail. Its local route appears
        once loopback is up."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                if "127.0.0.1" in Path(f"/proc/{pid}/net/fib_trie").read_text():
                    return
            except OSError:
                pass
            if sandbox.poll() is not None:
                break
            time.sleep(0.005)
        raise SandboxError(f"the bubblewrap sandbox did not bring up its network namespace (exit code "
                           f"{sandbox.poll()}); its error is in the trace's stderr")

    def close(self) -> None:
        for fd in (self.info_r, self.block_w):
            try:
                os.close(fd)
            except OSError:
                pass
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def host_addresses() -> list[str]:
    """The host's own IPv4 addresses but loopback (its ``LOCAL`` routes: every interface, container
    bridges included)."""
    try:
        text = Path("/proc/net/fib_trie").read_text()
    except OSError:
        return []
    found, last = set(), None
    for line in text.splitlines():
        entry = line.strip()
        if entry.startswith("|-- "):
            last = entry[4:]
        elif entry == "/32 host LOCAL" and last and not last.startswith("127."):
            found.add(last)
    return sorted(found)


def _block_host_addresses(pid: int) -> None:
    """Make the host's own addresses unreachable from the sandbox's network namespace, before the agent
    starts: slirp4netns cuts off the host's loopback only, and a service listening on all interfaces
    would be reachable at the host's other addresses. The agent has no capability to change routes."""
    addresses = host_addresses()
    if not addresses:
        return
    ip, nsenter = shutil.which("ip"), shutil.which("nsenter")
    if not (ip and nsenter):
        raise SandboxError("network 'open' with backend 'bubblewrap' needs ip (iproute2) and nsenter (util-linux) "
                           "to keep the host's own addresses out of the sandbox's reach")
    enter = [nsenter, f"--net=/proc/{pid}/ns/net"]
    if os.geteuid() != 0:  # the namespace belongs to the sandbox's user namespace, which is ours
        enter = [nsenter, f"--user=/proc/{pid}/ns/user", "--preserve-credentials", f"--net=/proc/{pid}/ns/net"]
    batch = "".join(f"route add unreachable {address}/32\n" for address in addresses)
    try:
        done = subprocess.run(enter + [ip, "-batch", "-"], input=batch, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SandboxError(f"could not keep the host's addresses out of the sandbox: {exc}") from None
    if done.returncode != 0:
        detail = " ".join(done.stderr.split())[-300:]
        raise SandboxError(f"could not keep the host's addresses out of the sandbox: {detail or done.returncode}")


def _sandbox_pid(info_r: int, sandbox: subprocess.Popen, seconds: float = 60) -> int:
    """The PID bwrap reports on ``--info-fd`` once its sandbox is set up; SandboxError if it never does."""
    info = b""
    while chunk := _read_within(info_r, seconds):
        info += chunk
    try:
        return int(json.loads(info)["child-pid"])
    except (ValueError, KeyError, TypeError):
        raise SandboxError(f"the bubblewrap sandbox did not start (exit code {sandbox.poll()}); "
                           "its error is in the trace's stderr") from None


def _read_available(fd: int) -> bytes:
    """What has been written to the pipe ``fd`` (its writers are gone or never write again), without blocking."""
    os.set_blocking(fd, False)
    data = b""
    try:
        while len(data) < 4096 and (chunk := os.read(fd, 4096)):
            data += chunk
    except BlockingIOError:
        pass
    return data


def _check_started(marker: bytes, backend: str, outcome: RunOutcome, trace: TraceWriter,
                   command: Sequence[str]) -> None:
    """InfrastructureError unless the start launcher ran and exec'd the agent's command."""
    if not marker.startswith(b"S"):
        detail = f"; its last error: {trace.last_stderr}" if trace.last_stderr else ""
        reason = (f"the {backend} sandbox did not start (exit code {outcome.exit_code}) before the agent's command "
                  f"{_shown(command)}{detail}")
    elif len(marker) > 1 and marker[1:2] == b"E":
        reason = f"the agent's command could not be started in the {backend} sandbox: " + \
                 " ".join(marker[2:].decode("utf-8", "replace").split())
    else:
        return
    trace.event("infrastructure_error", error=reason)
    raise InfrastructureError(reason)


def _shown(command: Sequence[str]) -> str:
    return repr(command[0]) if command else "(empty)"


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def _read_within(fd: int, seconds: float) -> bytes:
    """Up to 4096 bytes from ``fd``, or b"" at end of file or after ``seconds``."""
    ready, _, _ = select.select([fd], [], [], seconds)
    return os.read(fd, 4096) if ready else b""


def _check_readable_by_others(path: Path) -> None:
    """A path given to a sandbox whose user is not the pipeline's must be world-readable (its
    top level and, for a directory, what it holds directly): else an honest agent could not read
    its own inputs, and the run would fail for a reason that is not the agent's."""
    def check(p: Path, st: os.stat_result) -> None:
        need = 0o005 if stat.S_ISDIR(st.st_mode) else 0o004
        if st.st_mode & need != need and st.st_uid != ROOT_MAPS_TO:
            raise SandboxError(f"{p} is not readable by the sandbox's user (host uid {ROOT_MAPS_TO}, the pipeline "
                               "runs as root): make it world-readable (chmod -R o+rX)")

    try:
        st = path.stat()
    except OSError as exc:
        raise SandboxError(f"{path} is given to the sandbox but cannot be read: {exc.strerror}") from None
    check(path, st)
    if stat.S_ISDIR(st.st_mode):
        try:
            with os.scandir(path) as it:
                for n, entry in enumerate(it):
                    if n >= 1000:
                        break
                    try:
                        check(Path(entry.path), entry.stat())
                    except OSError:
                        continue
        except OSError as exc:
            raise SandboxError(f"{path} is given to the sandbox but cannot be listed: {exc.strerror}") from None


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    """Give ``root`` and everything under it to ``uid``:``gid``, following no symlink."""
    os.lchown(root, uid, gid)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            try:
                os.lchown(os.path.join(dirpath, name), uid, gid)
            except OSError:
                pass


def _identity_files(spec: SandboxSpec, slirp: bool) -> dict[str, Path]:
    """/etc files of the sandbox's own: its user in passwd and group (programs that look up their
    user, as PyTorch's caches do, would fail without), none of the host's accounts, and under
    slirp4netns a resolver that is reachable from the sandbox."""
    home = spec.workspace
    files = {
        "passwd": f"root:x:0:0:root:/root:/bin/sh\nagent:x:{SANDBOX_ID}:{SANDBOX_ID}:agent:{home}:/bin/sh\n"
                  "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
        "group": f"root:x:0:\nagent:x:{SANDBOX_ID}:\nnogroup:x:65534:\n",
    }
    if slirp:
        files["resolv.conf"] = f"nameserver {SLIRP_DNS}\n"
    folder = Path(spec.private_dir) / "etc"
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)
    paths = {}
    for name, text in files.items():
        path = folder / name
        path.write_text(text)
        path.chmod(0o644)
        paths[name] = path
    return paths


class ApptainerSandbox(Sandbox):
    """``apptainer exec --containall --cleanenv`` in the agent image; inputs bound in read-only.

    The workspace is the agent's HOME (``--home``: with --containall, HOME cannot be set through the
    environment). /tmp and /var/tmp are a directory of the run's own on node-local disk (``--workdir``;
    without it --containall gives a /tmp of the session's size, 64 MiB by default), removed afterwards;
    its size is measured against budget.tmp_mb. /dev/shm is Apptainer's own memory-backed tmpfs, which
    takes no size: its usage is measured against budget.shm_mb. The environment reaches the container
    through an ``--env-file`` written to the run's private directory (never on the command line, where
    keys would show in ``ps`` and the trace).
    """

    name = "apptainer"
    isolating = True
    python = "python3"  # the image's interpreter (containers/agent.def)

    def __init__(self, image: str | None = None, executable: str | None = None):
        # A relative image is the project's (the job's working directory), never the agent's workspace.
        self.image = os.path.abspath(os.path.expanduser(image)) if image else None
        self.executable = executable or shutil.which("apptainer") or "apptainer"

    def available(self) -> bool:
        return shutil.which(self.executable) is not None

    def wrap(self, command, spec, env):
        if not self.image:
            raise SandboxError("config key 'sandbox.image' must name the agent image (.sif) for backend 'apptainer'")
        command = self._network_command(command, spec, env)
        ws = str(spec.workspace)
        if spec.scratch is None:
            spec.scratch = _run_scratch(spec.scratch_root)
        argv = [self.executable, "exec", "--containall", "--cleanenv", "--home", f"{ws}:{ws}", "--pwd", ws,
                "--workdir", str(spec.scratch)]
        if spec.gpus > 0:
            argv.append("--nv")
        if spec.network != "open":
            argv += ["--net", "--network", "none"]
        for path in sorted({Path(p) for p in spec.read_only}):
            argv += ["--bind", f"{path}:{path}:ro"]
        for inside, outside in spec.mapped.items():
            argv += ["--bind", f"{outside}:{inside}:ro"]
        for inside, outside in spec.files.items():
            argv += ["--bind", f"{outside}:{inside}:ro"]
        host_env = {k: os.environ[k] for k in ("PATH", "LANG", "TMPDIR") if k in os.environ}
        if spec.private_dir is None:
            raise SandboxError("backend 'apptainer' needs a private directory for the environment file")
        spec.private_dir.mkdir(parents=True, exist_ok=True)
        env_file = spec.private_dir / "agent.env"
        inside = {**env, "TMPDIR": "/tmp"}  # --workdir's directory
        fd = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            # The image sets its own PATH; HOME is --home's (apptainer refuses it from the environment).
            handle.writelines(f"{k}={_env_quote(v)}\n" for k, v in inside.items() if k not in ("PATH", "HOME"))
        argv += ["--env-file", str(env_file)]
        if "CUDA_VISIBLE_DEVICES" in env:
            host_env["CUDA_VISIBLE_DEVICES"] = env["CUDA_VISIBLE_DEVICES"]  # read by --nv
        return argv + [self.image] + list(command), host_env

    def _launch(self, command, spec, env):
        # Apptainer runs the container as the user who starts it: as root, that is host root.
        if os.geteuid() == 0:
            raise SandboxError("backend 'apptainer' runs the agent as the pipeline's own user, which is root here: "
                               "run the pipeline as an unprivileged user, or use backend 'bubblewrap'")
        check_image(self.image)
        try:
            launch = super()._launch(command, spec, env)
        except BaseException:
            _remove_scratch(spec)
            raise
        launch.cleanups.append(lambda: _remove_scratch(spec))
        scratch = spec.scratch
        spec.watched = [("tmp_mb", lambda _pid: workspace_usage(scratch).bytes, spec.tmp_mb),
                        ("shm_mb", lambda pid: namespace_mount_usage(pid, "/dev/shm"), spec.shm_mb)]
        return launch


def _run_scratch(root: Path | str | None) -> Path:
    """A new directory of this run's own under ``root`` (config key sandbox.scratch_dir), else under the
    job's node-local scratch ($SLURM_TMPDIR, $TMPDIR), else the system's temporary directory."""
    configured = root is not None
    if root is None:
        root = os.environ.get("SLURM_TMPDIR") or os.environ.get("TMPDIR") or tempfile.gettempdir()
    root = Path(os.path.expanduser(str(root)))
    if not root.is_dir():
        where = "config key 'sandbox.scratch_dir'" if configured else "the job's scratch ($SLURM_TMPDIR/$TMPDIR)"
        raise SandboxError(f"{where} names {root}, which is not a directory: the agent's /tmp is made there")
    try:
        return Path(tempfile.mkdtemp(prefix="ptb-agent-", dir=root))
    except OSError as exc:
        raise SandboxError(f"could not make the agent's /tmp under {root}: {exc.strerror or exc}") from None


def _remove_scratch(spec: SandboxSpec) -> None:
    if spec.scratch is not None:
        shutil.rmtree(spec.scratch, ignore_errors=True)
        spec.scratch = None


def check_image(image: str | None) -> None:
    """SandboxError unless ``image`` (config key sandbox.image) is a readable file."""
    if not image:
        raise SandboxError("config key 'sandbox.image' must name the agent image (.sif) for backend 'apptainer'")
    path = Path(image)
    if not path.is_file():
        raise SandboxError(f"config key 'sandbox.image' names {path}, which does not exist "
                           "(apptainer build containers/agent.sif containers/agent.def; docs/hpc.md)")
    if not os.access(path, os.R_OK):
        raise SandboxError(f"config key 'sandbox.image' names {path}, which cannot be read")


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

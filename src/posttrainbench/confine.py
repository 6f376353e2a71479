"""Confinement of the jobs that read what agents left behind (evaluate, generate_for_grader, grade, judge).

Two layers, both applied when a job's script starts:

* **Environment**: an allow-list scrub of ``os.environ``. What a job and its children (lm-eval, the vLLM
  server) need to run stays (paths, locale, GPU, SLURM, thread and offline settings); everything else
  goes, and anything secret-looking goes even when its name matches the allow-list. A job keeps only
  the API key it uses (the grade job the grader's, the judge job the LLM judge's) and, in those jobs
  only, the proxy settings. The names dropped (never the values) go to the job log.
* **File system**: the job's script re-executes itself under bubblewrap with the whole host read-only
  (``--ro-bind / /``) and no capabilities (a root job could otherwise remount it writable), a minimal
  ``/dev`` with the accelerators, ``/run`` hidden (the host's runtime sockets), its own PID, UTS and IPC
  namespaces and ``/proc``, a private ``/tmp``
  and ``/dev/shm``, and as its only writable places its log file and one private, empty directory per
  output directory. When the job ends, the files it wrote there that belong to its declared outputs
  (``seedN.json``, ``seedN.*``) are moved into the real output directory; anything else it wrote is
  dropped (logged). So a job cannot change the project tree, the staged models and test sets, or another
  cell's results, not even the other seeds' files in its own output directory. Caches are private to
  the job (under its ``/tmp``). Another bubblewrap sandbox can still be started inside (without a
  ``--proc`` mount of its own).

Without bubblewrap (e.g. jobs running inside Apptainer images), or with ``sandbox.confine_jobs: false``,
the job runs unconfined and its log says so.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Iterable, Mapping, MutableMapping

# Set in the confined process: the script must not re-execute itself again.
CONFINED_ENV = "PTB_JOB_CONFINED"
# Where the confined job's private scratch is mounted (the host's /tmp stays out of reach).
PRIVATE_TMP = "/tmp"

KEPT_NAMES = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "TERM", "PWD", "HOSTNAME", "LANG", "LANGUAGE", "TZ",
    "TMPDIR", "VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYTHONNOUSERSITE", "PYTHONUNBUFFERED",
    "PYTHONDONTWRITEBYTECODE", "PYTHONHASHSEED", "PYTHONIOENCODING", "LD_LIBRARY_PATH", "CONDA_PREFIX",
    "CONDA_DEFAULT_ENV", "OPENBLAS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "GOTO_NUM_THREADS",
    "TOKENIZERS_PARALLELISM", "TQDM_DISABLE", "DO_NOT_TRACK", "CUBLAS_WORKSPACE_CONFIG",
    "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL", "MPLCONFIGDIR",
    "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NUMBA_CACHE_DIR",
    "FLASHINFER_WORKSPACE_BASE", CONFINED_ENV,
})
KEPT_PREFIXES = ("LC_", "CUDA_", "NVIDIA_", "NCCL_", "SLURM_", "SNAKEMAKE_", "OMP_", "MKL_", "KMP_",
                 "NUMEXPR_", "HF_", "TRANSFORMERS_", "VLLM_", "TORCH_", "PYTORCH_", "TORCHINDUCTOR_",
                 "TRITON_", "XDG_CACHE_", "PTB_")
# Only in jobs that call a remote endpoint (the grader, the LLM judge).
PROXY_NAMES = frozenset({"http_proxy", "https_proxy", "no_proxy", "all_proxy",
                         "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY"})
# A name that looks like it holds a secret is dropped even when a prefix above matches it
# (HF_TOKEN, VLLM_API_KEY, SNAKEMAKE_STORAGE_S3_SECRET_KEY, ...).
SECRET_LOOKING = re.compile(
    r"TOKEN|SECRET|PASSW|PASSPHRASE|CREDENTIAL|COOKIE|PRIVATE|SIGNATURE|AUTH|APIKEY|(?:^|_)KEYS?(?:_|$)",
    re.IGNORECASE,
)
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ConfinementError(RuntimeError):
    """The job cannot be confined as configured (one-line reason)."""


def kept(name: str, keys: Iterable[str] = (), network: bool = False) -> bool:
    """Whether a job keeps the environment variable ``name``: one of its ``keys``, a proxy setting in a
    ``network`` job, or an allow-listed name that does not look secret."""
    if name in set(keys) or name in KEPT_NAMES:
        return True
    if name in PROXY_NAMES:
        return network
    if SECRET_LOOKING.search(name):
        return False
    return name.startswith(KEPT_PREFIXES)


def scrub_environment(keys: Iterable[str] = (), *, network: bool = False,
                      environ: MutableMapping[str, str] | None = None) -> list[str]:
    """Remove from ``environ`` (default ``os.environ``) every variable the job does not keep (see
    :func:`kept`); return the names removed, sorted. Child processes inherit what is left."""
    environ = os.environ if environ is None else environ
    keys = [k for k in keys if k]
    for key in keys:
        if not ENV_NAME.match(key):
            raise ConfinementError(f"{key!r} is not an environment variable name")
    dropped = sorted(name for name in list(environ) if not kept(name, keys, network))
    for name in dropped:
        del environ[name]
    return dropped


def clean_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of ``environ`` (default ``os.environ``) with what no key-less, offline job keeps removed:
    the environment of a helper process such as a local inference server."""
    env = dict(os.environ if environ is None else environ)
    scrub_environment(environ=env)
    return env


# --- file-system confinement ------------------------------------------------------------------------------


def bubblewrap() -> str | None:
    return shutil.which("bwrap")


def _under(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _visible_paths(inputs: Iterable[str | os.PathLike], extra: Iterable[str | os.PathLike]) -> list[Path]:
    """Host paths the job reads that a private /tmp would hide: the working directory, the interpreter
    and its import path, the job's inputs and script (a checkout or test tree may live under /tmp)."""
    candidates = [Path.cwd(), Path(sys.prefix), Path(sys.base_prefix), Path(sys.executable).parent,
                  Path(sys.argv[0]).parent if sys.argv and sys.argv[0] else Path.cwd()]
    candidates += [Path(p) for p in sys.path if p]
    candidates += [Path(p) for p in inputs]
    candidates += [Path(p) for p in extra]
    for name in ("PTB_VLLM_PYTHON", "HF_HOME", "HF_HUB_CACHE", "PTB_TEST_CACHE", "VIRTUAL_ENV"):
        if os.environ.get(name):
            candidates.append(Path(os.environ[name]))
    tmp = Path(PRIVATE_TMP)
    found: list[Path] = []
    for candidate in candidates:
        for path in {Path(os.path.abspath(candidate)), Path(os.path.realpath(candidate))}:
            if _under(path, tmp) and path != tmp and path.exists():
                found.append(path)
    # Outermost first, each once: a bind of a parent already shows its children.
    found = sorted(set(found), key=lambda p: (len(p.parts), str(p)))
    return [p for i, p in enumerate(found) if not any(_under(p, q) for q in found[:i])]


# Device nodes a job may need (GPUs, their capability and IMEX channels, ROCm), bound into its minimal /dev.
ACCELERATOR_DEVICES = ("/dev/nvidia*", "/dev/nvidia-caps*", "/dev/kfd", "/dev/dri", "/dev/infiniband")
RUNTIME_DIRS = ("/run", "/var/run")
# The confined job's uid inside its namespace when the pipeline runs as root (mapped to host root).
JOB_UID = 1000


def _accelerator_devices() -> list[str]:
    import glob

    return sorted({path for pattern in ACCELERATOR_DEVICES for path in glob.glob(pattern)})


def _runtime_dirs() -> list[str]:
    """/run and /var/run where they are real directories (/var/run is usually a symlink to /run)."""
    return [d for d in RUNTIME_DIRS if os.path.isdir(d) and not os.path.islink(d)]


# In each job's scratch directory: which process on which host made it (host, pid, start time).
OWNER_FILE = "owner"


def _process_identity(pid: int) -> str | None:
    """``host pid start-time`` of a live process of this host, None if there is none with that pid."""
    try:
        start = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return None
    return f"{socket.gethostname()} {pid} {start}"


def _remove_abandoned(root: Path) -> None:
    """Remove the scratch of jobs of this host whose process is gone (killed before its own cleanup: a
    cluster's time limit, a node's OOM killer). It is never published; left, it would hold the job's
    caches and partial outputs forever. Scratch of other hosts' jobs, or of live ones, stays."""
    host = socket.gethostname()
    for workdir in root.glob("job-*"):
        try:
            owner = (workdir / OWNER_FILE).read_text().split()
        except OSError:
            continue
        if len(owner) == 3 and owner[0] == host and owner[1].isdigit() and \
                _process_identity(int(owner[1])) != " ".join(owner):
            shutil.rmtree(workdir, ignore_errors=True)


class Confinement:
    """The bubblewrap command that runs a job read-only except ``outputs`` and ``log_files``.

    Each distinct output directory is replaced, inside, by an empty private directory under
    ``staging_root``; :meth:`publish` moves the job's files from there into the real directories.
    """

    def __init__(self, *, outputs: Iterable[str | os.PathLike], log_files: Iterable[str | os.PathLike] = (),
                 inputs: Iterable[str | os.PathLike] = (), staging_root: str | os.PathLike | None = None,
                 executable: str | None = None):
        self.executable = executable or bubblewrap()
        if not self.executable:
            raise ConfinementError("bubblewrap (bwrap) is not installed")
        self.outputs = [Path(os.path.abspath(p)) for p in outputs]
        self.log_files = [Path(os.path.abspath(p)) for p in log_files]
        self.inputs = list(inputs)
        root = Path(staging_root) if staging_root else Path.cwd() / ".snakemake" / "ptb-confine"
        root.mkdir(parents=True, exist_ok=True)
        _remove_abandoned(root)
        self.workdir = Path(tempfile.mkdtemp(prefix="job-", dir=root))
        (self.workdir / OWNER_FILE).write_text(_process_identity(os.getpid()) or "")
        self.tmp = self.workdir / "tmp"
        self.tmp.mkdir()
        self.staging: dict[Path, Path] = {}
        for out in self.outputs:
            if out.parent not in self.staging:
                out.parent.mkdir(parents=True, exist_ok=True)
                staged = self.workdir / f"out{len(self.staging)}"
                staged.mkdir()
                self.staging[out.parent] = staged
        for log_file in self.log_files:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            log_file.touch(exist_ok=True)

    def argv(self, command: list[str]) -> list[str]:
        # No capabilities: as root, bubblewrap would otherwise keep them all in its namespace, and the job could
        # remount the read-only host tree writable. Own UTS and IPC namespaces: a job running as uid 0 could
        # otherwise rename the host through /proc/sys or reach the host's SysV shared memory.
        argv = [self.executable, "--unshare-user", "--unshare-pid", "--unshare-uts", "--unshare-ipc",
                "--die-with-parent", "--cap-drop", "ALL", "--ro-bind", "/", "/"]
        if os.geteuid() == 0:
            # Still host root for file access (root-only staged files stay readable), but not uid 0 inside:
            # a sandbox nested in the job (bubblewrap treats uid 0 as privileged) then sets itself up as usual.
            argv += ["--uid", str(JOB_UID), "--gid", str(JOB_UID)]
        # A minimal /dev plus the accelerators, not the host's disks and consoles.
        argv += ["--dev", "/dev"]
        for device in _accelerator_devices():
            argv += ["--dev-bind", device, device]
        argv += ["--proc", "/proc", "--tmpfs", "/dev/shm", "--bind", str(self.tmp), PRIVATE_TMP]
        # The host's runtime sockets (container engines, init, munge, D-Bus) live under /run: hidden, except
        # the resolver's configuration when /etc/resolv.conf points there.
        for run in _runtime_dirs():
            argv += ["--tmpfs", run]
        resolver = Path(os.path.realpath("/etc/resolv.conf")).parent
        if any(_under(resolver, Path(run)) for run in _runtime_dirs()) and resolver.is_dir():
            argv += ["--ro-bind", str(resolver), str(resolver)]
        for path in _visible_paths(self.inputs, [*self.outputs, *self.log_files]):
            if path.is_dir() or path.is_file():
                argv += ["--ro-bind", str(path), str(path)]
        for real, staged in self.staging.items():
            argv += ["--bind", str(staged), str(real)]
        for log_file in self.log_files:
            argv += ["--bind", str(log_file), str(log_file)]
        return argv + ["--chdir", os.getcwd(), "--", *command]

    def child_environment(self, environ: Mapping[str, str]) -> dict[str, str]:
        """The confined job's environment: ``environ`` with the marker set, temporary files in the
        private /tmp, and caches that write (datasets, compilers, vLLM) private to the job; the Hugging
        Face home stays where it was, readable."""
        env = dict(environ)
        if os.geteuid() == 0:
            # The job's uid inside has no name there: programs that ask who they are (getpass) ask the environment.
            env.setdefault("USER", "root")
            env.setdefault("LOGNAME", env["USER"])
        hf_home = env.get("HF_HOME") or os.path.join(
            env.get("XDG_CACHE_HOME") or os.path.join(env.get("HOME", "/root"), ".cache"), "huggingface")
        cache = f"{PRIVATE_TMP}/.cache"
        env.update({
            CONFINED_ENV: "1", "TMPDIR": PRIVATE_TMP, "HF_HOME": hf_home, "XDG_CACHE_HOME": cache,
            "HF_DATASETS_CACHE": f"{cache}/huggingface/datasets", "TRITON_CACHE_DIR": f"{cache}/triton",
            "VLLM_CACHE_ROOT": f"{cache}/vllm", "CUDA_CACHE_PATH": f"{cache}/nv", "NUMBA_CACHE_DIR": f"{cache}/numba",
            "FLASHINFER_WORKSPACE_BASE": PRIVATE_TMP, "TORCHINDUCTOR_CACHE_DIR": f"{cache}/inductor",
            "MPLCONFIGDIR": f"{PRIVATE_TMP}/.config/matplotlib",
        })
        return env

    def probe(self) -> str | None:
        """None when this confinement works here, else bubblewrap's one-line reason."""
        try:
            done = subprocess.run(self.argv(["true"]), capture_output=True, text=True, timeout=60,
                                  stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"{type(exc).__name__}: {exc}"
        if done.returncode != 0:
            return (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        return None

    def run(self, command: list[str], environ: Mapping[str, str]) -> int:
        """Run ``command`` confined (standard streams inherited); its exit code. A SIGTERM to this process
        (a cancelled or timed-out cluster job) ends the confined run, so the caller still cleans up."""
        proc = subprocess.Popen(self.argv(command), env=self.child_environment(environ))
        in_main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, lambda *_: proc.terminate()) if in_main_thread else None
        try:
            return proc.wait()
        finally:
            if in_main_thread:
                signal.signal(signal.SIGTERM, previous)

    def publish(self, log: logging.Logger | None = None) -> list[Path]:
        """Move the files the job wrote for its outputs (``NAME`` and ``STEM.*`` of each output, regular
        files with one link) into the real output directories; drop everything else (logged)."""
        log = log or logging.getLogger(__name__)
        published, dropped = [], []
        for real, staged in self.staging.items():
            stems = [(out.name, out.stem + ".") for out in self.outputs if out.parent == real]
            for entry in sorted(os.scandir(staged), key=lambda e: e.name):
                info = entry.stat(follow_symlinks=False)
                ours = any(entry.name == name or entry.name.startswith(prefix) for name, prefix in stems)
                if not (ours and stat.S_ISREG(info.st_mode) and info.st_nlink == 1):
                    dropped.append(f"{real}/{entry.name}")
                    continue
                target = real / entry.name
                try:
                    os.replace(entry.path, target)
                except OSError:  # another file system: copy next to the target, then rename
                    fd, tmp = tempfile.mkstemp(prefix=f".{entry.name}.", suffix=".tmp", dir=real)
                    os.close(fd)
                    shutil.copyfile(entry.path, tmp)
                    os.replace(tmp, target)
                published.append(target)
        if dropped:
            log.warning("dropped %d file(s) the job wrote outside its outputs: %s", len(dropped),
                        ", ".join(dropped[:20]) + (" ..." if len(dropped) > 20 else ""))
        return published

    def cleanup(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)


def confined() -> bool:
    """Whether this process runs inside a job confinement."""
    return os.environ.get(CONFINED_ENV) == "1"


def confine_job(*, outputs: Iterable[str | os.PathLike], log_files: Iterable[str | os.PathLike],
                inputs: Iterable[str | os.PathLike] = (), keys: Iterable[str] = (), network: bool = False,
                enabled: bool = True, log: logging.Logger | None = None,
                command: list[str] | None = None) -> int | None:
    """Scrub the environment, then re-run this process's command confined.

    Returns None when the caller is to go on in this process (it is already the confined process, or
    confinement is disabled or unavailable, which is logged), else the confined run's exit code (its
    outputs already published): the caller then exits with it."""
    log = log or logging.getLogger(__name__)
    keys = [k for k in keys if k]
    dropped = scrub_environment(keys, network=network)
    if dropped:
        log.info("environment: dropped %d variable(s): %s", len(dropped), ", ".join(dropped))
    if keys:
        log.info("environment: keeps the key variable(s) %s", ", ".join(keys))
    if confined():
        log.info("confined: the file system is read-only except this job's outputs, its log and a private /tmp")
        return None
    if not enabled:
        log.warning("sandbox.confine_jobs is false: this job runs with the project tree writable")
        return None
    if not bubblewrap():
        log.warning("bubblewrap (bwrap) is not installed: this job runs with the project tree writable "
                    "(install bubblewrap, or confine jobs by other means, e.g. read-only container binds)")
        return None
    confinement = Confinement(outputs=outputs, log_files=log_files, inputs=inputs)
    try:
        problem = confinement.probe()
        if problem:
            log.warning("bubblewrap cannot confine this job here (%s): it runs with the project tree writable",
                        problem)
            return None
        command = command or [sys.executable, *sys.argv]
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        code = confinement.run(command, os.environ)
        published = confinement.publish(log)
        log.info("confined run exited with code %d; published %d file(s)", code, len(published))
        return code
    finally:
        confinement.cleanup()

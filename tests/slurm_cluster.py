"""A real single-node SLURM cluster from Debian's slurmctld, slurmd and munge, for the HPC tests.

``SlurmCluster(state_dir, gpus=1)`` writes ``/etc/slurm/{slurm,gres,cgroup}.conf`` (the executor's job
step strips ``SLURM_CONF``, so the config must be at the default path), starts munged (when no munged
is running), slurmctld and slurmd, and waits for the node to be idle. GPUs are fake: ``gres.conf``
maps each to ``/dev/null`` (SLURM rejects count-only GPUs), enough for jobs to be scheduled as GPU
jobs and for ``scontrol``/``squeue`` to show the request. There is no slurmdbd, so ``sacct`` has no
data and the executor must poll with ``squeue``; ``MinJobAge`` keeps finished jobs visible to it.

Run as a script to bring a cluster up by hand: ``python tests/slurm_cluster.py up|down STATE_DIR``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ETC = Path("/etc/slurm")
CONF_FILES = ("slurm.conf", "gres.conf", "cgroup.conf")
DAEMONS = ("slurmctld", "slurmd", "munged")
PARTITION = "gpu"
FAKE_GPU_FILES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/urandom")  # the partition name profiles/slurm requests by default


class ClusterUnavailable(RuntimeError):
    """What is missing to run a cluster here (not root, a package not installed)."""


def missing_requirements() -> str | None:
    """None when a cluster can be started here, else why not (for a skip reason)."""
    if os.geteuid() != 0:
        return "the SLURM test cluster needs root (slurmd runs jobs as their submitting user)"
    missing = [tool for tool in ("slurmctld", "slurmd", "munged", "sbatch", "scontrol", "squeue", "scancel")
               if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists()]
    if missing:
        return (f"Debian packages slurmctld, slurmd, slurm-client and munge are needed (missing: {', '.join(missing)});"
                " `make system` installs them as root")
    return None


def _binary(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _memory_mb() -> int:
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    raise ClusterUnavailable("cannot read MemTotal from /proc/meminfo")


class SlurmCluster:
    """One controller + one compute node on this host; ``start()``/``stop()`` or a ``with`` block."""

    def __init__(self, state_dir: Path, gpus: int = 1, name: str = "ptbtest"):
        self.state_dir = Path(state_dir).resolve()
        self.gpus = gpus
        self.name = name
        self.node = socket.gethostname().split(".")[0]
        self.cpus = os.cpu_count() or 1
        # Leave room for the daemons and the submitting workflow.
        self.memory_mb = int(_memory_mb() * 0.8)
        self._started: dict[str, int] = {}
        self._saved_conf: dict[str, bytes | None] = {}

    # -- configuration --------------------------------------------------------------------------------------
    @property
    def log_dir(self) -> Path:
        return self.state_dir / "log"

    def slurm_conf(self) -> str:
        d = self.state_dir
        return "\n".join([
            f"ClusterName={self.name}",
            f"SlurmctldHost={self.node}",
            "AuthType=auth/munge",
            "SlurmUser=root",
            "SlurmdUser=root",
            f"StateSaveLocation={d}/ctld",
            f"SlurmdSpoolDir={d}/spool",
            f"SlurmctldPidFile={d}/slurmctld.pid",
            f"SlurmdPidFile={d}/slurmd.pid",
            f"SlurmctldLogFile={self.log_dir}/slurmctld.log",
            f"SlurmdLogFile={self.log_dir}/slurmd.log",
            "SlurmctldPort=16817",
            "SlurmdPort=16818",
            # No cgroup hierarchy is delegated to us: track processes by parent id, no task binding.
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            "GresTypes=gpu",
            "MpiDefault=none",
            "MailProg=/bin/true",
            "SchedulerType=sched/backfill",
            "SchedulerParameters=sched_interval=2",
            "ReturnToService=2",
            # Finished jobs stay in squeue's view long enough for the executor's status polls.
            "MinJobAge=3600",
            "KillWait=5",
            "InactiveLimit=0",
            "SlurmdTimeout=60",
            f"NodeName={self.node} CPUs={self.cpus} RealMemory={self.memory_mb} Gres=gpu:{self.gpus} State=UNKNOWN",
            f"PartitionName={PARTITION} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP",
            "",
        ])

    def gres_conf(self) -> str:
        # One line per fake device: SLURM needs a distinct device File per GPU (count-only is rejected).
        if self.gpus > len(FAKE_GPU_FILES):
            raise ValueError(f"at most {len(FAKE_GPU_FILES)} fake GPUs")
        return "".join(f"NodeName={self.node} Name=gpu File={f}\n" for f in FAKE_GPU_FILES[:self.gpus])

    @staticmethod
    def cgroup_conf() -> str:
        return "CgroupAutomount=no\nConstrainCores=no\nConstrainRAMSpace=no\nConstrainDevices=no\n"

    def _write_config(self) -> None:
        ETC.mkdir(parents=True, exist_ok=True)
        for name, text in zip(CONF_FILES, (self.slurm_conf(), self.gres_conf(), self.cgroup_conf())):
            path = ETC / name
            self._saved_conf[name] = path.read_bytes() if path.exists() else None
            path.write_text(text)

    def _restore_config(self) -> None:
        for name, previous in self._saved_conf.items():
            path = ETC / name
            if previous is None:
                path.unlink(missing_ok=True)
            else:
                path.write_bytes(previous)
        self._saved_conf.clear()

    # -- daemons --------------------------------------------------------------------------------------------
    def _munge_running(self) -> bool:
        return subprocess.run(["munge", "-n"], capture_output=True).returncode == 0 if shutil.which("munge") else False

    def _start_munged(self) -> None:
        if self._munge_running():
            return
        key = Path("/etc/munge/munge.key")
        if not key.exists():
            subprocess.run(["mungekey", "--create", "--keyfile", str(key)], check=True, capture_output=True)
        for folder in ("/run/munge", "/var/log/munge", "/var/lib/munge"):
            Path(folder).mkdir(parents=True, exist_ok=True)
        # In the foreground, as our child: stopping it then reaps it.
        with open(self.log_dir / "munged.out", "ab") as out:
            proc = subprocess.Popen([_binary("munged"), "--foreground", "--force"], stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self._started["munged"] = proc.pid
        self._procs.append(proc)
        self._wait(self._munge_running, 10, "munged did not start")

    def _start_daemon(self, name: str) -> None:
        log = self.log_dir / f"{name}.out"
        # -D: stay in the foreground, so the pid is ours; -i: ignore state from an earlier cluster.
        args = [_binary(name), "-D"] + (["-i"] if name == "slurmctld" else [])
        with open(log, "ab") as out:
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self._started[name] = proc.pid
        self._procs.append(proc)

    def _wait(self, predicate, seconds: float, message: str) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if predicate():
                return
            dead = [p.args[0] for p in self._procs if p.poll() is not None]
            if dead:
                raise ClusterUnavailable(f"{', '.join(dead)} exited: {message}\n{self.logs()}")
            time.sleep(0.2)
        raise ClusterUnavailable(message)

    def node_state(self) -> str:
        proc = subprocess.run(["sinfo", "-h", "-n", self.node, "-o", "%T"], capture_output=True, text=True)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    def start(self) -> "SlurmCluster":
        reason = missing_requirements()
        if reason:
            raise ClusterUnavailable(reason)
        self._procs: list[subprocess.Popen] = []
        for sub in ("ctld", "spool", "log"):
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True)
        self._write_config()
        try:
            self._start_munged()
            self._start_daemon("slurmctld")
            self._wait(lambda: subprocess.run(["scontrol", "ping"], capture_output=True, text=True).stdout.count("UP") > 0,
                       30, "slurmctld did not answer scontrol ping")
            self._start_daemon("slurmd")
            self._wait(lambda: self.node_state() in ("idle", "mixed", "allocated"), 60,
                       f"node {self.node} did not become idle: {self.node_state()!r}\n{self.logs()}")
        except BaseException:
            self.stop()
            raise
        return self

    def logs(self, tail: int = 40) -> str:
        out = []
        for path in sorted(self.log_dir.glob("*")):
            lines = path.read_text(errors="replace").splitlines()[-tail:]
            out.append(f"== {path.name}\n" + "\n".join(lines))
        return "\n".join(out)

    def stop(self) -> None:
        """Cancel leftover jobs, stop the daemons this object started, restore /etc/slurm."""
        if "slurmctld" in self._started:
            # Let slurmd end the jobs' step daemons before the daemons go.
            subprocess.run(["scancel", "--full", "--partition", PARTITION], capture_output=True)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and subprocess.run(
                    ["squeue", "-h", "-t", "PENDING,RUNNING,COMPLETING"], capture_output=True, text=True).stdout.strip():
                time.sleep(0.5)
        for name in DAEMONS:
            pid = self._started.pop(name, None)
            if pid is None:
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        for proc in getattr(self, "_procs", []):
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self._restore_config()

    def __enter__(self) -> "SlurmCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child of ours counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("up", "down"):
        sys.exit("usage: python tests/slurm_cluster.py up|down STATE_DIR")
    cluster = SlurmCluster(Path(sys.argv[2]))
    if sys.argv[1] == "up":
        cluster.start()
        print(f"cluster {cluster.name} up: node {cluster.node}, {cluster.cpus} CPUs, gpu:{cluster.gpus}; "
              f"stop with: python tests/slurm_cluster.py down {cluster.state_dir}")
    else:
        for name in ("slurmd", "slurmctld"):
            pidfile = cluster.state_dir / f"{name}.pid"
            if pidfile.exists():
                try:
                    os.kill(int(pidfile.read_text().split()[0]), signal.SIGTERM)
                except (ProcessLookupError, ValueError):
                    pass


# --- the embedded default run through the SLURM profile (shared by test_slurm.py and test_report.py) ------------
ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# The cell whose evaluation job is cancelled mid-run in the first pass (as a preempted job would be).
KILLED_CELL = ("reference-sft", "smollm2-135m", "humaneval", 1)
KILLED_RULE = "evaluate"


def ci_profile(dest: Path) -> Path:
    """profiles/slurm adapted to the test cluster: no Apptainer (not installable here), squeue polling
    (no slurmdbd), fast first status check, no retries (a cancelled job must fail the first pass)."""
    import yaml

    profile = yaml.safe_load((ROOT / "profiles" / "slurm" / "config.yaml").read_text())
    for key in ("software-deployment-method", "apptainer-args"):
        profile.pop(key)
    profile.update({
        "slurm-status-command": "squeue",
        "slurm-init-seconds-before-status-checks": 2,
        "max-status-checks-per-second": 1,
        "seconds-between-status-checks": 2,
        "latency-wait": 10,
        "retries": 0,
        "jobs": 4,
        # Only missing or older outputs trigger jobs: what the second pass redoes is then due to the
        # cancelled job alone, not to code edited in the checkout between the passes.
        "rerun-triggers": ["mtime"],
    })
    profile["default-resources"].update(mem_mb=2000, runtime=30)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return dest


def workflow_config(workdir: Path) -> Path:
    """The embedded default with the reduced limits of tests/test_workflow.py; agent runs and evaluations
    each ask SLURM for one GPU."""
    import yaml

    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    # Shorter generations than tests/test_workflow.py: the scores do not matter here, the jobs do.
    config["evaluation"]["per_benchmark"] = {"gsm8k": {"limit": 2, "max_tokens": 64},
                                             "humaneval": {"limit": 3, "max_tokens": 64}}
    config["agents"]["reference-sft"]["sft"].update(max_steps=3, max_examples=64, max_length=256)
    config["resources"] = {
        "agent": {"mem_mb": 3000, "threads": 1, "gpus": 1, "runtime_minutes": 20},
        "evaluate": {"mem_mb": 3000, "threads": 1, "gpus": 1, "runtime_minutes": 20},
        "judge": {"mem_mb": 2000, "threads": 1, "gpus": 0, "runtime_minutes": 10},
    }
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def snakemake_command(workdir: Path, profile: Path, *extra: str) -> list[str]:
    return [str(BIN / "snakemake"), "--profile", str(profile), "--snakefile", str(ROOT / "Snakefile"),
            "--directory", str(workdir), "--configfile", str(workdir / "config.yaml"), *extra]


def snakemake_env() -> dict[str, str]:
    # Jobs inherit this environment (sbatch --export=ALL): the pipeline's venv first on PATH.
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def all_jobs() -> dict[str, dict[str, str]]:
    """Every job slurmctld still holds (MinJobAge keeps finished ones), as {job id: scontrol fields}."""
    out = subprocess.run(["scontrol", "show", "job", "--oneliner", "--details"], capture_output=True,
                         text=True, check=True).stdout
    jobs = {}
    for line in out.splitlines():
        fields = {}
        for token in line.split():
            key, sep, value = token.partition("=")
            if sep and key not in fields:
                fields[key] = value
        if "JobId" in fields:
            jobs[fields["JobId"]] = {**fields, "_line": line}
    return jobs


def cell_comment(rule: str, cell: tuple) -> str:
    """The --comment the SLURM executor gives a rule's job (rule_<rule>_wildcards_<values joined by _>)."""
    return f"rule_{rule}_wildcards_" + "_".join(str(v) for v in cell)


def _cancel_when_running(comment: str, proc: subprocess.Popen, output: Path, min_seconds: float) -> dict:
    """Wait until the job with ``comment`` has run ``min_seconds``, then scancel it; what was seen."""
    while proc.poll() is None:
        out = subprocess.run(["squeue", "-h", "-t", "RUNNING", "-o", "%i|%k|%M"], capture_output=True,
                             text=True).stdout
        for line in out.splitlines():
            job_id, job_comment, elapsed = line.split("|")
            parts = [int(p) for p in elapsed.replace("-", ":").split(":")]
            seconds = sum(v * 60 ** i for i, v in enumerate(reversed(parts)))
            if job_comment == comment and seconds >= min_seconds:
                had_output = output.exists()
                subprocess.run(["scancel", job_id], check=True)
                return {"job_id": job_id, "seconds": seconds, "output_existed": had_output}
        time.sleep(0.5)
    return {}


def run_on_cluster(cluster: "SlurmCluster", workdir: Path, seed_model: Path | None) -> dict:
    """Two passes of the workflow through the CI variant of profiles/slurm: the first has the KILLED_RULE
    job of KILLED_CELL cancelled mid-run; the second finishes it. Returns what the tests check."""
    profile = ci_profile(workdir.parent / f"{workdir.name}-profile")
    workflow_config(workdir)
    if seed_model is not None:
        # The staged base model (built once per machine by the smollm2_dir fixture); staging itself is
        # covered by tests/test_workflow.py.
        target = workdir / "resources" / "models" / "smollm2-135m" / "base"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(seed_model, target)
    env = snakemake_env()
    agent, model, bench, seed = KILLED_CELL
    eval_json = workdir / "results" / "evals" / agent / model / bench / f"seed{seed}.json"
    started = time.monotonic()
    with open(workdir / "pass1.out", "w") as out:
        proc = subprocess.Popen(snakemake_command(workdir, profile), cwd=workdir, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
        try:
            killed = _cancel_when_running(cell_comment(KILLED_RULE, KILLED_CELL), proc, eval_json, 10)
            first_rc = proc.wait(timeout=900)
        finally:
            if proc.poll() is None:
                proc.kill()
    first_seconds = time.monotonic() - started
    jobs_after_first = all_jobs()
    finished = {p: p.stat().st_mtime_ns for p in (workdir / "results").rglob("*") if p.is_file()}
    started = time.monotonic()
    second = subprocess.run(snakemake_command(workdir, profile), cwd=workdir, env=env, capture_output=True,
                            text=True, timeout=900)
    (workdir / "pass2.out").write_text(second.stdout + second.stderr)
    jobs = all_jobs()
    # Evidence of what SLURM was asked for, kept next to the results.
    (workdir / "slurm_jobs.txt").write_text("\n".join(j["_line"] for j in jobs.values()) + "\n")
    return {
        "workdir": workdir, "profile": profile, "killed": killed,
        "first_rc": first_rc, "first_out": (workdir / "pass1.out").read_text(), "first_seconds": first_seconds,
        "second": second, "second_seconds": time.monotonic() - started,
        "finished_after_first": finished, "jobs_after_first": jobs_after_first, "jobs": jobs,
    }

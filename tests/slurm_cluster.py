"""A real SLURM cluster on this host, shaped like a university's, from Debian's packages, for the HPC tests.

``SlurmCluster(state_dir, gpus=1)`` writes ``/etc/slurm/{slurm,gres,cgroup,slurmdbd}.conf`` (the
executor's job step strips ``SLURM_CONF``, so the config must be at the default path) and starts munged
(when none is running), MariaDB (a private data directory under ``state_dir``), slurmdbd, slurmctld and
slurmd, then waits for the node to be idle. Like a university cluster it has:

* two partitions, ``cpu`` (the default) and ``gpu``. One host runs one slurmd (Debian's build cannot run
  several), so one node is in both partitions;
* typed GPUs, ``gres gpu:h100:N``. They are fake: ``gres.conf`` maps each to a device file such as
  ``/dev/null`` (SLURM rejects count-only GPUs), enough for jobs to be scheduled and accounted as GPU jobs;
* accounting through slurmdbd, with associations, limits and QOS enforced: root (the only user) may submit
  to the lab account ``ptb-lab`` and to the administrative account ``root`` (its default, so a bare
  ``sbatch`` still runs); any other account, or a user without an association, is rejected at submission.
  ``sacct`` lists every job with its AllocTRES, ``gres/gpu:h100`` included.

``accounting=False`` leaves slurmdbd and MariaDB out: ``sacct`` then fails as on a site without
accounting, nothing is enforced, and finished jobs stay visible to ``scontrol``/``squeue`` (MinJobAge).

Run as a script to bring a cluster up by hand: ``python tests/slurm_cluster.py up|down STATE_DIR``
(``down`` stops what ``up`` started, from ``STATE_DIR/cluster.json``, and restores /etc/slurm).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ETC = Path("/etc/slurm")
CONF_FILES = ("slurm.conf", "gres.conf", "cgroup.conf", "slurmdbd.conf")
# Stop order: compute node first, the database last, munged (their authentication) after all.
DAEMONS = ("slurmd", "slurmctld", "slurmdbd", "mariadbd", "munged")
CPU_PARTITION = "cpu"
GPU_PARTITION = "gpu"
PARTITION = GPU_PARTITION  # the partition GPU jobs run in (kept for callers of the single-partition cluster)
GPU_TYPE = "h100"
ACCOUNT = "ptb-lab"
FAKE_GPU_FILES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/urandom")
# Fixed ports (hence one cluster per host): slurmctld, slurmd, slurmdbd, MariaDB.
CTLD_PORT, SLURMD_PORT, DBD_PORT, DB_PORT = 16817, 16818, 16819, 16306
STATE_FILE = "cluster.json"

SLURM_TOOLS = ("slurmctld", "slurmd", "munged", "sbatch", "scontrol", "squeue", "scancel", "sinfo")
ACCOUNTING_TOOLS = ("slurmdbd", "sacctmgr", "sacct", "mariadbd", "mariadb-install-db", "mariadb")


class ClusterUnavailable(RuntimeError):
    """What is missing to run a cluster here (not root, a package not installed)."""


def _binary(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def missing_requirements(accounting: bool = True) -> str | None:
    """None when a cluster can be started here, else why not (for a skip reason)."""
    if os.geteuid() != 0:
        return "the SLURM test cluster needs root (slurmd runs jobs as their submitting user)"
    tools = SLURM_TOOLS + (ACCOUNTING_TOOLS if accounting else ())
    missing = [tool for tool in tools if not Path(_binary(tool)).exists()]
    if missing:
        return (f"Debian packages slurmctld, slurmd, slurm-client, munge{', slurmdbd, mariadb-server' if accounting else ''}"
                f" are needed (missing: {', '.join(missing)}); `make system` installs them as root")
    return None


def _memory_mb() -> int:
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    raise ClusterUnavailable("cannot read MemTotal from /proc/meminfo")


class SlurmCluster:
    """One controller + one compute node on this host; ``start()``/``stop()`` or a ``with`` block."""

    def __init__(self, state_dir: Path, gpus: int = 1, name: str = "ptbtest", *, accounting: bool = True,
                 account: str = ACCOUNT, gpu_type: str = GPU_TYPE, cpus: int | None = None):
        self.state_dir = Path(state_dir).resolve()
        self.gpus = gpus
        self.name = name
        self.accounting = accounting
        self.account = account
        self.gpu_type = gpu_type
        self.node = socket.gethostname().split(".")[0]
        # More CPUs than this small host has (slurmd takes the declared count, SlurmdParameters=
        # config_overrides), as on a cluster node: short CPU jobs need not wait for the 2-CPU agent runs.
        self.cpus = cpus or max(os.cpu_count() or 1, 8)
        # Leave room for the daemons and the submitting workflow.
        self.memory_mb = int(_memory_mb() * 0.8)
        self._db_password = secrets.token_hex(12)
        self._started: dict[str, int] = {}
        self._saved_conf: dict[str, str | None] = {}
        self._procs: list[subprocess.Popen] = []

    # -- configuration --------------------------------------------------------------------------------------
    @property
    def log_dir(self) -> Path:
        return self.state_dir / "log"

    @property
    def partitions(self) -> tuple[str, str]:
        return CPU_PARTITION, GPU_PARTITION

    def slurm_conf(self) -> str:
        d = self.state_dir
        if self.accounting:
            accounting = [
                "AccountingStorageType=accounting_storage/slurmdbd",
                f"AccountingStorageHost={self.node}",
                f"AccountingStoragePort={DBD_PORT}",
                # As a university cluster: jobs need a valid account association; limits and QOS apply.
                "AccountingStorageEnforce=associations,limits,qos",
                # GPUs are billed per type: sacct's AllocTRES carries gres/gpu and gres/gpu:<type>.
                f"AccountingStorageTRES=gres/gpu,gres/gpu:{self.gpu_type}",
                # Reads /proc: needs no cgroup hierarchy.
                "JobAcctGatherType=jobacct_gather/linux",
                "JobAcctGatherFrequency=30",
            ]
        else:
            accounting = ["AccountingStorageType=accounting_storage/none", "JobAcctGatherType=jobacct_gather/none"]
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
            f"SlurmctldPort={CTLD_PORT}",
            f"SlurmdPort={SLURMD_PORT}",
            # No cgroup hierarchy is delegated to us: track processes by parent id, no task binding.
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            *accounting,
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            "GresTypes=gpu",
            "SlurmdParameters=config_overrides",
            "MpiDefault=none",
            "MailProg=/bin/true",
            "SchedulerType=sched/backfill",
            "SchedulerParameters=sched_interval=2",
            "ReturnToService=2",
            # Finished jobs stay in squeue's and scontrol's view (the fallback after sacct) for an hour.
            "MinJobAge=3600",
            "KillWait=5",
            "InactiveLimit=0",
            "SlurmdTimeout=60",
            f"NodeName={self.node} CPUs={self.cpus} RealMemory={self.memory_mb} "
            f"Gres=gpu:{self.gpu_type}:{self.gpus} State=UNKNOWN",
            f"PartitionName={CPU_PARTITION} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP",
            f"PartitionName={GPU_PARTITION} Nodes={self.node} MaxTime=INFINITE State=UP",
            "",
        ])

    def gres_conf(self) -> str:
        # One line per fake device: SLURM needs a distinct device File per GPU (count-only is rejected).
        if self.gpus > len(FAKE_GPU_FILES):
            raise ValueError(f"at most {len(FAKE_GPU_FILES)} fake GPUs")
        return "".join(f"NodeName={self.node} Name=gpu Type={self.gpu_type} File={f}\n"
                       for f in FAKE_GPU_FILES[:self.gpus])

    @staticmethod
    def cgroup_conf() -> str:
        return "CgroupAutomount=no\nConstrainCores=no\nConstrainRAMSpace=no\nConstrainDevices=no\n"

    def slurmdbd_conf(self) -> str:
        return "\n".join([
            "AuthType=auth/munge",
            f"DbdHost={self.node}",
            f"DbdPort={DBD_PORT}",
            "SlurmUser=root",
            f"PidFile={self.state_dir}/slurmdbd.pid",
            f"LogFile={self.log_dir}/slurmdbd.log",
            "StorageType=accounting_storage/mysql",
            "StorageHost=127.0.0.1",
            f"StoragePort={DB_PORT}",
            "StorageUser=slurm",
            f"StoragePass={self._db_password}",
            "StorageLoc=slurm_acct_db",
            "",
        ])

    def mariadb_conf(self) -> str:
        d = self.state_dir / "mariadb"
        # Small, unsynced InnoDB: a throwaway database that must start in seconds.
        return "\n".join([
            "[mysqld]", f"datadir={d}/data", f"socket={d}/mysqld.sock", f"pid-file={d}/mariadbd.pid",
            f"port={DB_PORT}", "bind-address=127.0.0.1", "user=root", "skip-name-resolve", "skip-log-bin",
            "innodb_buffer_pool_size=128M", "innodb_log_file_size=16M", "innodb_flush_log_at_trx_commit=0",
            "innodb_doublewrite=0", f"log-error={self.log_dir}/mariadbd.log", "",
        ])

    def _write_config(self) -> None:
        ETC.mkdir(parents=True, exist_ok=True)
        texts = {"slurm.conf": self.slurm_conf(), "gres.conf": self.gres_conf(), "cgroup.conf": self.cgroup_conf()}
        if self.accounting:
            texts["slurmdbd.conf"] = self.slurmdbd_conf()
        for name in CONF_FILES:
            path = ETC / name
            self._saved_conf[name] = path.read_text() if path.exists() else None
        self._save_state()  # before anything is overwritten: `down` restores from it
        for name in CONF_FILES:
            path = ETC / name
            if name in texts:
                path.write_text(texts[name])
                if name == "slurmdbd.conf":  # slurmdbd refuses a config others can read (it holds a password)
                    path.chmod(0o600)
            else:
                path.unlink(missing_ok=True)  # an earlier cluster's slurmdbd.conf must not be read

    def _restore_config(self) -> None:
        for name, previous in self._saved_conf.items():
            path = ETC / name
            if previous is None:
                path.unlink(missing_ok=True)
            else:
                path.write_text(previous)
        self._saved_conf.clear()

    def _save_state(self) -> None:
        """Daemons and saved /etc/slurm files in STATE_DIR/cluster.json, for ``down`` from another process."""
        state = {"pids": self._started, "saved_conf": self._saved_conf}
        tmp = self.state_dir / f".{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.state_dir / STATE_FILE)

    def _load_state(self) -> None:
        try:
            state = json.loads((self.state_dir / STATE_FILE).read_text())
        except (OSError, ValueError):
            return
        self._started = {k: int(v) for k, v in state.get("pids", {}).items()}
        self._saved_conf = state.get("saved_conf", {})

    # -- daemons --------------------------------------------------------------------------------------------
    def _munge_running(self) -> bool:
        return subprocess.run(["munge", "-n"], capture_output=True).returncode == 0 if shutil.which("munge") else False

    def _spawn(self, name: str, args: list[str]) -> None:
        # In the foreground, as our child: stopping it then reaps it; its own session, so a test's
        # Ctrl-C does not reach it before stop() runs.
        with open(self.log_dir / f"{name}.out", "ab") as out:
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self._started[name] = proc.pid
        self._procs.append(proc)
        self._save_state()

    def _start_munged(self) -> None:
        if self._munge_running():
            return
        key = Path("/etc/munge/munge.key")
        if not key.exists():
            subprocess.run(["mungekey", "--create", "--keyfile", str(key)], check=True, capture_output=True)
        for folder in ("/run/munge", "/var/log/munge", "/var/lib/munge"):
            Path(folder).mkdir(parents=True, exist_ok=True)
        self._spawn("munged", [_binary("munged"), "--foreground", "--force"])
        self._wait(self._munge_running, 10, "munged did not start")

    def _sql(self, statements: str) -> subprocess.CompletedProcess:
        sock = self.state_dir / "mariadb" / "mysqld.sock"
        return subprocess.run([_binary("mariadb"), "--no-defaults", "-S", str(sock), "-u", "root", "-e", statements],
                              capture_output=True, text=True)

    def _start_mariadb(self) -> None:
        folder = self.state_dir / "mariadb"
        shutil.rmtree(folder, ignore_errors=True)  # a fresh database each start, as slurmctld's -i
        folder.mkdir(parents=True)
        conf = folder / "my.cnf"
        conf.write_text(self.mariadb_conf())
        install = subprocess.run([_binary("mariadb-install-db"), f"--defaults-file={conf}", "--skip-test-db",
                                  "--auth-root-authentication-method=socket"], capture_output=True, text=True)
        if install.returncode != 0:
            raise ClusterUnavailable(f"mariadb-install-db failed: {(install.stdout + install.stderr)[-2000:]}")
        self._spawn("mariadbd", [_binary("mariadbd"), f"--defaults-file={conf}"])
        self._wait(lambda: self._sql("SELECT 1").returncode == 0, 30, "MariaDB did not accept connections")
        # slurmdbd connects over TCP with its own user, as at a site.
        created = self._sql(
            "CREATE DATABASE slurm_acct_db; "
            f"CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY '{self._db_password}'; "
            "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';")
        if created.returncode != 0:
            raise ClusterUnavailable(f"MariaDB: cannot create the accounting database: {created.stderr.strip()}")

    def sacctmgr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(["sacctmgr", "-i", *args], capture_output=True, text=True)
        if check and proc.returncode != 0:
            raise ClusterUnavailable(f"sacctmgr {' '.join(args)}: {(proc.stdout + proc.stderr).strip()}")
        return proc

    def _start_accounting(self) -> None:
        self._start_mariadb()
        self._spawn("slurmdbd", [_binary("slurmdbd"), "-D"])
        self._wait(lambda: subprocess.run(["sacctmgr", "-n", "-P", "show", "cluster"],
                                          capture_output=True).returncode == 0,
                   60, "slurmdbd did not answer sacctmgr")
        # Before slurmctld starts, so it registers with the cluster and loads the associations at once.
        # `add cluster` also gives root an association in the administrative account root.
        self.sacctmgr("add", "cluster", self.name)
        self.sacctmgr("add", "account", self.account, f"Cluster={self.name}", "Description=the test lab",
                      "Organization=ptb")
        self.sacctmgr("add", "user", "root", f"Account={self.account}", f"Cluster={self.name}")

    def _start_daemon(self, name: str) -> None:
        # -D: stay in the foreground, so the pid is ours; -i: ignore state from an earlier cluster.
        self._spawn(name, [_binary(name), "-D"] + (["-i"] if name == "slurmctld" else []))

    def _wait(self, predicate, seconds: float, message: str) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if predicate():
                return
            dead = [p.args[0] for p in self._procs if p.poll() is not None]
            if dead:
                raise ClusterUnavailable(f"{', '.join(dead)} exited: {message}\n{self.logs()}")
            time.sleep(0.2)
        raise ClusterUnavailable(f"{message}\n{self.logs()}")

    def node_state(self) -> str:
        proc = subprocess.run(["sinfo", "-h", "-N", "-n", self.node, "-p", CPU_PARTITION, "-o", "%T"],
                              capture_output=True, text=True)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    def start(self) -> "SlurmCluster":
        reason = missing_requirements(self.accounting)
        if reason:
            raise ClusterUnavailable(reason)
        started = time.monotonic()
        self._procs = []
        for sub in ("ctld", "spool", "log"):
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True)
        self._write_config()
        try:
            self._start_munged()
            if self.accounting:
                self._start_accounting()
            self._start_daemon("slurmctld")
            self._wait(lambda: "UP" in subprocess.run(["scontrol", "ping"], capture_output=True, text=True).stdout,
                       30, "slurmctld did not answer scontrol ping")
            self._start_daemon("slurmd")
            self._wait(lambda: self.node_state() in ("idle", "mixed", "allocated"), 60,
                       f"node {self.node} did not become idle: {self.node_state()!r}")
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def logs(self, tail: int = 40) -> str:
        out = []
        for path in sorted(self.log_dir.glob("*")):
            lines = path.read_text(errors="replace").splitlines()[-tail:]
            out.append(f"== {path.name}\n" + "\n".join(lines))
        return "\n".join(out)

    def stop(self) -> None:
        """Cancel leftover jobs, stop the daemons this cluster started, restore /etc/slurm. A cluster
        object made afresh for the same state directory stops what ``up`` started there."""
        if not self._started:
            self._load_state()
        if "slurmctld" in self._started and _alive(self._started["slurmctld"]):
            # Let slurmd end the jobs' step daemons before the daemons go.
            jobs = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout.split()
            if jobs:
                subprocess.run(["scancel", "--full", *jobs], capture_output=True)
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
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        for proc in self._procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self._procs = []
        self._restore_config()
        (self.state_dir / STATE_FILE).unlink(missing_ok=True)

    def __enter__(self) -> "SlurmCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (a child of ours, or an orphan nobody reaps in a container) counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def site_env(cluster: SlurmCluster | None = None) -> dict[str, str]:
    """The site settings (docs/hpc.md, Site settings) for this cluster, as PTB_SLURM_* variables."""
    return {"PTB_SLURM_ACCOUNT": cluster.account if cluster else ACCOUNT,
            "PTB_SLURM_CPU_PARTITION": CPU_PARTITION, "PTB_SLURM_GPU_PARTITION": GPU_PARTITION,
            "PTB_SLURM_GPU_MODEL": cluster.gpu_type if cluster else GPU_TYPE}


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("up", "down"):
        sys.exit("usage: python tests/slurm_cluster.py up|down STATE_DIR")
    cluster = SlurmCluster(Path(sys.argv[2]))
    if sys.argv[1] == "up":
        cluster.start()
        print(f"cluster {cluster.name} up in {cluster.startup_seconds:.0f} s: node {cluster.node}, {cluster.cpus} CPUs, "
              f"gpu:{cluster.gpu_type}:{cluster.gpus}, partitions {CPU_PARTITION} (default) and {GPU_PARTITION}, "
              f"account {cluster.account}; stop with: python tests/slurm_cluster.py down {cluster.state_dir}")
    else:
        cluster.stop()


# --- the embedded default run through the SLURM profile (shared by test_slurm.py and test_report.py) ------------
ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# The cell whose evaluation job is cancelled mid-run in the first pass (as a preempted job would be).
KILLED_CELL = ("reference-sft", "smollm2-135m", "humaneval", 1)
KILLED_RULE = "evaluate"


def ci_profile(dest: Path, accounting: bool = True) -> Path:
    """profiles/slurm adapted to the test cluster: no Apptainer (not installable here), squeue polling,
    fast status checks, no retries (a cancelled job must fail the first pass).

    squeue even with accounting: sacct reports a job cancelled with scancel as "CANCELLED by <uid>",
    which snakemake-executor-plugin-slurm 2.8.0 does not take for a failure, so it waits on it forever
    (squeue says "CANCELLED"). ``accounting`` (whether the cluster has slurmdbd) changes nothing for now."""
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
    each ask SLURM for one GPU and two CPUs (a count unlike the CPU rules' one, so the tests see it pass)."""
    import yaml

    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    # Shorter generations than tests/test_workflow.py: the scores do not matter here, the jobs do.
    config["evaluation"]["per_benchmark"] = {"gsm8k": {"limit": 2, "max_tokens": 64},
                                             "humaneval": {"limit": 3, "max_tokens": 64}}
    config["agents"]["reference-sft"]["sft"].update(max_steps=3, max_examples=64, max_length=256)
    config["resources"] = {
        "agent": {"mem_mb": 3000, "threads": 2, "gpus": 1, "runtime_minutes": 20},
        "evaluate": {"mem_mb": 3000, "threads": 2, "gpus": 1, "runtime_minutes": 20},
        "judge": {"mem_mb": 2000, "threads": 1, "gpus": 0, "runtime_minutes": 10},
    }
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def snakemake_command(workdir: Path, profile: Path, *extra: str) -> list[str]:
    return [str(BIN / "snakemake"), "--profile", str(profile), "--snakefile", str(ROOT / "Snakefile"),
            "--directory", str(workdir), "--configfile", str(workdir / "config.yaml"), *extra]


def snakemake_env(cluster: SlurmCluster | None = None) -> dict[str, str]:
    """The workflow's environment on the test cluster: the site settings from PTB_SLURM_* variables (as a
    site would set them; the caller's own are dropped) and the pipeline's venv first on PATH (jobs
    inherit it: sbatch --export=ALL)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PTB_SLURM_")}
    return {**env, **site_env(cluster), "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
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


SACCT_FIELDS = ("JobIDRaw", "Account", "Partition", "NCPUS", "AllocTRES", "Timelimit", "State", "ElapsedRaw")


def sacct_jobs(job_ids: list[str] | None = None, wait_for_end: float = 30) -> dict[str, dict[str, str]]:
    """slurmdbd's record of each job (all of this cluster's when ``job_ids`` is None), as {job id: fields};
    waits up to ``wait_for_end`` seconds for slurmctld to have sent the end of every listed job."""
    argv = ["sacct", "-X", "-n", "-P", "-a", "-S", "2000-01-01", "-o", ",".join(SACCT_FIELDS)]
    if job_ids:
        argv += ["-j", ",".join(job_ids)]
    deadline = time.monotonic() + wait_for_end
    while True:
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        jobs = {}
        for line in out.splitlines():
            fields = dict(zip(SACCT_FIELDS, line.split("|")))
            jobs[fields["JobIDRaw"]] = fields
        pending = [j for j in jobs.values() if j["State"] in ("PENDING", "RUNNING", "REQUEUED")]
        if (not pending and set(job_ids or ()) <= set(jobs)) or time.monotonic() > deadline:
            return jobs
        time.sleep(1)


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
    env = snakemake_env(cluster)
    # Only the environment's settings: a developer's profiles/slurm/site.yaml must not leak in.
    no_site = workdir.parent / f"{workdir.name}-no-site.yaml"
    no_site.write_text("")
    env["PTB_SLURM_SITE_FILE"] = str(no_site)
    agent, model, bench, seed = KILLED_CELL
    eval_json = workdir / "results" / "evals" / agent / model / bench / f"seed{seed}.json"
    started = time.monotonic()
    with open(workdir / "pass1.out", "w") as out:
        proc = subprocess.Popen(snakemake_command(workdir, profile), cwd=workdir, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
        try:
            killed = _cancel_when_running(cell_comment(KILLED_RULE, KILLED_CELL), proc, eval_json, 10)
            first_rc = proc.wait(timeout=1200)
        finally:
            if proc.poll() is None:
                proc.kill()
    first_seconds = time.monotonic() - started
    jobs_after_first = all_jobs()
    finished = {p: p.stat().st_mtime_ns for p in (workdir / "results").rglob("*") if p.is_file()}
    started = time.monotonic()
    second = subprocess.run(snakemake_command(workdir, profile), cwd=workdir, env=env, capture_output=True,
                            text=True, timeout=1200)
    (workdir / "pass2.out").write_text(second.stdout + second.stderr)
    jobs = all_jobs()
    # Evidence of what SLURM was asked for, kept next to the results.
    (workdir / "slurm_jobs.txt").write_text("\n".join(j["_line"] for j in jobs.values()) + "\n")
    return {
        "workdir": workdir, "profile": profile, "killed": killed, "site": site_env(cluster),
        "first_rc": first_rc, "first_out": (workdir / "pass1.out").read_text(), "first_seconds": first_seconds,
        "second": second, "second_seconds": time.monotonic() - started,
        "finished_after_first": finished, "jobs_after_first": jobs_after_first, "jobs": jobs,
    }

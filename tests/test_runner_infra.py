"""Infrastructure faults fail the run job; only what the agent did becomes its outcome.

A sandbox that cannot start, an agent command that cannot be executed in it, a missing agent image or an
egress gateway that does not start raise InfrastructureError from the real ``run_cell`` (in a real
bubblewrap sandbox) and leave no run.json; an agent that ran and exited 1 is recorded as before.
"""

from __future__ import annotations

import json
import os
import runpy
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from posttrainbench.agents import sandbox as sandbox_mod
from posttrainbench.agents.runner import run_cell
from posttrainbench.agents.sandbox import ApptainerSandbox, InfrastructureError, SandboxError, check_image
from posttrainbench.cells import Cell
from posttrainbench.config import ConfigError, load_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
CELL = Cell("infra", "tiny", "gsm8k", 1)
needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None,
                                 reason="bubblewrap (bwrap) is not installed (envs/debian-packages.txt)")


@pytest.fixture
def tmp_path():
    """Outside /tmp (the sandbox has a private /tmp)."""
    path = Path(tempfile.mkdtemp(prefix="ptb-infra-test-", dir="/var/tmp"))
    yield path
    subprocess.run(["rm", "-rf", str(path)], check=False)


def base_model(tmp_path: Path) -> Path:
    base = tmp_path / "base"
    base.mkdir(exist_ok=True)
    (base / "config.json").write_text("{}")
    return base


def run(tmp_path: Path, command: list[str], *, network: str = "none", files: list[str] = (), gpus: int = 0,
        sandbox: dict | None = None) -> tuple[dict, Path]:
    run_dir = tmp_path / "runs" / "cell"
    record = run_cell(CELL, {"type": "command", "command": command, "files": list(files)}, run_dir=run_dir,
                      base_dir=base_model(tmp_path), instruct_dir=None, train_data=None,
                      budget={"hours": 0.02, "gpus": gpus, "grace_seconds": 1, "max_checkpoint_gb": 1},
                      threads=1, config={"test": True},
                      sandbox_config={"backend": "bubblewrap", "network": network, **(sandbox or {})})
    return record, run_dir


def trace_types(run_dir: Path) -> list[str]:
    return [json.loads(line)["type"] for line in (run_dir / "trace.jsonl").read_text().splitlines()]


def break_bwrap_setup(monkeypatch):
    """bwrap itself fails while setting the sandbox up: a bind of a source that does not exist."""
    argv_of = sandbox_mod.BubblewrapSandbox._argv

    def broken(self, *args, **kwargs):
        argv, env = argv_of(self, *args, **kwargs)
        at = argv.index("--remount-ro")
        return argv[:at] + ["--ro-bind", "/nonexistent/ptb-infra-source", "/ptb-missing"] + argv[at:], env

    monkeypatch.setattr(sandbox_mod.BubblewrapSandbox, "_argv", broken)


@needs_bwrap
@pytest.mark.parametrize("network", ["none", "open"])
def test_a_sandbox_that_fails_to_set_up_fails_the_job_without_a_record(tmp_path, monkeypatch, network):
    if network == "open" and shutil.which("slirp4netns") is None:
        pytest.skip("slirp4netns is not installed")
    break_bwrap_setup(monkeypatch)
    with pytest.raises(InfrastructureError, match="bubblewrap sandbox did not"):
        run(tmp_path, ["true"], network=network)
    assert not (tmp_path / "runs" / "cell" / "run.json").exists()


@needs_bwrap
def test_a_sandbox_whose_launcher_never_runs_is_infrastructure(tmp_path, monkeypatch):
    """bwrap sets the sandbox up but cannot exec the start launcher: no start marker, so the agent never ran."""
    monkeypatch.setattr(sandbox_mod.BubblewrapSandbox, "python", "/nonexistent/python3", raising=False)
    with pytest.raises(InfrastructureError, match=r"sandbox did not start \(exit code 1\).*execvp /nonexistent/python3"):
        run(tmp_path, ["true"])
    assert not (tmp_path / "runs" / "cell" / "run.json").exists()
    assert "infrastructure_error" in trace_types(tmp_path / "runs" / "cell")


@needs_bwrap
def test_a_missing_sandbox_binary_is_infrastructure(tmp_path, monkeypatch):
    monkeypatch.setattr(sandbox_mod.BubblewrapSandbox, "available", lambda self: True)
    monkeypatch.setattr(sandbox_mod, "USERNS_LAUNCHER", Path("/nonexistent/userns_exec.py"))
    with pytest.raises(InfrastructureError, match="sandbox did not"):
        run(tmp_path, ["true"])
    assert not (tmp_path / "runs" / "cell" / "run.json").exists()


@needs_bwrap
@pytest.mark.parametrize("command", ["/nonexistent/agent-cli", "ptb-no-such-agent-cli"])
def test_an_agent_command_that_does_not_exist_is_infrastructure(tmp_path, command):
    with pytest.raises(InfrastructureError, match=f"agent's command could not be started in the bubblewrap "
                                                  f"sandbox: {command}: No such file or directory"):
        run(tmp_path, [command, "--flag"])
    assert not (tmp_path / "runs" / "cell" / "run.json").exists()


@needs_bwrap
def test_an_agent_that_is_not_executable_is_infrastructure(tmp_path):
    script = tmp_path / "agent.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o644)
    with pytest.raises(InfrastructureError, match="agent.sh: Permission denied"):
        run(tmp_path, ["./agent.sh"], files=[str(script)])


@needs_bwrap
def test_an_agent_that_ran_and_failed_is_its_outcome(tmp_path):
    script = tmp_path / "agent.py"
    # It also forges what the start launcher would report: the descriptor is not its to write.
    script.write_text("import glob, os, sys\nfor fd in range(3, 64):\n    try: os.write(fd, b'Eforged')\n"
                      "    except OSError: pass\nfor path in glob.glob('/proc/*/fd/*'):\n"
                      "    try: fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK); os.write(fd, b'Eforged')\n"
                      "    except OSError: pass\nprint('giving up', file=sys.stderr)\nsys.exit(1)\n")
    record, run_dir = run(tmp_path, [sys.executable, "agent.py"], files=[str(script)])
    assert record["status"] == "error" and record["exit_code"] == 1
    assert json.loads((run_dir / "run.json").read_text())["status"] == "error"
    assert "infrastructure_error" not in trace_types(run_dir)


@needs_bwrap
def test_an_agent_killed_by_a_signal_is_its_outcome(tmp_path):
    record, _ = run(tmp_path, ["sh", "-c", "kill -KILL $$"])
    assert record["status"] == "error" and record["exit_code"] in (-9, 137)  # bwrap reports 128 + signal


@needs_bwrap
def test_an_egress_gateway_that_does_not_start_is_infrastructure(tmp_path, monkeypatch):
    from posttrainbench.agents import egress

    def refuse(self):
        raise OSError(98, "Address already in use")

    monkeypatch.setattr(egress.EgressGateway, "start", refuse)
    with pytest.raises(InfrastructureError, match="egress gateway did not start: OSError"):
        run(tmp_path, ["true"], network="proxy")
    assert not (tmp_path / "runs" / "cell" / "run.json").exists()


@needs_bwrap
@pytest.mark.parametrize("backend", ["bubblewrap", "auto"])
def test_bubblewrap_with_gpus_needs_the_opt_in_at_run_time(tmp_path, backend):
    with pytest.raises(SandboxError, match="allow_bubblewrap_with_gpus"):
        run(tmp_path, ["true"], gpus=1, sandbox={"backend": backend})
    record, _ = run(tmp_path, ["true"], gpus=1, sandbox={"backend": backend, "allow_bubblewrap_with_gpus": True})
    assert record["exit_code"] == 0


def test_a_missing_image_is_infrastructure_and_relative_to_the_workflow_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    box = ApptainerSandbox(image="containers/agent.sif")
    assert box.image == str(tmp_path / "containers" / "agent.sif")  # not the agent's workspace
    with pytest.raises(SandboxError, match=r"'sandbox.image' names .*containers/agent.sif, which does not exist"):
        check_image(box.image)
    assert issubclass(SandboxError, InfrastructureError)
    (tmp_path / "containers").mkdir()
    (tmp_path / "containers" / "agent.sif").write_bytes(b"SIF")
    check_image(box.image)


def test_the_run_job_fails_in_one_line_and_writes_no_record(tmp_path, monkeypatch):
    """scripts/run_agent.py: an infrastructure fault exits non-zero with its reason in the job's log."""
    monkeypatch.setattr(sandbox_mod.BubblewrapSandbox, "python", "/nonexistent/python3", raising=False)
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap (bwrap) is not installed")
    log = tmp_path / "logs" / "run_agent.log"
    base = base_model(tmp_path)

    class Files(dict):
        __getattr__ = dict.__getitem__

    job = SimpleNamespace(
        wildcards=SimpleNamespace(agent="infra", model="tiny", benchmark="gsm8k", seed="1"),
        input=Files(base_model=str(base)), output=Files(run=str(tmp_path / "runs" / "cell" / "run.json")),
        log=[str(log)], rule="run_agent", threads=1, config={"test": True},
        params=SimpleNamespace(spec={"type": "command", "command": ["true"]},
                               budget={"hours": 0.02, "gpus": 0, "grace_seconds": 1},
                               sandbox={"backend": "bubblewrap", "network": "none"}))
    with pytest.raises(SystemExit) as exited:
        runpy.run_path(str(ROOT / "scripts" / "run_agent.py"), init_globals={"snakemake": job})
    assert exited.value.code == 1
    errors = [line for line in log.read_text().splitlines() if " ERROR " in line]
    assert errors and "infrastructure failure, no run record written: the bubblewrap sandbox did not start" in errors[0]
    assert "Traceback" not in log.read_text()
    assert not (tmp_path / "runs" / "cell" / "run.json").exists()


# ---- configuration ----------------------------------------------------------------------------------------

def default_config() -> dict:
    import yaml

    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def test_apptainer_needs_an_image_in_the_config():
    config = default_config()
    config["sandbox"] = {"backend": "apptainer"}
    with pytest.raises(ConfigError, match="config key 'sandbox.image' is required with sandbox.backend apptainer"):
        validate_config(config)


def test_bubblewrap_with_gpus_needs_an_opt_in():
    """Explicit bubblewrap is refused here; auto is refused by the agent job where it resolves to bubblewrap."""
    config = default_config()
    config["budget"]["gpus"] = 1
    config["sandbox"] = {"backend": "bubblewrap"}
    with pytest.raises(ConfigError, match="sandbox.allow_bubblewrap_with_gpus") as error:
        validate_config(config)
    assert "\n" not in str(error.value)
    config["sandbox"]["allow_bubblewrap_with_gpus"] = True
    validate_config(config)
    config["sandbox"] = {"backend": "auto"}
    validate_config(config)


def test_the_published_config_runs_agents_in_apptainer():
    config = load_config(ROOT / "config" / "posttrainbench.yaml")
    assert config["sandbox"]["backend"] == "apptainer" and config["sandbox"]["image"] == "containers/agent.sif"
    assert config["budget"]["gpus"] > 0

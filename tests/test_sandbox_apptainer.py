"""The Apptainer backend. Apptainer cannot be installed on this machine: the argv the backend builds
is checked against the documented CLI (``apptainer exec`` options), and the real run is skipped
when ``apptainer`` is absent."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import pytest

from posttrainbench.agents.sandbox import (ApptainerSandbox, BubblewrapSandbox, SandboxError, SandboxSpec,
                                           TraceWriter, get_sandbox)

IMAGE = "/images/agent.sif"


def build(tmp_path: Path, **spec_fields):
    ws = tmp_path / "ws"
    ws.mkdir(exist_ok=True)
    spec = SandboxSpec(workspace=ws, read_only=[tmp_path / "base"], private_dir=tmp_path / "private", **spec_fields)
    env = {"PTB_SEED": "1", "ANTHROPIC_API_KEY": "sk-agent-key", "PATH": "/usr/bin", "CUDA_VISIBLE_DEVICES": "0"}
    argv, host_env = ApptainerSandbox(image=IMAGE, executable="apptainer").wrap(["python3", "train.py"], spec, env)
    return argv, host_env, spec


def test_argv_isolates_binds_read_only_and_keeps_keys_off_the_command_line(tmp_path: Path):
    argv, host_env, spec = build(tmp_path, gpus=1, network="open")
    assert argv[:4] == ["apptainer", "exec", "--containall", "--cleanenv"]
    assert "--nv" in argv and "--net" not in argv
    ws = str(spec.workspace)
    assert argv[argv.index("--pwd") + 1] == ws
    binds = [argv[i + 1] for i, a in enumerate(argv) if a == "--bind"]
    assert f"{ws}:{ws}" in binds and f"{tmp_path / 'base'}:{tmp_path / 'base'}:ro" in binds
    assert argv[-3:] == [IMAGE, "python3", "train.py"]
    assert not any("sk-agent-key" in a for a in argv)
    env_file = Path(argv[argv.index("--env-file") + 1])
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    lines = env_file.read_text().splitlines()
    assert "ANTHROPIC_API_KEY='sk-agent-key'" in lines and not any(line.startswith("PATH=") for line in lines)
    assert "ANTHROPIC_API_KEY" not in host_env and host_env["CUDA_VISIBLE_DEVICES"] == "0"


def test_network_none_and_no_gpus(tmp_path: Path):
    argv, _, _ = build(tmp_path, gpus=0, network="none")
    assert "--nv" not in argv
    i = argv.index("--net")
    assert argv[i:i + 3] == ["--net", "--network", "none"]


def test_proxy_policy_runs_the_relay_first(tmp_path: Path):
    argv, _, _ = build(tmp_path, network="proxy", forwards=[("127.0.0.1", 8000)])
    tail = argv[argv.index(IMAGE) + 1:]
    assert tail[:2] == ["python3", "/ptb/tools/netrelay.py"]
    assert "127.0.0.1:8000=/ptb/egress/forward-8000.sock" in tail
    assert tail[tail.index("--") + 1:] == ["python3", "train.py"]
    env_text = (tmp_path / "private" / "agent.env").read_text()
    assert "HTTPS_PROXY='http://127.0.0.1:3128'" in env_text


def test_backend_selection_errors_are_one_line():
    with pytest.raises(SandboxError, match="sandbox.image"):
        ApptainerSandbox(image=None).wrap(["true"], SandboxSpec(workspace=Path("/x")), {})
    with pytest.raises(SandboxError, match="allowed values: auto, none, bubblewrap, apptainer"):
        get_sandbox("docker")
    if shutil.which("apptainer") is None and shutil.which("bwrap"):
        # auto falls back to bubblewrap where Apptainer is missing, even with an image configured
        assert isinstance(get_sandbox("auto", image=IMAGE), BubblewrapSandbox)


@pytest.mark.skipif(shutil.which("apptainer") is None, reason="apptainer is not installed on this machine")
def test_real_apptainer_run(tmp_path: Path):  # pragma: no cover - runs on clusters with Apptainer
    image = Path(__file__).resolve().parents[1] / "containers" / "agent.sif"
    if not image.is_file():
        pytest.skip(f"no agent image at {image} (apptainer build containers/agent.sif containers/agent.def)")
    ws = tmp_path / "ws"
    ws.mkdir()
    trace = TraceWriter(tmp_path / "trace.jsonl")
    outcome = ApptainerSandbox(image=str(image)).run(
        ["python3", "-c", "open('hello.txt','w').write('hi')"], workspace=ws, env={"PTB_SEED": "1"},
        timeout_seconds=120, grace_seconds=5, trace=trace,
        spec=SandboxSpec(workspace=ws, network="none", private_dir=tmp_path / "private"))
    trace.close()
    assert outcome.exit_code == 0 and (ws / "hello.txt").read_text() == "hi"


def test_apptainer_refuses_to_run_agents_as_root(tmp_path: Path):
    """Apptainer runs the container as the user who starts it: as root that would be host root."""
    import os

    if os.geteuid() != 0:
        pytest.skip("the pipeline does not run as root here")
    ws = tmp_path / "ws"
    ws.mkdir()
    trace = TraceWriter(tmp_path / "trace.jsonl")
    with pytest.raises(SandboxError, match="root"):
        ApptainerSandbox(image=IMAGE, executable="apptainer").run(
            ["true"], workspace=ws, env={}, timeout_seconds=10, grace_seconds=1, trace=trace,
            spec=SandboxSpec(workspace=ws, network="none", private_dir=tmp_path / "private"))
    trace.close()

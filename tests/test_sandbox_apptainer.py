"""The Apptainer backend. Apptainer cannot be installed on this machine: the argv the backend builds
is checked against the documented CLI (``apptainer exec`` options), a run goes through a stand-in
``apptainer`` that does what those options say in the host's namespaces, and the real run is skipped
when ``apptainer`` is absent."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from posttrainbench.agents.sandbox import (ApptainerSandbox, BubblewrapSandbox, SandboxError, SandboxSpec,
                                           TraceWriter, get_sandbox, namespace_mount_usage)

IMAGE = "/images/agent.sif"


def build(tmp_path: Path, **spec_fields):
    ws = tmp_path / "ws"
    ws.mkdir(exist_ok=True)
    (tmp_path / "scratch").mkdir(exist_ok=True)
    spec = SandboxSpec(workspace=ws, read_only=[tmp_path / "base"], private_dir=tmp_path / "private",
                       scratch_root=tmp_path / "scratch", **spec_fields)
    env = {"PTB_SEED": "1", "ANTHROPIC_API_KEY": "sk-agent-key", "PATH": "/usr/bin", "CUDA_VISIBLE_DEVICES": "0",
           "HOME": str(ws), "HTTPS_PROXY": "http://proxy.site:3128"}
    argv, host_env = ApptainerSandbox(image=IMAGE, executable="apptainer").wrap(["python3", "train.py"], spec, env)
    return argv, host_env, spec


def test_argv_isolates_binds_read_only_and_keeps_keys_off_the_command_line(tmp_path: Path):
    argv, host_env, spec = build(tmp_path, gpus=1, network="open")
    assert argv[:4] == ["apptainer", "exec", "--containall", "--cleanenv"]
    assert "--nv" in argv and "--net" not in argv
    ws = str(spec.workspace)
    assert argv[argv.index("--pwd") + 1] == ws
    # The workspace is HOME: with --containall apptainer takes HOME only from --home, never the environment.
    assert argv[argv.index("--home") + 1] == f"{ws}:{ws}" and "--no-home" not in argv
    # /tmp and /var/tmp: a directory of the run's own under the node-local scratch, not the 64 MiB session tmpfs.
    workdir = Path(argv[argv.index("--workdir") + 1])
    assert workdir.parent == tmp_path / "scratch" and workdir.is_dir() and workdir == spec.scratch
    assert stat.S_IMODE(workdir.stat().st_mode) == 0o700
    binds = [argv[i + 1] for i, a in enumerate(argv) if a == "--bind"]
    assert f"{tmp_path / 'base'}:{tmp_path / 'base'}:ro" in binds
    assert argv[-3:] == [IMAGE, "python3", "train.py"]
    assert not any("sk-agent-key" in a for a in argv)
    env_file = Path(argv[argv.index("--env-file") + 1])
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    lines = env_file.read_text().splitlines()
    assert "ANTHROPIC_API_KEY='sk-agent-key'" in lines and not any(line.startswith("PATH=") for line in lines)
    assert "TMPDIR='/tmp'" in lines and "HTTPS_PROXY='http://proxy.site:3128'" in lines
    assert not any(line.startswith("HOME=") for line in lines)  # apptainer would refuse it with a warning
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


def test_scratch_root_that_does_not_exist_names_the_key(tmp_path: Path):
    ws = tmp_path / "ws"
    ws.mkdir()
    spec = SandboxSpec(workspace=ws, private_dir=tmp_path / "private", scratch_root=tmp_path / "no-such-disk")
    with pytest.raises(SandboxError, match=r"config key 'sandbox.scratch_dir' names .*no-such-disk, which is not a "
                                           r"directory"):
        ApptainerSandbox(image=IMAGE, executable="apptainer").wrap(["true"], spec, {})


# A stand-in for apptainer exec: it does in the host's namespaces what the options the backend uses say
# (--env-file's variables and nothing else of the environment, HOME from --home, --pwd, /tmp under
# --workdir, as STUB_WORKDIR tells the command), records its argv and runs the command after the image.
STUB = r"""#!PYTHON
import json, os, shlex, sys
args = sys.argv[1:]
opts, i = {}, 1
while args[i].startswith("--"):
    flag = args[i]
    if flag in ("--containall", "--cleanenv", "--nv", "--net"):
        i += 1
    else:
        opts.setdefault(flag, []).append(args[i + 1])
        i += 2
env = {"PATH": os.environ["PATH"]}
for line in open(opts["--env-file"][0]):
    key, _, value = line.rstrip("\n").partition("=")
    env[key] = shlex.split(value)[0] if value else ""
env["HOME"] = opts["--home"][0].split(":")[1]
env["STUB_WORKDIR"] = opts["--workdir"][0]
os.makedirs(os.path.join(opts["--workdir"][0], "tmp"), exist_ok=True)
json.dump({"argv": sys.argv, "proxy_in_host_env": "HTTPS_PROXY" in os.environ}, open(RECORD, "w"))
os.chdir(opts["--pwd"][0])
os.execvpe(args[i + 1], args[i + 1:], env)
"""


def test_run_passes_the_sites_proxy_on_and_stops_a_run_whose_tmp_is_over_budget(tmp_path: Path, monkeypatch):
    """Through Sandbox.run with a stand-in ``apptainer`` (the real one cannot be installed here; the pipeline
    runs as root here and the backend refuses root, so the effective uid is reported as a user's): the
    site's proxy variables reach the agent under network 'open' (through the env file: the host environment
    of apptainer does not carry them), HOME is the workspace, TMPDIR is /tmp, and the run's scratch directory
    is measured against budget.tmp_mb, then removed."""
    record = tmp_path / "record.json"
    stub = tmp_path / "bin" / "apptainer"
    stub.parent.mkdir()
    stub.write_text(STUB.replace("PYTHON", sys.executable).replace("RECORD", repr(str(record))))
    stub.chmod(0o755)
    image = tmp_path / "agent.sif"
    image.write_bytes(b"")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.site:3128")
    monkeypatch.setenv("NO_PROXY", ".site,localhost")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    ws, scratch = tmp_path / "ws", tmp_path / "scratch"
    ws.mkdir()
    scratch.mkdir()
    script = ("import os,sys,time\n"
              "print(os.environ['HTTPS_PROXY'], os.environ['NO_PROXY'], os.environ['TMPDIR'], os.environ['HOME'],"
              " os.getcwd(), flush=True)\n"
              "open(os.environ['STUB_WORKDIR'] + '/tmp/big', 'wb').write(b'x' * (3 << 20))\n"
              "time.sleep(60)\n")
    trace = TraceWriter(tmp_path / "trace.jsonl")
    box = ApptainerSandbox(image=str(image), executable=str(stub))
    started = time.monotonic()
    outcome = box.run(["python3", "-c", script], workspace=ws, env={"HOME": str(ws), "PTB_SEED": "1"},
                      timeout_seconds=60, grace_seconds=2, trace=trace,
                      spec=SandboxSpec(workspace=ws, network="open", private_dir=tmp_path / "private",
                                       scratch_root=scratch, tmp_mb=1))
    trace.close()
    assert time.monotonic() - started < 30
    assert [hit["limit"] for hit in outcome.limits_hit] == ["tmp_mb"] and outcome.limits_hit[0]["value"] >= 3
    events = [json.loads(line) for line in (tmp_path / "trace.jsonl").read_text().splitlines()]
    printed = [e["text"] for e in events if e["type"] == "stdout"]
    assert printed == [f"http://proxy.site:3128 .site,localhost /tmp {ws} {ws}"]
    seen = json.loads(record.read_text())
    assert not seen["proxy_in_host_env"] and "--home" in seen["argv"]
    assert list(scratch.iterdir()) == []  # the run's /tmp is gone


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")
def test_shm_usage_is_read_from_the_sandboxes_own_mount(tmp_path: Path):
    """namespace_mount_usage reads the /dev/shm of a process's own mount namespace (as apptainer's
    --containall makes one, here made by bubblewrap): what a process there writes is counted, the
    host's /dev/shm is not."""
    proc = subprocess.Popen(["bwrap", "--unshare-user", "--ro-bind", "/", "/", "--dev", "/dev", "--tmpfs", "/dev/shm",
                             "--", "sh", "-c", "head -c 5000000 /dev/zero > /dev/shm/seg && echo ready && sleep 60"],
                            stdout=subprocess.PIPE, text=True)
    try:
        if proc.stdout.readline().strip() != "ready":
            pytest.skip("bubblewrap cannot make a mount namespace here")
        used = namespace_mount_usage(proc.pid, "/dev/shm")
        assert used is not None and 5_000_000 <= used < 6_000_000
    finally:
        proc.kill()
        proc.wait()
    assert namespace_mount_usage(proc.pid, "/dev/shm") is None


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

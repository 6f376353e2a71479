"""The bubblewrap backend, for real: what a sandboxed agent cannot read, write or reach.

Every test runs a real ``bwrap`` sandbox through the pipeline's own ``run_cell``. The red-team agent
(tests/sandbox_probes/redteam_agent.py) attempts each forbidden read, write and connection and
reports every attempt on stdout, so the attempts are in the cell's trace.jsonl.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import uuid
from pathlib import Path

import pytest

from posttrainbench.agents.runner import run_cell
from posttrainbench.cells import Cell

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None,
                                reason="bubblewrap (bwrap) is not installed (envs/debian-packages.txt)")

PROJECT = Path(__file__).resolve().parents[1]
PROBE = PROJECT / "tests" / "sandbox_probes" / "redteam_agent.py"
CELL = Cell("redteam", "tiny", "gsm8k", 1)
GRADER_KEY = "sk-grader-5f1e9c0a7b"
JUDGE_KEY = "sk-judge-0d2b44e1aa"


@pytest.fixture
def tmp_path():
    """A scratch directory outside /tmp: the sandbox mounts its own private /tmp, so paths under the
    host's /tmp would be hidden anyway and prove nothing about hiding the pipeline's files."""
    path = Path(tempfile.mkdtemp(prefix="ptb-sandbox-test-", dir="/var/tmp"))
    yield path
    subprocess.run(["rm", "-rf", str(path)], check=False)  # copes with trees deeper than Python's recursion


def trace_events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "trace.jsonl").read_text().splitlines()]


def probe_reports(run_dir: Path) -> list[dict]:
    reports = []
    for event in trace_events(run_dir):
        if event["type"] == "stdout" and event["text"].startswith('{"probe"'):
            reports.append(json.loads(event["text"]))
    return reports


def run_probe(tmp_path: Path, targets: dict, *, network: str = "none", hours: float = 0.02,
              base_dir: Path | None = None, benchmark_dir: Path | None = None, extra: dict | None = None,
              budget: dict | None = None):
    tmp_path.mkdir(parents=True, exist_ok=True)
    targets = {"token": uuid.uuid4().hex, **targets}
    targets_file = tmp_path / "targets.json"
    targets_file.write_text(json.dumps(targets))
    if base_dir is None:
        base_dir = tmp_path / "base"
        base_dir.mkdir(exist_ok=True)
        (base_dir / "config.json").write_text("{}")
    spec = {"type": "command", "command": [sys.executable, "redteam_agent.py", "targets.json"],
            "files": [str(PROBE), str(targets_file)], **(extra or {})}
    run_dir = tmp_path / "runs" / "redteam"
    record = run_cell(CELL, spec, run_dir=run_dir, base_dir=base_dir, instruct_dir=None, train_data=None,
                      budget={"hours": hours, "gpus": 0, "grace_seconds": 1, "max_checkpoint_gb": 1, **(budget or {})},
                      threads=1, config={"test": True}, benchmark_dir=benchmark_dir,
                      sandbox_config={"backend": "bubblewrap", "network": network,
                                      "eval_helper": {"enabled": True, "limit": 3}})
    return record, run_dir


def leaks(reports: list[dict], token: str) -> list[dict]:
    """The attempts that got through. A write counts only if it reached the host: its token is in
    the file at its target there. (A write into the sandbox's private /tmp, or into a mount point
    that lives there, succeeds inside and reaches nothing, wherever the checkout lives.)"""
    def reached_host(report: dict) -> bool:
        try:
            return token in Path(report["target"]).read_text()
        except (OSError, UnicodeDecodeError):
            return False

    return [r for r in reports if r["probe"] != "done" and r["outcome"] != "blocked"
            and (r["probe"] != "write" or reached_host(r))]


def root_only_sys_file() -> str | None:
    """A file under /sys that only its owner, root, may read, and root can (the host's view)."""
    for directory in ("/sys/kernel", "/sys/firmware", "/sys/devices/virtual", "/sys/module", "/sys/class"):
        for dirpath, _, filenames in os.walk(directory):
            for name in filenames:
                path = os.path.join(dirpath, name)
                try:
                    st = os.stat(path)
                    if st.st_uid == 0 and stat.S_IMODE(st.st_mode) & 0o077 == 0 and st.st_mode & 0o400:
                        with open(path, "rb") as handle:
                            handle.read(1)
                        return path
                except OSError:
                    continue
    return None


@pytest.fixture
def root_only_system_file():
    """A root-only (0400) file in a system directory every sandbox sees (/usr/local/share)."""
    if os.geteuid() != 0:
        pytest.skip("creating a root-owned file under /usr needs root")
    path = Path("/usr/local/share") / f"ptb-root-only-{uuid.uuid4().hex[:8]}"
    path.write_text("root-only-secret\n")
    path.chmod(0o400)
    yield str(path)
    path.unlink(missing_ok=True)


def _answer_every_client(server: socket.socket, reply: bytes) -> None:
    """Send ``reply`` to every client of the listening ``server`` (in a daemon thread, until it is closed)."""
    def serve():
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            client.sendall(reply)
            client.close()

    threading.Thread(target=serve, daemon=True).start()


@pytest.fixture
def abstract_socket():
    """A listener in the host's abstract Unix socket namespace (X11, D-Bus, containerd use these)."""
    name = f"ptb-host-abstract-{uuid.uuid4().hex[:8]}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind("\0" + name)
    server.listen(8)
    _answer_every_client(server, b"host-abstract-secret")
    yield name
    server.close()


@pytest.fixture
def host_service():
    """A real TCP service on the host's loopback (a stand-in for any service the host runs)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"host-service-secret-page")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_redteam_agent_gets_nothing_and_every_attempt_is_traced(tmp_path: Path, monkeypatch, host_service,
                                                                abstract_socket, root_only_system_file):
    # Pipeline-side secrets and files the agent must never see.
    monkeypatch.setenv("OPENAI_API_KEY", GRADER_KEY)
    monkeypatch.setenv("PTB_JUDGE_API_KEY", JUDGE_KEY)
    hidden_test = tmp_path / "resources" / "benchmarks" / "gsm8k" / "test.jsonl"
    hidden_test.parent.mkdir(parents=True)
    hidden_test.write_text('{"question": "hidden test item", "answer": "#### 42"}\n')
    (hidden_test.parent / "meta.json").write_text(json.dumps({"benchmark": "gsm8k"}))
    other_cell = tmp_path / "runs" / "other-agent" / "workspace"
    other_cell.mkdir(parents=True)
    (other_cell / "notes.txt").write_text("another cell's work")
    base_dir = tmp_path / "base"
    base_dir.mkdir()
    (base_dir / "config.json").write_text("{}")
    pristine = PROJECT / "src" / "posttrainbench" / "evaluation.py"
    targets = {
        "read": [str(hidden_test), str(pristine),
                 str(PROJECT / "src" / "posttrainbench" / "benchmarks" / "gsm8k.py"), str(other_cell / "notes.txt"),
                 "/root/.bash_history", "/etc/shadow", root_only_system_file]
                + [p for p in [root_only_sys_file()] if p],
        "list": [[str(PROJECT), "src"], [str(PROJECT), "resources"], [str(PROJECT), "tests"],
                 [str(tmp_path / "runs"), "other-agent"], [str(tmp_path), "resources"]],
        "write": [str(tmp_path), str(base_dir), str(tmp_path / "runs" / "redteam"), "/usr/lib", "/etc",
                  str(PROJECT), str(Path(sys.prefix) / "lib")],
        "secrets": [hashlib.sha256(k.encode()).hexdigest() for k in (GRADER_KEY, JUDGE_KEY)],
        "connect": [["127.0.0.1", host_service]],
        "abstract": [abstract_socket],
        "import": ["posttrainbench.evaluation", "posttrainbench.benchmarks"],
        "identity": True,
        "oom": True,
        "token": uuid.uuid4().hex,
    }
    record, run_dir = run_probe(tmp_path, targets, network="none", base_dir=base_dir)
    reports = probe_reports(run_dir)
    attempted = [r for r in reports if r["probe"] != "done"]
    expected = sum(len(v) for k, v in targets.items() if isinstance(v, list)) + 2  # + identity, oom
    assert len(attempted) == expected, reports  # every attempt is in the trace
    assert leaks(reports, targets["token"]) == [], leaks(reports, targets["token"])
    (identity,) = [r for r in reports if r["probe"] == "identity"]
    assert "host uid 0" not in identity["detail"] and "uid 0 " not in identity["detail"], identity
    assert reports[-1] == {"probe": "done"}
    # Nothing was written outside the workspace; the agent's own checkpoint was collected.
    assert not list(tmp_path.rglob("redteam-was-here.txt"))
    assert not (PROJECT / "redteam-was-here.txt").exists()
    assert record["status"] == "ok" and record["sandbox"] == "bubblewrap" and record["network"] == "none"
    assert (run_dir / "final_model" / "config.json").is_file()
    # The keys are nowhere in what the run left behind either.
    for path in run_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert GRADER_KEY.encode() not in data and JUDGE_KEY.encode() not in data, path


def test_the_workspace_is_private_and_the_task_is_readable(tmp_path: Path):
    # A positive control: the same probe reads what it should, so "blocked" above is not a broken probe.
    workspace_file = "TASK.md"
    targets = {"read": [workspace_file, str(tmp_path / "base" / "config.json")], "write": ["."]}
    record, run_dir = run_probe(tmp_path, targets, network="none")
    outcomes = {(r["probe"], r["target"]): r["outcome"] for r in probe_reports(run_dir) if r["probe"] != "done"}
    assert outcomes[("read", "TASK.md")] == "LEAKED"  # readable: it is the agent's own task
    assert outcomes[("read", str(tmp_path / "base" / "config.json"))] == "LEAKED"  # the base model, read-only
    assert outcomes[("write", "redteam-was-here.txt")] == "LEAKED"  # the workspace is writable
    task = (run_dir / "workspace" / "TASK.md").read_text()
    assert "gsm8k" in task and "timer.sh" in task and "Do not train on test data" in task


@pytest.fixture
def host_wide_service():
    """A TCP service listening on all of the host's interfaces, as many daemons do; and the host's own
    (non-loopback) addresses it is reachable at."""
    from posttrainbench.agents.sandbox import host_addresses

    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("0.0.0.0", 0))
    server.listen(8)
    _answer_every_client(server, b"host-wide-secret")
    yield server.getsockname()[1], host_addresses()
    server.close()


@pytest.mark.parametrize("network", ["open", "none", "proxy"])
def test_no_policy_reaches_host_local_services(tmp_path: Path, network, host_service, abstract_socket,
                                               host_wide_service):
    """Neither the host's loopback TCP services, nor a service on all its interfaces at the host's own
    addresses, nor its abstract Unix sockets are reachable, whatever the policy (``open`` too: the sandbox
    has a network namespace of its own, and the host's addresses are unreachable from it)."""
    port, addresses = host_wide_service
    targets = {"connect": [["127.0.0.1", host_service]] + [[a, port] for a in addresses],
               "abstract": [abstract_socket]}
    record, run_dir = run_probe(tmp_path, targets, network=network)
    reports = [r for r in probe_reports(run_dir) if r["probe"] != "done"]
    assert len(reports) == 2 + len(addresses) and all(r["outcome"] == "blocked" for r in reports), reports
    assert record["network"] == network


def _host_reaches(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=5).close()
        return True
    except OSError:
        return False


def test_network_open_reaches_the_internet(tmp_path: Path, host_service):
    """The control: under ``open`` the outside world (names resolved inside) is reachable, where
    the host itself reaches it; the host's loopback service is not."""
    if not _host_reaches("pypi.org", 443):
        pytest.skip("this host has no internet access")
    targets = {"connect": [["pypi.org", 443], ["127.0.0.1", host_service]]}
    _, run_dir = run_probe(tmp_path, targets, network="open")
    outcomes = {r["target"]: r["outcome"] for r in probe_reports(run_dir) if r["probe"] == "connect"}
    assert outcomes == {"pypi.org:443": "LEAKED", f"127.0.0.1:{host_service}": "blocked"}, outcomes


def test_network_open_without_slirp4netns_fails_loudly(tmp_path: Path, monkeypatch):
    """A missing user-mode network stack is an infrastructure fault, never a silent fallback to the host's network."""
    from posttrainbench.agents import sandbox as sandbox_module
    from posttrainbench.agents.sandbox import SandboxError

    real_which = shutil.which
    monkeypatch.setattr(sandbox_module.shutil, "which", lambda name, *a, **k: None if name == "slirp4netns"
                        else real_which(name, *a, **k))
    with pytest.raises(SandboxError, match="slirp4netns"):
        run_probe(tmp_path, {}, network="open")


def test_scratch_file_systems_are_size_limited(tmp_path: Path):
    """/tmp and /dev/shm have the configured sizes, /run a small fixed one: filling past them fails with ENOSPC."""
    targets = {"fill": [["/tmp/fill", 12 << 20], ["/dev/shm/fill", 12 << 20], ["/run/fill", 80 << 20],
                        ["/tmp/fits", 2 << 20]]}
    record, run_dir = run_probe(tmp_path, targets, budget={"tmp_mb": 8, "shm_mb": 8})
    outcomes = {r["target"]: r for r in probe_reports(run_dir) if r["probe"] == "fill"}
    for path in ("/tmp/fill", "/dev/shm/fill", "/run/fill"):
        assert outcomes[path]["outcome"] == "blocked" and "No space left" in outcomes[path]["detail"], outcomes[path]
    assert outcomes["/tmp/fits"]["outcome"] == "LEAKED"  # the control: within the limit, writes work
    assert record["status"] == "ok" and record["limits_hit"] == []


def test_process_limit_blocks_forks_and_stops_the_run(tmp_path: Path):
    """Past budget.max_processes a fork fails (the kernel's limit), the run is stopped and run.json says why."""
    record, run_dir = run_probe(tmp_path, {"fork": 400}, budget={"max_processes": 64})
    forks = [r for r in probe_reports(run_dir) if r["probe"] == "fork"]
    assert all(r["outcome"] == "blocked" for r in forks), forks  # if it reported before being stopped
    (hit,) = record["limits_hit"]
    assert hit["limit"] == "max_processes" and hit["max"] == 64 and hit["value"] >= 64 and hit["time"]
    assert json.loads((run_dir / "run.json").read_text())["limits_hit"] == [hit]
    assert record["status"] != "ok" and record["wall_seconds"] < 30


def test_workspace_disk_limit_stops_the_run_and_is_recorded(tmp_path: Path):
    record, run_dir = run_probe(tmp_path, {"disk_mb": 40}, budget={"disk_gb": 0.02})
    (hit,) = record["limits_hit"]
    assert hit["limit"] == "disk_gb" and hit["max"] == 0.02 and hit["value"] > 0.02
    assert json.loads((run_dir / "run.json").read_text())["limits_hit"] == [hit]
    stops = [e.get("action") for e in trace_events(run_dir) if e["type"] == "limit_stop"]
    assert stops[0] == "SIGTERM"
    assert record["status"] != "ok" and record["wall_seconds"] < 30  # stopped, not left to its 120 s sleep


@pytest.mark.parametrize("targets, budget, limit", [
    # 40 MB below 40 directories of 200-character names: a path of 8000 characters, past PATH_MAX.
    ({"deep": [40, 200, 40]}, {"disk_gb": 0.02}, "disk_gb"),
    # Inodes of the host's file system: empty files take no blocks but exhaust it all the same.
    ({"files": 3000}, {"max_files": 1000}, "max_files"),
    # 40 MB below 1500 one-character directories: deeper than any descriptor-per-level walk would go.
    ({"deep": [1500, 1, 40]}, {"disk_gb": 0.02}, "disk_gb"),
], ids=["past-path-max", "empty-files", "very-deep"])
def test_the_workspace_cannot_hide_from_its_disk_limits(tmp_path: Path, targets, budget, limit):
    record, run_dir = run_probe(tmp_path, targets, budget=budget)
    assert [h["limit"] for h in record["limits_hit"]] == [limit], record["limits_hit"]
    assert record["status"] != "ok" and record["wall_seconds"] < 30  # stopped, not left to its 120 s sleep
    assert record["limits"]["max_files"] == budget.get("max_files", 2_000_000)


def test_honest_workload_within_the_default_limits(tmp_path: Path):
    """The defaults do not get in the way: a pool of worker processes with threads, shared memory
    and a scratch file of some size run to the end with nothing recorded."""
    script = tmp_path / "honest.py"
    script.write_text(textwrap.dedent("""
        import multiprocessing as mp, os, pathlib, threading, time
        from multiprocessing import shared_memory
        def work(i):
            threads = [threading.Thread(target=time.sleep, args=(0.2,)) for _ in range(8)]
            for t in threads: t.start()
            for t in threads: t.join()
            return i
        if __name__ == "__main__":
            with mp.get_context("fork").Pool(16) as pool:
                assert sorted(pool.map(work, range(32))) == list(range(32))
            shm = shared_memory.SharedMemory(create=True, size=64 << 20); shm.buf[:4] = b"ok!!"; shm.close(); shm.unlink()
            pathlib.Path("/tmp/scratch").write_bytes(b"x" * (64 << 20))
            out = pathlib.Path("final_model"); out.mkdir()
            (out / "config.json").write_text("{}"); (out / "model.safetensors").write_bytes(b"w")
            print("honest done", flush=True)
    """))
    spec = {"type": "command", "command": [sys.executable, "honest.py"], "files": [str(script)]}
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    record = run_cell(CELL, spec, run_dir=tmp_path / "run", base_dir=base, instruct_dir=None, train_data=None,
                      budget={"hours": 0.02, "gpus": 0, "grace_seconds": 1, "max_checkpoint_gb": 1}, threads=1,
                      config={}, sandbox_config={"backend": "bubblewrap", "network": "none"})
    stdout = [e["text"] for e in trace_events(tmp_path / "run") if e["type"] in ("stdout", "stderr")]
    assert record["status"] == "ok" and record["limits_hit"] == [], stdout[-20:]
    assert "honest done" in stdout


def test_honest_cli_like_agent_works_in_the_sandbox(tmp_path: Path, monkeypatch):
    """What a coding-agent CLI and its tools do: caches and a session file under HOME, a temporary file
    where TMPDIR says (the host's is a cluster job's scratch, absent inside), a library installed with
    pip into the workspace, a model server on the sandbox's own loopback (IPv4 and IPv6)."""
    monkeypatch.setenv("TMPDIR", str(tmp_path / "host-job-scratch"))
    (tmp_path / "host-job-scratch").mkdir()
    script = tmp_path / "cli.py"
    script.write_text(textwrap.dedent("""
        import http.server, json, os, pathlib, socket, subprocess, sys, threading, urllib.request
        home = pathlib.Path.home()
        (home / ".cache" / "cli").mkdir(parents=True); (home / ".cache" / "cli" / "index").write_text("c")
        (home / ".config" / "cli").mkdir(parents=True); (home / ".config" / "cli" / "session.jsonl").write_text("{}")
        tmp = subprocess.run(["mktemp"], capture_output=True, text=True, check=True).stdout.strip()
        pkg = pathlib.Path("pkg"); (pkg / "helperlib").mkdir(parents=True)
        (pkg / "helperlib" / "__init__.py").write_text("VALUE = 7\\n")
        (pkg / "setup.py").write_text("from setuptools import setup; setup(name='helperlib', version='0.1', packages=['helperlib'])")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-build-isolation", "--no-deps",
                        "--target", "deps", "./pkg"], check=True)
        sys.path.insert(0, "deps"); import helperlib
        class V6(http.server.ThreadingHTTPServer): address_family = socket.AF_INET6
        for server in (http.server.ThreadingHTTPServer(("127.0.0.1", 8000), http.server.SimpleHTTPRequestHandler),
                       V6(("::1", 8001), http.server.SimpleHTTPRequestHandler)):
            threading.Thread(target=server.serve_forever, daemon=True).start()
        pages = [urllib.request.urlopen(url, timeout=10).status for url in ("http://127.0.0.1:8000/TASK.md",
                                                                            "http://[::1]:8001/TASK.md")]
        out = pathlib.Path("final_model"); out.mkdir()
        (out / "config.json").write_text("{}"); (out / "model.safetensors").write_bytes(b"w")
        print(json.dumps({"tmp": tmp, "lib": helperlib.VALUE, "pages": pages}), flush=True)
    """))
    spec = {"type": "command", "command": [sys.executable, "cli.py"], "files": [str(script)]}
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    record = run_cell(CELL, spec, run_dir=tmp_path / "run", base_dir=base, instruct_dir=None, train_data=None,
                      budget={"hours": 0.02, "gpus": 0, "grace_seconds": 1, "max_checkpoint_gb": 1}, threads=1,
                      config={}, sandbox_config={"backend": "bubblewrap", "network": "none"})
    output = [e["text"] for e in trace_events(tmp_path / "run") if e["type"] in ("stdout", "stderr")]
    assert record["status"] == "ok" and record["limits_hit"] == [], output[-20:]
    (result,) = [json.loads(e["text"]) for e in trace_events(tmp_path / "run")
                 if e["type"] == "stdout" and e["text"].startswith('{"tmp"')]
    assert result["tmp"].startswith("/tmp/") and result["lib"] == 7 and result["pages"] == [200, 200]
    assert not list((tmp_path / "host-job-scratch").iterdir())


def test_proxy_policy_logs_egress_and_refuses_host_services(tmp_path: Path, host_service):
    """Through the proxy, the host's own loopback service is refused (403) and recorded as denied;
    a forwarded endpoint is reachable at its usual address, and every host lands in run.json."""
    targets = {"connect": [["127.0.0.1", host_service]]}
    # Forward the service as if it were the agent's model endpoint (base_url on the host's loopback).
    record, run_dir = run_probe(tmp_path, targets, network="proxy",
                                extra={"base_url": f"http://127.0.0.1:{host_service}/v1"})
    reports = [r for r in probe_reports(run_dir) if r["probe"] != "done"]
    by_probe = {(r["probe"], r["target"]): r for r in reports}
    # urllib bypasses the proxy for 127.0.0.1/localhost (NO_PROXY), so these reach the forward.
    connect = by_probe[("connect", f"127.0.0.1:{host_service}")]
    assert connect["outcome"] == "LEAKED" and "200" in connect["detail"]
    assert record["network"] == "proxy"
    assert f"127.0.0.1:{host_service}" in record["egress"]
    egress_events = [e for e in trace_events(run_dir) if e["type"] == "egress"]
    assert egress_events and all(e["via"] == "forward" for e in egress_events)


def test_proxy_refuses_host_loopback_without_a_forward(tmp_path: Path, host_service):
    script = tmp_path / "agent.py"
    script.write_text(textwrap.dedent(f"""
        import urllib.request, json, os
        # Explicitly through the proxy, ignoring NO_PROXY: the gateway itself must refuse.
        os.environ.pop("NO_PROXY", None); os.environ.pop("no_proxy", None)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({{"http": os.environ["HTTP_PROXY"]}}))
        try:
            opener.open("http://127.0.0.1:{host_service}/", timeout=5)
            print("REACHED")
        except Exception as exc:
            print("refused:", exc)
    """))
    spec = {"type": "command", "command": [sys.executable, "agent.py"], "files": [str(script)]}
    base = tmp_path / "base"
    base.mkdir()
    record = run_cell(CELL, spec, run_dir=tmp_path / "run", base_dir=base, instruct_dir=None, train_data=None,
                      budget={"hours": 0.02, "gpus": 0, "grace_seconds": 1}, threads=1, config={},
                      sandbox_config={"backend": "bubblewrap", "network": "proxy"})
    stdout = [e["text"] for e in trace_events(tmp_path / "run") if e["type"] == "stdout"]
    assert any("refused" in line and "403" in line for line in stdout), stdout
    assert "REACHED" not in stdout
    assert record["egress_detail"] == [{"host": "127.0.0.1", "port": host_service, "connections": 0, "denied": 1}]


@pytest.mark.slow
def test_deadline_kills_sandboxed_agent_and_its_checkpoint_is_evaluated(tmp_path: Path, tiny_model_dir):
    """A stubborn agent writes final_model/ then ignores SIGTERM; SIGKILL ends the whole sandbox,
    the checkpoint is collected and the real harness scores it."""
    from posttrainbench.benchmarks import stage_benchmark
    from posttrainbench.evaluation import evaluate_checkpoint

    script = tmp_path / "stubborn.py"
    script.write_text(textwrap.dedent("""
        import os, shutil, signal, subprocess, time
        shutil.copytree(os.environ["PTB_BASE_MODEL"], "final_model")
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        # A child in its own session: only the sandbox's PID namespace catches it.
        subprocess.Popen(["sleep", "600"], start_new_session=True)
        print("checkpoint saved; training forever", flush=True)
        time.sleep(600)
    """))
    spec = {"type": "command", "command": [sys.executable, "stubborn.py"], "files": [str(script)]}
    run_dir = tmp_path / "run"
    record = run_cell(CELL, spec, run_dir=run_dir, base_dir=tiny_model_dir, instruct_dir=None, train_data=None,
                      budget={"hours": 3 / 3600, "gpus": 0, "grace_seconds": 1}, threads=1, config={},
                      sandbox_config={"backend": "bubblewrap", "network": "none"})
    assert record["status"] == "timeout" and record["wall_seconds"] < 30
    actions = [e.get("action") for e in trace_events(run_dir) if e["type"] == "deadline"]
    assert actions == ["SIGTERM", "SIGKILL"]
    sleepers = [p for p in Path("/proc").glob("[0-9]*/cmdline")
                if _read(p).startswith(b"sleep\x00600")]
    assert sleepers == [], "a process of the sandbox survived the deadline"
    checkpoint = Path(record["final_model"])
    assert (checkpoint / "model.safetensors").is_file()
    bench = tmp_path / "bench"
    stage_benchmark("gsm8k", bench)
    result = evaluate_checkpoint(checkpoint, "gsm8k", bench, limit=2, max_tokens=8, batch_size=2,
                                 device="cpu", dtype="float32", samples_path=None, prompting="few-shot",
                                 base_dir=tiny_model_dir)
    assert result["n"] == 2 and 0.0 <= result["score"] <= 1.0


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


@pytest.mark.slow
def test_evaluation_helper_runs_in_the_sandbox_and_is_hashed_before_and_after(tmp_path: Path, tiny_model_dir):
    """The agent scores the base model with the helper (the real harness, copied, on 2 items), then
    edits the helper's copy of the harness: the manifests in run.json show exactly that edit."""
    from posttrainbench.benchmarks import stage_benchmark

    bench = tmp_path / "bench"
    stage_benchmark("gsm8k", bench)
    script = tmp_path / "agent.py"
    script.write_text(textwrap.dedent("""
        import os, subprocess, sys
        subprocess.run([sys.executable, "evaluation/evaluate.py", "--model", os.environ["PTB_BASE_MODEL"],
                        "--limit", "2"], check=True)
        open("evaluation/ptb_harness/benchmarks/gsm8k.py", "a").write("# tampered\\n")
    """))
    spec = {"type": "command", "command": [sys.executable, "agent.py"], "files": [str(script)]}
    config = {"evaluation": {"device": "cpu", "dtype": "float32", "batch_size": 2,
                             "per_benchmark": {"gsm8k": {"max_tokens": 8}}}}
    record = run_cell(CELL, spec, run_dir=tmp_path / "run", base_dir=tiny_model_dir, instruct_dir=None,
                      train_data=None, budget={"hours": 0.05, "gpus": 0, "grace_seconds": 1}, threads=2,
                      config=config, benchmark_dir=bench,
                      sandbox_config={"backend": "bubblewrap", "network": "none",
                                      "eval_helper": {"enabled": True, "limit": 3}})
    assert record["exit_code"] == 0, (tmp_path / "run" / "trace.jsonl").read_text()[-3000:]
    stdout = "\n".join(e["text"] for e in trace_events(tmp_path / "run") if e["type"] == "stdout")
    result = json.loads(stdout[stdout.index("{"):stdout.rindex("}") + 1])
    assert result["n"] == 2 and result["metric"] == "exact_match" and 0 <= result["score"] <= 1
    before, after = record["harness_manifest"], record["harness_manifest_after"]
    assert "evaluation/ptb_harness/evaluation.py" in before and "evaluation/data/test.jsonl" in before
    changed = sorted(k for k in before if before[k] != after.get(k))
    assert changed == ["evaluation/ptb_harness/benchmarks/gsm8k.py"]
    lines = (tmp_path / "run" / "workspace" / "evaluation" / "data" / "test.jsonl").read_text().splitlines()
    assert len(lines) == 3 and lines == (bench / "test.jsonl").read_text().splitlines()[:3]


def test_sigterm_reaches_the_agent_and_its_grace_period_is_honoured(tmp_path: Path):
    """The deadline's SIGTERM goes to the agent inside the sandbox (not to bwrap, whose death would end
    the sandbox at once): an agent that saves on SIGTERM gets its checkpoint collected. It also asks
    the timer how much time is left."""
    script = tmp_path / "graceful.py"
    script.write_text(textwrap.dedent("""
        import json, pathlib, signal, subprocess, sys, time
        print(subprocess.run(["sh", "timer.sh"], capture_output=True, text=True).stdout.strip(), flush=True)
        def save(*_):
            time.sleep(0.5)  # saving takes a moment: only possible if the sandbox is still alive
            out = pathlib.Path("final_model"); out.mkdir()
            (out / "config.json").write_text("{}"); (out / "model.safetensors").write_bytes(b"w")
            print("saved on SIGTERM", flush=True)
            sys.exit(0)
        signal.signal(signal.SIGTERM, save)
        time.sleep(600)
    """))
    spec = {"type": "command", "command": [sys.executable, "graceful.py"], "files": [str(script)]}
    base = tmp_path / "base"
    base.mkdir()
    run_dir = tmp_path / "run"
    record = run_cell(CELL, spec, run_dir=run_dir, base_dir=base, instruct_dir=None, train_data=None,
                      budget={"hours": 2 / 3600, "gpus": 0, "grace_seconds": 10}, threads=1, config={},
                      sandbox_config={"backend": "bubblewrap", "network": "none"})
    stdout = [e["text"] for e in trace_events(run_dir) if e["type"] == "stdout"]
    assert stdout[0].startswith("time left: 0h 00m 0")
    assert "saved on SIGTERM" in stdout
    actions = [e.get("action") for e in trace_events(run_dir) if e["type"] == "deadline"]
    assert actions == ["SIGTERM"]  # it stopped within the grace period: no SIGKILL needed
    assert record["status"] == "timeout" and (run_dir / "final_model" / "model.safetensors").is_file()
    assert record["wall_seconds"] < 10


@pytest.mark.parametrize("network", ["none", "proxy", "open"])
def test_a_sandbox_that_does_not_start_fails_the_job_not_the_agent(tmp_path: Path, network: str):
    """An input that cannot be mounted stops bwrap before the agent exists: an infrastructure fault, raised
    (Snakemake fails and retries the job), never recorded as the agent's error."""
    from posttrainbench.agents import sandbox as sandbox_module
    from posttrainbench.agents.sandbox import SandboxError, SandboxSpec, TraceWriter, get_sandbox

    if network == "open" and shutil.which("slirp4netns") is None:
        pytest.skip("slirp4netns is not installed (envs/debian-packages.txt)")
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    box = get_sandbox("bubblewrap")
    spec = SandboxSpec(workspace=workspace, network=network, private_dir=tmp_path / "private")
    # A mount bwrap must make but cannot: its source vanishes between the launch being built and bwrap starting.
    gone = tmp_path / "gone"
    gone.mkdir()
    gone.chmod(0o755)
    spec.mapped["/ptb/gone"] = gone
    original = sandbox_module.BubblewrapSandbox._argv

    def argv_then_remove(self, *args, **kwargs):
        built = original(self, *args, **kwargs)
        shutil.rmtree(gone)
        return built

    trace = TraceWriter(tmp_path / "trace.jsonl")
    sandbox_module.BubblewrapSandbox._argv = argv_then_remove
    try:
        with pytest.raises(SandboxError, match="did not start"):
            box.run([sys.executable, "-c", "print('agent ran')"], workspace=workspace, env={"PATH": "/usr/bin"},
                    timeout_seconds=60, grace_seconds=1, trace=trace, spec=spec)
    finally:
        sandbox_module.BubblewrapSandbox._argv = original
        trace.close()
    events = [json.loads(line) for line in (tmp_path / "trace.jsonl").read_text().splitlines()]
    assert not [e for e in events if e["type"] == "stdout"], events


def test_the_egress_log_stays_bounded_and_names_every_host_reached(tmp_path: Path, monkeypatch):
    """An agent that makes up host names cannot grow the gateway's log without bound, nor push a host it
    reaches out of it: past the bound, a new host is refused (and counted), one already logged still works."""
    from posttrainbench.agents import egress
    from posttrainbench.agents.sandbox import TraceWriter

    monkeypatch.setattr(egress, "MAX_HOSTS_TRACKED", 3)
    trace = TraceWriter(tmp_path / "trace.jsonl")
    socket_dir = Path(tempfile.mkdtemp(prefix="ptb-egress-test-"))
    gateway = egress.EgressGateway(socket_dir, trace).start()

    def connect(host: str) -> bytes:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(30)
            client.connect(str(socket_dir / egress.PROXY_SOCKET))
            client.sendall(f"CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n\r\n".encode())
            return client.recv(200)

    try:
        replies = [connect(f"made-up-{i}.invalid") for i in range(5)] + [connect("made-up-0.invalid")]
    finally:
        gateway.stop()
        trace.close()
        shutil.rmtree(socket_dir, ignore_errors=True)
    assert all(b" 502 " in r for r in replies[:3]) and b" 502 " in replies[5]  # tried (no such host)
    assert all(b" 403 " in r and b"distinct hosts" in r for r in replies[3:5])
    summary = {e["host"]: e for e in gateway.summary()}
    assert set(summary) == {"made-up-0.invalid", "made-up-1.invalid", "made-up-2.invalid", egress.OTHER_HOSTS}
    assert summary[egress.OTHER_HOSTS]["denied"] == 2 and summary["made-up-0.invalid"]["connections"] == 2


def test_the_gateway_connects_to_the_address_it_checked(tmp_path: Path, monkeypatch):
    """DNS rebinding: a name that resolves to a public address when checked and to the host's loopback when
    connected. The gateway resolves once and connects to the address it checked."""
    from posttrainbench.agents import egress
    from posttrainbench.agents.sandbox import TraceWriter

    real_getaddrinfo = socket.getaddrinfo
    lookups = []

    def rebinding(host, port, *args, **kwargs):
        if host != "rebind.example":
            return real_getaddrinfo(host, port, *args, **kwargs)
        lookups.append(host)
        address = "8.8.8.8" if len(lookups) == 1 else "127.0.0.1"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, int(port)))]

    opened = []

    async def record_open(host, port, **kwargs):
        opened.append(host)
        raise OSError("no upstream in this test")

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    monkeypatch.setattr(egress.asyncio, "open_connection", record_open)
    trace = TraceWriter(tmp_path / "trace.jsonl")
    socket_dir = Path(tempfile.mkdtemp(prefix="ptb-egress-test-"))
    gateway = egress.EgressGateway(socket_dir, trace).start()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(30)
            client.connect(str(socket_dir / egress.PROXY_SOCKET))
            client.sendall(b"CONNECT rebind.example:8080 HTTP/1.1\r\nHost: rebind.example:8080\r\n\r\n")
            reply = client.recv(200)
    finally:
        gateway.stop()
        trace.close()
        shutil.rmtree(socket_dir, ignore_errors=True)
    assert b" 502 " in reply and lookups == ["rebind.example"] and opened == ["8.8.8.8"]

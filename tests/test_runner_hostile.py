"""The runner against a hostile agent: strict checkpoint collection, bounded reading of what the agent
left, and a run record however the agent behaved.

Every run goes through the real ``run_cell`` with a ``command`` agent (a small Python script copied into
the workspace), in a real bubblewrap sandbox unless a test says why not.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from posttrainbench.agents import runner
from posttrainbench.agents.runner import run_cell
from posttrainbench.cells import Cell

needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None,
                                 reason="bubblewrap (bwrap) is not installed (envs/debian-packages.txt)")
CELL = Cell("hostile", "tiny", "gsm8k", 1)

# A checkpoint that passes the shape checks: config.json and weights at the top.
MODEL = """
import json, os, pathlib
out = pathlib.Path("final_model"); out.mkdir(exist_ok=True)
(out / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
"""


@pytest.fixture
def tmp_path():
    """Outside /tmp (the sandbox has a private /tmp); removed with rm, which copes with very deep trees."""
    path = Path(tempfile.mkdtemp(prefix="ptb-hostile-test-", dir="/var/tmp"))
    yield path
    subprocess.run(["rm", "-rf", str(path)], check=False)


def run_agent(tmp_path: Path, body: str, *, backend: str = "bubblewrap", budget: dict | None = None,
              base_dir: Path | None = None, benchmark_dir: Path | None = None, name: str = "cell") -> tuple[dict, Path]:
    script = tmp_path / f"{name}_agent.py"
    script.write_text(textwrap.dedent(body))
    if base_dir is None:
        base_dir = tmp_path / "base"
        base_dir.mkdir(exist_ok=True)
        (base_dir / "config.json").write_text("{}")
        (base_dir / "model.safetensors").write_bytes(b"\0" * 100_000)
    run_dir = tmp_path / "runs" / name
    record = run_cell(CELL, {"type": "command", "command": [sys.executable, script.name], "files": [str(script)]},
                      run_dir=run_dir, base_dir=base_dir, instruct_dir=None, train_data=None,
                      budget={"hours": 0.02, "gpus": 0, "grace_seconds": 1, **(budget or {})}, threads=1,
                      config={"test": True}, benchmark_dir=benchmark_dir,
                      sandbox_config={"backend": backend, "network": "none" if backend != "none" else "open",
                                      "eval_helper": {"enabled": True, "limit": 2}})
    assert json.loads((run_dir / "run.json").read_text()) == json.loads(json.dumps(record, default=str))
    assert record["sandbox"] == backend
    return record, run_dir


def other_cell(tmp_path: Path) -> Path:
    """Another cell's collected checkpoint, which an attacker would like scored as its own."""
    other = tmp_path / "runs" / "victim" / "final_model"
    other.mkdir(parents=True)
    (other / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
    (other / "model.safetensors").write_bytes(b"victim weights")
    return other


def assert_rejected(record: dict, run_dir: Path, *fragments: str) -> None:
    assert record["status"] == "invalid_checkpoint", record
    assert record["final_model"] is None and not (run_dir / "final_model").exists()
    assert not list(run_dir.glob(".final_model.partial-*"))
    for fragment in fragments:
        assert fragment in record["reason"], record["reason"]
    assert record["reason"].endswith("the cell scores as the base model")


@needs_bwrap
@pytest.mark.parametrize("attack, fragments", [
    ("os.symlink(VICTIM + '/model.safetensors', 'final_model/model.safetensors')",
     ["final_model/model.safetensors is a symlink", "victim/final_model/model.safetensors"]),
    ("open('final_model/model.safetensors', 'wb').write(b'own'); os.mkdir('final_model/shards'); "
     "os.symlink(VICTIM, 'final_model/shards/part')",
     ["final_model/shards/part is a symlink"]),
    ("open('final_model/model.safetensors', 'wb').write(b'own'); os.symlink(VICTIM, 'final_model/extra')",
     ["final_model/extra is a symlink"]),
])
def test_symlinks_inside_final_model_are_rejected(tmp_path: Path, attack: str, fragments: list[str]):
    victim = other_cell(tmp_path)
    record, run_dir = run_agent(tmp_path, MODEL + f"VICTIM = {str(victim)!r}\n" + attack + "\n")
    assert_rejected(record, run_dir, *fragments)
    assert (run_dir / "workspace" / "final_model").is_dir()  # left for the judge to look at


@needs_bwrap
def test_final_model_itself_a_symlink_is_rejected(tmp_path: Path):
    victim = other_cell(tmp_path)
    record, run_dir = run_agent(tmp_path, f"import os; os.symlink({str(victim)!r}, 'final_model')\n")
    assert_rejected(record, run_dir, "final_model is a symlink", str(victim))


@needs_bwrap
@pytest.mark.parametrize("make, kind", [
    ("os.mkfifo('final_model/model.safetensors')", "is a FIFO"),
    ("import socket; s = socket.socket(socket.AF_UNIX); s.bind('final_model/model.safetensors')", "is a socket"),
])
def test_fifos_and_sockets_are_rejected(tmp_path: Path, make: str, kind: str):
    record, run_dir = run_agent(tmp_path, MODEL + make + "\n")
    assert_rejected(record, run_dir, f"final_model/model.safetensors {kind}")


def test_hard_link_to_another_cells_checkpoint_is_rejected(tmp_path: Path):
    """Backend none: in a bubblewrap sandbox a hard link out of the workspace's own mount fails (EXDEV),
    so the attack needs the development backend, where the agent shares the pipeline's file system."""
    victim = other_cell(tmp_path)
    record, run_dir = run_agent(tmp_path, MODEL + f"os.link({str(victim / 'model.safetensors')!r}, "
                                "'final_model/model.safetensors')\n", backend="none")
    assert_rejected(record, run_dir, "final_model/model.safetensors is a hard link to a file outside the workspace",
                    "2 links, 1 inside")
    # The trusted base recipe's links to the staged model are no licence for an agent to link it.
    base = tmp_path / "staged"
    shutil.copytree(victim, base)
    record, run_dir = run_agent(tmp_path, MODEL + f"os.link({str(base / 'model.safetensors')!r}, "
                                "'final_model/model.safetensors')\n", backend="none", base_dir=base, name="b")
    assert_rejected(record, run_dir, "is a hard link to a file outside the workspace")


@needs_bwrap
def test_checkpoint_over_the_cap_is_rejected_with_its_sizes(tmp_path: Path):
    # Configured cap: 50 kB; the weights are 60 kB.
    body = MODEL + "open('final_model/model.safetensors', 'wb').write(b'w' * 60_000)\n"
    record, run_dir = run_agent(tmp_path, body, budget={"max_checkpoint_gb": 50e-6})
    assert_rejected(record, run_dir, "holds 60 kB (60023 bytes)", "over the checkpoint cap of 50 kB",
                    "budget.max_checkpoint_gb")
    # Default cap: 4 x the staged base (100 kB here); a sparse 1 TB file is refused without being read.
    body = MODEL + "f = open('final_model/model.safetensors', 'wb'); f.truncate(10**12); f.close()\n"
    record, run_dir = run_agent(tmp_path, body, name="sparse")
    assert_rejected(record, run_dir, "holds 1 TB (1000000000023 bytes)", "cap of 400 kB (4 x the base model's 100 kB")
    assert record["checkpoint_cap_bytes"] == 4 * 100_002


HONEST = MODEL + """
import hashlib, random
rng = random.Random(7)
(out / "model.safetensors").write_bytes(rng.randbytes(300_000))
(out / "tokenizer.json").write_text(json.dumps({"model": {"vocab": {"a": 0}}}))
(out / "original").mkdir()
(out / "original" / "params.json").write_text("{}")
(out / "empty.txt").write_bytes(b"")
# Trainer checkpoints kept next to final_model, one of them hard-linked into it: names inside the workspace.
os.makedirs("checkpoints/step-10")
open("checkpoints/step-10/generation_config.json", "w").write('{"max_new_tokens": 5}')
os.link("checkpoints/step-10/generation_config.json", out / "generation_config.json")
os.symlink("../final_model", "checkpoints/latest")   # symlinks elsewhere in the workspace are its business
for path in sorted(p for p in out.rglob("*") if p.is_file()):
    print("sha256", path.relative_to(out), hashlib.sha256(path.read_bytes()).hexdigest())
"""


@needs_bwrap
def test_honest_checkpoint_is_collected_byte_identical_as_regular_files(tmp_path: Path):
    record, run_dir = run_agent(tmp_path, HONEST)
    assert record["status"] == "ok" and record["reason"] is None, (record["reason"], (run_dir / "trace.jsonl").read_text()[-1500:])
    collected = run_dir / "final_model"
    assert record["final_model"] == str(collected) and not (run_dir / "workspace" / "final_model").exists()
    trace = [json.loads(line) for line in (run_dir / "trace.jsonl").read_text().splitlines()]
    reported = dict(e["text"].split()[1:] for e in trace if e["type"] == "stdout" and e["text"].startswith("sha256"))
    found = {}
    for path in sorted(collected.rglob("*")):
        assert not path.is_symlink() and (path.is_dir() or path.is_file())
        if path.is_file():
            assert path.stat().st_nlink == 1  # a copy: nothing the agent holds shares its inode
            found[str(path.relative_to(collected))] = hashlib.sha256(path.read_bytes()).hexdigest()
    assert found == reported and len(found) == 6
    assert record["checkpoint_bytes"] == sum((collected / p).stat().st_size for p in found)
    assert record["runner_errors"] == [] and record["harness_manifest_problems"] == []


@needs_bwrap
def test_a_200_mb_line_is_truncated_and_memory_stays_flat(tmp_path: Path):
    def peak_rss_growth(body: str, name: str) -> tuple[int, dict, Path]:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # resets this process's peak RSS (VmHWM) to its current RSS
        before = _status_kb("VmRSS")
        record, run_dir = run_agent(tmp_path, body, name=name)
        return (_status_kb("VmHWM") - before) * 1024, record, run_dir

    small, _, _ = peak_rss_growth("print('x' * 1000)\n", "small")
    body = """
        import sys
        out = sys.stdout.buffer
        out.write(b"before\\n")
        block = b"y" * (1 << 20)
        for _ in range(200):
            out.write(block)
        out.write(b"\\nafter\\n")
        out.flush()
    """
    large, record, run_dir = peak_rss_growth(body, "large")
    assert large < small + 48 * 2**20, (large, small)  # reading the line whole would take >= 200 MB
    assert record["status"] == "no_checkpoint" and record["exit_code"] == 0
    lines = [json.loads(line) for line in (run_dir / "trace.jsonl").read_text().splitlines()]
    stdout = [e for e in lines if e["type"] == "stdout"]
    assert [e["text"][:6] for e in stdout] == ["before", "yyyyyy", "after"]
    assert stdout[1]["truncated"] is True and stdout[1]["length"] == 200 * 2**20
    assert len(stdout[1]["text"]) == 64 * 1024 and "truncated" not in stdout[0]
    assert (run_dir / "trace.jsonl").stat().st_size < 2**20


@needs_bwrap
def test_the_trace_is_bounded_by_what_it_takes_not_by_line_lengths(tmp_path: Path, monkeypatch):
    """Empty lines cost nothing by length and control characters grow sixfold when escaped: the output budget
    is charged with what each record takes in the trace, so neither floods the disk outside the workspace."""
    from posttrainbench.agents import sandbox

    monkeypatch.setattr(sandbox, "TRACE_OUTPUT_LIMIT", 1 << 20)
    body = """
        import os
        for _ in range(8):
            os.write(1, b"\\n" * 65536)  # half a million empty lines: 30 MB of trace records
        for _ in range(16):
            os.write(2, b"\\x01" * 60000 + b"\\n")  # 360 kB of trace each once escaped
        os.write(1, b"done\\n")
    """
    record, run_dir = run_agent(tmp_path, body)
    assert record["exit_code"] == 0 and not record["timed_out"]  # never blocked: the pipes were drained
    assert (run_dir / "trace.jsonl").stat().st_size < (1 << 20) + 64 * 1024
    assert record["output_dropped"]["lines"] > 400_000
    events = [json.loads(line) for line in (run_dir / "trace.jsonl").read_text().splitlines()]
    assert [e["type"] for e in events].count("output_limit") == 1 and events[-1]["type"] == "exit"


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/self/status")


@pytest.fixture
def benchmark_dir(tmp_path: Path) -> Path:
    bench = tmp_path / "bench"
    bench.mkdir()
    items = [{"question": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(5)]
    (bench / "test.jsonl").write_text("".join(json.dumps(item) + "\n" for item in items))
    (bench / "meta.json").write_text(json.dumps({"benchmark": "gsm8k", "n": 5}))
    return bench


@needs_bwrap
@pytest.mark.parametrize("attack, problem", [
    # 5000 nested directories in the evaluation helper's folder (deeper than PATH_MAX allows by path)
    ("""
import os
os.chdir("evaluation")
for _ in range(5000):
    os.mkdir("d"); os.chdir("d")
open("bottom.txt", "w").write("deep")
""", "deeper than 32 levels"),
    # 100 000 files
    ("""
import os
os.mkdir("evaluation/many")
for i in range(100_000):
    os.close(os.open(f"evaluation/many/{i}", os.O_CREAT | os.O_WRONLY, 0o644))
""", "more than 10000 entries"),
    # a symlink to the staged test set and a FIFO where a harness file was
    ("""
import os
os.remove("evaluation/ptb_harness/io.py"); os.mkfifo("evaluation/ptb_harness/io.py")
os.symlink("/etc/passwd", "evaluation/data/extra.jsonl")
""", "evaluation/ptb_harness/io.py: FIFO"),
])
def test_a_huge_deep_or_odd_evaluation_folder_is_recorded_not_fatal(tmp_path: Path, benchmark_dir: Path, attack: str,
                                                                     problem: str):
    from posttrainbench.judge.harness import check_harness

    record, run_dir = run_agent(tmp_path, attack, benchmark_dir=benchmark_dir)
    assert record["exit_code"] == 0, (run_dir / "trace.jsonl").read_text()[-2000:]
    assert "evaluation/evaluate.py" in record["harness_manifest"]
    assert any(problem in p for p in record["harness_manifest_problems"]), record["harness_manifest_problems"]
    assert record["runner_errors"] == []
    assert len(record["harness_manifest_after"]) <= 10_100
    # The judge's harness check sees the folder changed, or says it cannot tell.
    check = check_harness(record, None, {})
    assert not check["passed"] or check.get("unverifiable"), check


def test_a_failure_after_the_agent_ran_is_recorded_in_run_json(tmp_path: Path, monkeypatch):
    """Our own fault while reading what the agent left (a full disk, a bug) is the cell's recorded outcome."""
    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    manifest, calls = runner.ws.manifest, []

    def manifest_fails_after_the_run(*args, **kwargs):
        calls.append(1)
        return manifest(*args, **kwargs) if len(calls) == 1 else broken()

    monkeypatch.setattr(runner, "collect_checkpoint", broken)
    monkeypatch.setattr(runner.ws, "manifest", manifest_fails_after_the_run)
    record, run_dir = run_agent(tmp_path, MODEL + "open('final_model/model.safetensors', 'wb').write(b'w')\n",
                                backend="none")
    assert record["status"] == "invalid_checkpoint" and "could not be collected" in record["reason"]
    assert [e.split(":")[0] for e in record["runner_errors"]] == ["checkpoint collection", "hashing evaluation/"]
    assert "No space left on device" in record["runner_errors"][0]


def test_infrastructure_faults_before_the_agent_runs_still_raise(tmp_path: Path):
    from posttrainbench.agents.sandbox import SandboxError

    with pytest.raises(SandboxError):
        run_agent(tmp_path, "print('never runs')\n", backend="no-such-backend")
    assert not (tmp_path / "runs" / "cell" / "run.json").exists()


def test_transcripts_are_copied_without_following_symlinks(tmp_path: Path):
    workspace = tmp_path / "ws"
    sessions = workspace / ".claude" / "projects" / "p"
    sessions.mkdir(parents=True)
    (sessions / "real.jsonl").write_text('{"turn": 1}\n')
    os.symlink("/etc/passwd", sessions / "leak.jsonl")
    os.mkfifo(sessions / "pipe.jsonl")
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "keys.jsonl").write_text("sk-secret\n")
    os.symlink(secret, workspace / ".claude" / "projects" / "linked")
    copied, skipped = runner._copy_transcripts(workspace, [".claude/projects/**/*.jsonl"], tmp_path / "run" / "transcript")
    assert copied == ["transcript/.claude/projects/p/real.jsonl"]
    assert sorted(s.split(":")[0] for s in skipped) == [".claude/projects/p/leak.jsonl", ".claude/projects/p/pipe.jsonl"]
    assert "a symlink" in " ".join(skipped) and "a FIFO" in " ".join(skipped)
    assert [p.name for p in (tmp_path / "run").rglob("*") if p.is_file()] == ["real.jsonl"]  # not keys.jsonl
    # The whole transcript directory a symlink: nothing copied.
    other = tmp_path / "ws2"
    (other / ".codex").mkdir(parents=True)
    os.symlink(secret, other / ".codex" / "sessions")
    copied, skipped = runner._copy_transcripts(other, [".codex/sessions/**/*.jsonl"], tmp_path / "run2" / "transcript")
    assert copied == [] and "symlink" in skipped[0]


def test_usage_is_summed_from_a_streamed_trace_with_huge_lines(tmp_path: Path):
    trace = tmp_path / "trace.jsonl"
    event = {"type": "result", "usage": {"in": 10, "out": 3}, "cost": 0.5}
    with open(trace, "w") as handle:
        handle.write(json.dumps({"type": "stdout", "text": json.dumps(event)}) + "\n")
        handle.write(json.dumps({"type": "stdout", "text": "{" + "z" * (5 << 20)}) + "\n")  # 5 MB, skipped
        handle.write(json.dumps({"type": "stdout", "text": json.dumps(event)}) + "\n")
        handle.write(json.dumps({"type": "stdout", "text": json.dumps({**event, "cost": float("nan")})}) + "\n")
    rule = {"match": {"type": "result"}, "input_tokens": "usage.in", "output_tokens": "usage.out", "cost_usd": "cost"}
    assert runner.usage_from_trace(trace, rule) == {"events": 3, "input_tokens": 30, "output_tokens": 9,
                                                    "cost_usd": 1.0}

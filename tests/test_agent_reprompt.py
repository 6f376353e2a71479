"""Re-prompting (agents.<name>.reprompt), for real: a stand-in Codex CLI runs in the bubblewrap sandbox,
leaves its session early, and is resumed with the time left until less than 30 minutes remain."""

from __future__ import annotations

import json
import shutil
import sys
import textwrap
from pathlib import Path

import pytest

from posttrainbench.agents import runner
from posttrainbench.agents.runner import run_cell
from posttrainbench.cells import Cell

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap (bwrap) is not installed")

# Every invocation is logged under HOME (the workspace). The first writes a checkpoint; the first two end at
# once (an agent that stops early); the third waits until less than 30 minutes are left, then ends.
FAKE_CODEX = """\
#!{python}
import json, os, pathlib, sys, time
home = pathlib.Path(os.environ["HOME"])
log = home / "fake-cli-calls.jsonl"
calls = len(log.read_text().splitlines()) if log.exists() else 0
with open(log, "a") as handle:
    handle.write(json.dumps({{"argv": sys.argv[1:], "time": time.time()}}) + "\\n")
if calls == 0:
    out = home / "final_model"; out.mkdir()
    (out / "config.json").write_text("{{}}"); (out / "model.safetensors").write_bytes(b"w")
if calls == 2:
    while time.time() < int(os.environ["PTB_DEADLINE"]) - 30 * 60 + 2:
        time.sleep(0.2)
print(json.dumps({{"type": "turn.completed", "usage": {{"input_tokens": 10, "output_tokens": 1}}}}), flush=True)
"""


@pytest.fixture
def fake_codex(tmp_path: Path, monkeypatch) -> Path:
    """A stand-in `codex` where the project installs the CLIs (bound read-only into the sandbox)."""
    bin_dir = tmp_path / "npm" / "node_modules" / ".bin"
    bin_dir.mkdir(parents=True)
    exe = bin_dir / "codex"
    exe.write_text(FAKE_CODEX.format(python=sys.executable))
    exe.chmod(0o755)
    monkeypatch.setattr(runner, "AGENT_CLI_BIN", bin_dir)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-agent")
    return exe


def run_codex(tmp_path: Path, spec: dict, seconds: float) -> tuple[dict, Path]:
    base = tmp_path / "base"
    base.mkdir(exist_ok=True)
    (base / "config.json").write_text("{}")
    run_dir = tmp_path / "run"
    record = run_cell(Cell("codex-reprompt", "tiny", "gsm8k", 1), spec, run_dir=run_dir, base_dir=base,
                      instruct_dir=None, train_data=None,
                      budget={"hours": seconds / 3600, "gpus": 0, "grace_seconds": 1, "max_checkpoint_gb": 1},
                      threads=1, config={}, sandbox_config={"backend": "bubblewrap", "network": "none"})
    return record, run_dir


def test_an_early_exit_is_resumed_with_the_time_left_until_30_minutes_remain(tmp_path, fake_codex):
    spec = {"type": "codex", "model": "gpt-5.2", "reasoning_effort": "xhigh", "reprompt": True}
    # 30 minutes and 8 seconds: two early exits are resumed, the third session ends under 30 minutes.
    record, run_dir = run_codex(tmp_path, spec, 30 * 60 + 8)
    calls = [json.loads(line) for line in (run_dir / "workspace" / "fake-cli-calls.jsonl").read_text().splitlines()]
    assert len(calls) == 3, calls
    assert record["resumptions"] == 2 and len(record["sessions"]) == 3
    assert record["status"] == "ok" and record["exit_code"] == 0 and not record["timed_out"]
    assert calls[0]["argv"][:2] == ["--search", "exec"] and "resume" not in calls[0]["argv"]
    for call, session in zip(calls[1:], record["sessions"][1:]):
        argv = call["argv"]
        assert argv[:4] == ["--search", "exec", "resume", "--last"]
        assert argv[argv.index("--model") + 1] == "gpt-5.2" and "model_reasoning_effort=xhigh" in argv
        message = argv[argv.index("gpt-5.2") + 1]
        assert message.startswith("Time is not up: 0h 30m remain") and "final_model/" in message
        assert 30 * 60 <= session["seconds_left_at_start"] < 30 * 60 + 8
    events = [json.loads(line) for line in (run_dir / "trace.jsonl").read_text().splitlines()]
    assert [e["type"] for e in events].count("reprompt") == 2 and [e["type"] for e in events].count("start") == 3
    assert record["usage"]["events"] == 3  # usage is summed over every session
    assert json.loads((run_dir / "run.json").read_text()) == record


def test_without_reprompt_an_early_exit_ends_the_run(tmp_path, fake_codex):
    record, run_dir = run_codex(tmp_path, {"type": "codex", "model": "gpt-5.2"}, 30 * 60 + 8)
    assert len((run_dir / "workspace" / "fake-cli-calls.jsonl").read_text().splitlines()) == 1
    assert record["resumptions"] == 0 and record["status"] == "ok"


def test_no_resumption_with_less_than_30_minutes_left(tmp_path, fake_codex):
    spec = {"type": "codex", "model": "gpt-5.2", "reprompt": True}
    record, run_dir = run_codex(tmp_path, spec, 29 * 60)
    assert len((run_dir / "workspace" / "fake-cli-calls.jsonl").read_text().splitlines()) == 1
    assert record["resumptions"] == 0

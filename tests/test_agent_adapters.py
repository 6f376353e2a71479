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
    spec = {"type": agent_type, "model": model}
    if agent_type != "gemini-cli":  # Gemini CLI takes no effort level (test_reasoning_effort_per_adapter)
        spec["reasoning_effort"] = "high"
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


def cell_of(agent: str = "a") -> Cell:
    return Cell(agent, "m", "gsm8k", 1)


def test_adapter_settings_are_the_published_ones(fake_clis, tmp_path):
    """Claude Code's shell commands may run for the whole budget; Codex searches the web and reports its
    reasoning; Gemini CLI's own sandbox is off inside ours; Claude is told to finish its processes."""
    argv, env, _ = cli_command({"type": "claude-code", "model": "claude-opus-4-6"}, cell_of(), tmp_path)
    assert env["BASH_MAX_TIMEOUT_MS"] == "36000000"
    assert "--dangerously-skip-permissions" in argv
    prompt = argv[argv.index("-p") + 1]
    assert "TASK.md" in prompt and "non-interactively" in prompt
    argv, _, _ = cli_command({"type": "codex", "model": "gpt-5.2"}, cell_of(), tmp_path)
    assert argv[1:3] == ["--search", "exec"]  # --search is a top-level flag, before the subcommand
    assert ["-c", "model_reasoning_summary=detailed"] == argv[argv.index("-c"):argv.index("-c") + 2]
    assert {"--json", "--skip-git-repo-check", "--dangerously-bypass-approvals-and-sandbox"} <= set(argv)
    assert "non-interactively" not in argv[-1]  # the note is Claude Code's only, as published
    _, env, _ = cli_command({"type": "gemini-cli", "model": "gemini-3-pro-preview"}, cell_of(), tmp_path)
    assert env["GEMINI_SANDBOX"] == "false"


@pytest.mark.parametrize("agent_type, level, expect_argv, expect_env", [
    ("claude-code", "max", [], {"CLAUDE_CODE_EFFORT_LEVEL": "max"}),
    ("codex", "xhigh", ["-c", "model_reasoning_effort=xhigh"], {}),
    ("codex", "low", ["-c", "model_reasoning_effort=low"], {}),
    ("opencode", "high", ["--variant", "high"], {}),
    ("openai-compatible", "minimal", ["--variant", "minimal"], {}),
])
def test_reasoning_effort_reaches_each_cli(fake_clis, tmp_path, agent_type, level, expect_argv, expect_env):
    spec = {"type": agent_type, "model": "m1", "reasoning_effort": level, "api_key_env": "ZHIPU_API_KEY",
            "base_url": "http://node7:8000/v1"}
    if agent_type in ("claude-code", "codex"):
        del spec["api_key_env"]
    argv, env, _ = cli_command(spec, cell_of(), tmp_path)
    if expect_argv:
        n = len(expect_argv)
        assert any(argv[i:i + n] == expect_argv for i in range(len(argv))), argv
    assert {k: env[k] for k in expect_env} == expect_env
    without, env_without, _ = cli_command({**spec, "reasoning_effort": None}, cell_of(), tmp_path)
    assert not any(level in a for a in without[1:] if "reasoning_summary" not in a)
    assert "CLAUDE_CODE_EFFORT_LEVEL" not in env_without


BASE_CONFIG = {"models": {"m": {"base": "x"}}, "benchmarks": ["gsm8k"]}


def agent_config(**entry) -> dict:
    return {**BASE_CONFIG, "agents": {"x": entry}}


def test_reasoning_effort_is_validated_per_adapter_naming_the_allowed_values(fake_clis, tmp_path):
    with pytest.raises(ConfigError) as error:
        validate_config(agent_config(type="codex", model="gpt-5.2", reasoning_effort="max"))
    assert str(error.value) == ("config key 'agents.x.reasoning_effort' has value 'max'; allowed values for type "
                                "codex: minimal, low, medium, high, xhigh")
    with pytest.raises(ConfigError, match="allowed values for type claude-code: low, medium, high, xhigh, max"):
        validate_config(agent_config(type="claude-code", model="c", reasoning_effort="extreme"))
    # A CLI that cannot honour any level refuses it in one line, at validation and again when the run starts.
    with pytest.raises(ConfigError) as error:
        validate_config(agent_config(type="gemini-cli", model="g", reasoning_effort="high"))
    assert "agents.x.reasoning_effort' cannot be honoured: Gemini CLI" in str(error.value)
    assert "\n" not in str(error.value)
    with pytest.raises(AgentNotRunnable, match="cannot be honoured: Gemini CLI"):
        cli_command({"type": "gemini-cli", "model": "g", "reasoning_effort": "high"}, cell_of("x"), tmp_path)
    with pytest.raises(AgentNotRunnable, match="allowed values for type codex"):
        cli_command({"type": "codex", "model": "g", "reasoning_effort": "ultra"}, cell_of("x"), tmp_path)
    for level in ("minimal", "low", "medium", "high", "xhigh"):
        validate_config(agent_config(type="codex", model="gpt-5.2", reasoning_effort=level))


def test_published_agent_variants_are_config_entries():
    """codexlow / codexhigh / codex_non_api_xhigh_reprompt / claude_non_api_max, as entries of one config."""
    config = validate_config({**BASE_CONFIG, "agents": {
        "codex-low": {"type": "codex", "model": "gpt-5.2", "reasoning_effort": "low"},
        "codex-high": {"type": "codex", "model": "gpt-5.2", "reasoning_effort": "high"},
        "codex-xhigh-reprompt-login": {"type": "codex", "model": "gpt-5.2", "reasoning_effort": "xhigh",
                                       "reprompt": True, "credentials_file": "~/.codex/auth.json"},
        "claude-max-login": {"type": "claude-code", "model": "claude-opus-4-6", "reasoning_effort": "max",
                             "credentials_file": "~/.claude/.credentials.json"},
        "gemini-reprompt": {"type": "gemini-cli", "model": "gemini-3-pro-preview", "reprompt": True},
    }})
    assert config["agents"]["codex-xhigh-reprompt-login"]["reprompt"] is True
    refused = {
        "applies to coding-agent CLIs only": {"type": "builtin", "recipe": "sft", "reprompt": True},
        "'agents.x.credentials_file' cannot be used": {"type": "openai-compatible", "model": "q",
                                                       "base_url": "http://n:1/v1", "credentials_file": "/a"},
        "exclude each other": {"type": "opencode", "model": "zai/glm-4.6", "api_key_env": "ZHIPU_API_KEY",
                               "credentials_file": "/a"},
    }
    for reason, entry in refused.items():
        with pytest.raises(ConfigError, match=reason):
            validate_config(agent_config(**entry))


def test_shipped_config_validates():
    from posttrainbench.config import load_config

    config = load_config(Path(__file__).resolve().parents[1] / "config" / "posttrainbench.yaml")
    assert config["agents"]["claude-code-opus-4.6"]["reasoning_effort"] == "high"


def test_a_subscription_login_replaces_the_api_key(fake_clis, tmp_path):
    spec = {"type": "codex", "model": "gpt-5.2", "credentials_file": str(tmp_path / "auth.json")}
    argv, env, _ = cli_command(spec, cell_of(), tmp_path)
    assert not [k for k in KEYS if k in env]  # no key enters, though the pipeline holds OPENAI_API_KEY
    assert argv[argv.index("forced_login_method=chatgpt") - 1] == "-c"
    _, env, _ = cli_command({**spec, "type": "gemini-cli"}, cell_of(), tmp_path)
    assert env["GOOGLE_GENAI_USE_GCA"] == "true" and "GEMINI_API_KEY" not in env


@pytest.mark.parametrize("agent_type, resume", [
    ("codex", ["--search", "exec", "resume", "--last"]),
    ("claude-code", ["-p", "MSG", "--continue"]),
    ("gemini-cli", ["--resume", "latest", "--prompt", "MSG"]),
    ("opencode", ["run", "--continue"]),
])
def test_resume_commands_continue_the_latest_session(fake_clis, tmp_path, agent_type, resume):
    spec = {"type": agent_type, "model": "m1", "api_key_env": "ZHIPU_API_KEY"}
    if agent_type != "opencode":
        del spec["api_key_env"]
    argv, _, _ = cli_command(spec, cell_of(), tmp_path, message="MSG")
    assert argv[1:1 + len(resume)] == resume
    assert "MSG" in argv and not any("TASK.md" in a for a in argv)


def test_the_hub_is_left_reachable_under_open(monkeypatch, tmp_path):
    """Network open (and proxy) leave the agent's hub clients online, whatever the pipeline's own offline
    setting; the proxy's allow-list logic lets the hub's hosts through. No connection is made here."""
    import asyncio

    from posttrainbench.agents import egress
    from posttrainbench.agents.runner import _agent_env
    from posttrainbench.agents.sandbox import host_addresses

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for network, offline in (("open", "0"), ("proxy", "0"), ("none", "1")):
        env = _agent_env(tmp_path, 1, cell_of(), tmp_path, 0, 0, network)
        assert env["HF_HUB_OFFLINE"] == env["HF_DATASETS_OFFLINE"] == env["TRANSFORMERS_OFFLINE"] == offline

    public = "3.165.102.1"  # a public address, as huggingface.co resolves to (no DNS lookup here)

    async def resolve(host, port):
        return [public]

    monkeypatch.setattr(egress, "_resolve", resolve)
    assert public not in host_addresses()  # the open policy makes only the host's own addresses unreachable
    hub = ("huggingface.co", "cdn-lfs.huggingface.co", "cas-bridge.xethub.hf.co")
    for allowed_hosts in (None, ["huggingface.co", "*.huggingface.co", "*.hf.co"]):
        gateway = egress.EgressGateway(tmp_path, None, allowed_hosts=allowed_hosts)
        for host in hub:
            ok, addresses = asyncio.run(gateway._allowed(host, 443))
            assert ok and addresses == [public], (allowed_hosts, host)
    gateway = egress.EgressGateway(tmp_path, None, allowed_hosts=["pypi.org"])
    assert not asyncio.run(gateway._allowed("huggingface.co", 443))[0]  # the check can refuse

"""The options of a coding-agent entry that depend on its CLI (``adapters.yaml``): reasoning effort,
re-prompting and subscription logins. Checked when the configuration is validated and again when a run
starts, each refusal one line naming the config key and what is allowed."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import yaml

# Re-prompting stops when less than this is left before the deadline (the published *_reprompt agents' rule).
REPROMPT_MIN_MINUTES = 30


@lru_cache(maxsize=1)
def adapters() -> dict:
    """The coding-agent CLI adapters (``adapters.yaml``), keyed by agent type."""
    return yaml.safe_load((Path(__file__).with_name("adapters.yaml")).read_text())


def effort_values(agent_type: str) -> list[str]:
    """The reasoning-effort levels an adapter's CLI accepts (empty when it has none)."""
    return list((adapters().get(agent_type, {}).get("reasoning_effort") or {}).get("values") or [])


def agent_option_problem(name: str, spec: dict) -> str | None:
    """Why the entry ``agents.<name>`` asks for something its CLI cannot do (one line), or None."""
    agent_type = spec.get("type")
    adapter = adapters().get(agent_type)
    cli_options = [key for key in ("reasoning_effort", "reprompt", "credentials_file")
                   if spec.get(key) not in (None, False)]
    if adapter is None:
        if cli_options:
            return (f"config key 'agents.{name}.{cli_options[0]}' applies to coding-agent CLIs only "
                    f"(types: {', '.join(adapters())}), not to type {agent_type!r}")
        return None
    effort = spec.get("reasoning_effort")
    if effort is not None:
        rule = adapter.get("reasoning_effort") or {}
        if rule.get("refused"):
            return f"config key 'agents.{name}.reasoning_effort' cannot be honoured: {rule['refused']}"
        if effort not in rule.get("values", []):
            return (f"config key 'agents.{name}.reasoning_effort' has value {effort!r}; allowed values for "
                    f"type {agent_type}: {', '.join(rule.get('values', []))}")
    if spec.get("reprompt") and not adapter.get("resume_argv"):
        return f"config key 'agents.{name}.reprompt': type {agent_type} has no way to resume its session"
    if spec.get("credentials_file"):
        login = adapter.get("credentials") or {}
        if login.get("refused") or not login.get("path"):
            return (f"config key 'agents.{name}.credentials_file' cannot be used: "
                    f"{login.get('refused') or f'type {agent_type} has no credentials file'}")
        if spec.get("api_key_env"):
            return (f"config keys 'agents.{name}.credentials_file' and 'agents.{name}.api_key_env' exclude each "
                    "other: a subscription login replaces the API key")
    return None

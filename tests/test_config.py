"""Config validation: defaults are filled, and every mistake is one line naming the key."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from posttrainbench.cells import REFERENCE_AGENTS
from posttrainbench.config import ConfigError, iter_cells, load_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def _with(**changes):
    config = copy.deepcopy(DEFAULT)
    for dotted, value in changes.items():
        node = config
        *parents, leaf = dotted.split("__")
        for key in parents:
            node = node[key]
        node[leaf] = value
    return config


def test_embedded_default_is_valid_and_gets_defaults():
    config = load_config(ROOT / "config" / "config.yaml")
    assert config["evaluation"]["code_timeout_seconds"] == 30  # the published limit per program
    assert config["evaluation"]["protocol"] == "posttrainbench-v1"
    assert config["evaluation"]["templates"] == {"use": "project", "source": None}  # embedded default: offline
    assert config["evaluation"]["per_benchmark"]["gsm8k"] == {"limit": 4, "max_tokens": 192}
    assert config["agents"]["reference-sft"]["sft"]["bf16"] == "auto"
    assert config["models"]["smollm2-135m"]["instruct"] is None
    cells = list(iter_cells(config))
    assert {c.agent for c in cells} == {"base", "reference-sft"}
    assert len(cells) == 2 * 1 * 2 * 1


def test_published_matrix_cells():
    config = load_config(ROOT / "config" / "posttrainbench.yaml")
    cells = list(iter_cells(config))
    coding_agents = [a for a in config["agents"] if a not in REFERENCE_AGENTS]
    assert len(coding_agents) >= 4
    # The reference rows (base, base-fewshot, instruct) run once per base model and benchmark.
    assert len(cells) == 4 * 7 * len(coding_agents) * 3 + 3 * 4 * 7
    assert len(set(cells)) == len(cells)


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"benchmarks": ["gsm8k", "gsm9k"]}, ["benchmarks[1]", "gsm9k", "humaneval"]),
        ({"budget__hours": -1}, ["budget.hours", "-1", "> 0"]),
        ({"budget__hours": 0}, ["budget.hours", "> 0"]),
        ({"budget__gpus": -2}, ["budget.gpus", ">= 0"]),
        ({"evaluation__backend": "tensorrt"}, ["evaluation.backend", "tensorrt", "vllm"]),
        ({"seeds": ["one"]}, ["seeds[0]", "integer"]),
        ({"agents__reference-sft__sft__max_step": 3}, ["agents.reference-sft.sft.max_step", "max_steps"]),
        ({"agents__base__type": "human"}, ["agents.base.type", "claude-code"]),
        ({"models__Bad/Key": {"base": "x"}}, ["models", "Bad/Key"]),
        ({"evaluation__protocol": "published"},
         ["evaluation.protocol", "'published'", "posttrainbench-v1", "posttrainbench-v1-greedy"]),
        ({"evaluation__templates": {"use": "checkpoint"}}, ["evaluation.templates.use", "published", "project"]),
        ({"evaluation__per_benchmark__gsm8k__max_gen_toks": 256},
         ["evaluation.per_benchmark.gsm8k.max_gen_toks", "not allowed", "max_tokens"]),
        ({"evaluation__per_benchmark__gsm8k__max_tokens": 0}, ["evaluation.per_benchmark.gsm8k.max_tokens", ">= 1"]),
        ({"evaluation__per_benchmark__humaneval__subset": "easy"},
         ["evaluation.per_benchmark.humaneval.subset", "not allowed"]),
        ({"evaluation__chat_template": "family"}, ["evaluation.chat_template", "not allowed", "templates"]),
        ({"evaluation__sampling": "greedy"}, ["evaluation.sampling", "not allowed", "protocol"]),
        ({"evaluation__retries": [1024]}, ["evaluation.retries", "not allowed"]),
        ({"evaluation__max_model_len": 4096}, ["evaluation.max_model_len", "not allowed"]),
    ],
)
def test_broken_configs_fail_with_one_line_naming_the_key(changes, expected):
    with pytest.raises(ConfigError) as info:
        validate_config(_with(**changes))
    message = str(info.value)
    assert "\n" not in message
    for fragment in expected:
        assert fragment in message, message


def test_grading_placement_and_agent_scratch_are_checked():
    """execution.grading (where LLM-graded jobs run) and sandbox.scratch_dir (apptainer's /tmp) get defaults
    and reject wrong values with one line naming the key."""
    filled = validate_config(copy.deepcopy(DEFAULT))
    assert filled["execution"] == {"grading": "local"} and filled["sandbox"]["scratch_dir"] is None
    for section, value, fragments in (
        ("execution", {"grading": "login"}, ["execution.grading", "'login'", "local, cluster"]),
        ("sandbox", {"scratch_dir": 5}, ["sandbox.scratch_dir", "string or null"]),
    ):
        config = copy.deepcopy(DEFAULT)
        config[section] = {**config.get(section, {}), **value}
        with pytest.raises(ConfigError) as info:
            validate_config(config)
        assert "\n" not in str(info.value) and all(f in str(info.value) for f in fragments), str(info.value)


def test_top_level_typo_suggests_the_key():
    config = copy.deepcopy(DEFAULT)
    config["seed"] = config.pop("seeds")
    with pytest.raises(ConfigError, match=r"'seed' is not allowed \(did you mean 'seeds'\?\)"):
        validate_config(config)


def test_missing_required_key():
    config = copy.deepcopy(DEFAULT)
    del config["agents"]
    with pytest.raises(ConfigError, match="'agents' is required"):
        validate_config(config)


def test_instruct_agent_needs_instruct_models():
    config = copy.deepcopy(DEFAULT)
    config["agents"]["instruct"] = {"type": "builtin", "recipe": "instruct"}
    with pytest.raises(ConfigError, match="models.smollm2-135m.instruct"):
        validate_config(config)


def test_reserved_reference_names():
    config = copy.deepcopy(DEFAULT)
    config["agents"]["base"] = {"type": "builtin", "recipe": "sft"}
    with pytest.raises(ConfigError, match="agents.base"):
        validate_config(config)


@pytest.mark.parametrize("agents, fragment", [
    ({"base-fewshot": {"type": "builtin", "recipe": "base"}},
     "'agents.base-fewshot' is reserved for the built-in 'base' recipe with prompting 'few-shot'"),
    ({"my-base": {"type": "builtin", "recipe": "base", "prompting": "few-shot"}},
     "'agents.my-base.recipe' is 'base'; the reference recipe 'base' must be registered under the agent name "
     "'base' or 'base-fewshot'"),
    ({"cc": {"type": "claude-code", "model": "m", "prompting": "few-shot"}},
     "'agents.cc.prompting' applies to builtin agents only"),
    ({"sft": {"type": "builtin", "recipe": "sft", "prompting": "zero-shot"}},
     "config key 'agents.sft.prompting' has value 'zero-shot'"),
])
def test_prompting_is_checked(agents, fragment):
    config = copy.deepcopy(DEFAULT)
    config["agents"].update(agents)
    with pytest.raises(ConfigError) as error:
        validate_config(config)
    assert fragment in str(error.value)


def test_fewshot_reference_row_is_valid():
    config = copy.deepcopy(DEFAULT)
    config["agents"]["base-fewshot"] = {"type": "builtin", "recipe": "base", "prompting": "few-shot"}
    cells = list(iter_cells(validate_config(config)))
    assert {c.agent for c in cells} == {"base", "base-fewshot", "reference-sft"}


def test_weights_needed_without_instruct_row():
    config = copy.deepcopy(DEFAULT)
    config["scoring"]["weights"] = {"gsm8k": 1.0}
    with pytest.raises(ConfigError, match="scoring.weights.humaneval"):
        validate_config(config)


def test_base_row_is_always_part_of_the_matrix():
    config = copy.deepcopy(DEFAULT)
    del config["agents"]["base"]
    cells = list(iter_cells(validate_config(config)))
    assert {c.agent for c in cells} == {"base", "reference-sft"}


def test_validation_does_not_mutate_input():
    config = copy.deepcopy(DEFAULT)
    validate_config(config)
    assert config == DEFAULT

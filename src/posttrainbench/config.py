"""Load and validate the workflow configuration; enumerate its cells.

Validation fills the schema's defaults and turns the first schema violation into a single line
that names the offending key and what is allowed, so a typo fails at once, not hours into a sweep.
"""

from __future__ import annotations

import copy
import difflib
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Iterator

import jsonschema
import yaml

from .cells import REFERENCE_RECIPES, Cell

SCHEMA_RESOURCE = "schema.yaml"


class ConfigError(ValueError):
    """A configuration problem, with a one-line message naming the key."""


def load_schema() -> dict:
    # libyaml's loader where built: the schema is parsed at every workflow start.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load(resources.files(__package__).joinpath(SCHEMA_RESOURCE).read_text(), Loader=loader)


def _extend_with_defaults(validator_class):
    """A validator that also fills in ``default`` values, as the schema declares them."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
                ref = subschema.get("$ref")
                if ref and name not in instance and "default" in subschema:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_Validator = _extend_with_defaults(jsonschema.Draft202012Validator)


def _key_path(path: Iterable[Any]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _schema_at(schema: dict, root: dict) -> dict:
    ref = schema.get("$ref")
    if ref and ref.startswith("#/"):
        node = root
        for part in ref[2:].split("/"):
            node = node[part]
        return node
    return schema


def _describe(error: jsonschema.ValidationError, root_schema: dict) -> str:
    """One line: where, what was found, what is allowed."""
    where = _key_path(error.absolute_path)
    validator = error.validator
    if validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(allowed))
        name = unknown[0] if unknown else "?"
        key = f"{where}.{name}" if error.absolute_path else name
        hint = difflib.get_close_matches(name, allowed, n=1)
        did_you_mean = f" (did you mean '{hint[0]}'?)" if hint else ""
        return f"config key '{key}' is not allowed{did_you_mean}; allowed keys here: {', '.join(allowed)}"
    if validator == "enum":
        allowed = ", ".join(str(v) for v in error.validator_value)
        return f"config key '{where}' has value {error.instance!r}; allowed values: {allowed}"
    if validator == "propertyNames":
        sub = error.schema.get("propertyNames", {})
        if "enum" in sub:
            allowed = ", ".join(sub["enum"])
            return f"config key '{where}' has an entry {error.instance!r}... not allowed; allowed names: {allowed}"
        return f"config key '{where}': a name does not match {sub.get('pattern')!r} ({error.message})"
    if validator in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        op = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}[validator]
        return f"config key '{where}' is {error.instance!r}; it must be {op} {error.validator_value}"
    if validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        key = f"{where}.{missing}" if error.absolute_path else missing
        return f"config key '{key}' is required but missing"
    if validator == "type":
        expected = error.validator_value
        expected = " or ".join(expected) if isinstance(expected, list) else expected
        return f"config key '{where}' is {error.instance!r}; it must be of type {expected}"
    return f"config key '{where}': {error.message}"


def _first_error(errors: list[jsonschema.ValidationError]) -> jsonschema.ValidationError:
    # Conditional requirements (allOf/if/then) only matter once the plain fields are right:
    # report a wrong ``type`` value before the fields that value would require.
    plain = [e for e in errors if "allOf" not in e.schema_path]
    return jsonschema.exceptions.best_match(plain or errors)


def validate_config(config: dict) -> dict:
    """Validate ``config`` against the schema, fill defaults, check cross-field rules. Returns a new dict."""
    if not isinstance(config, dict):
        raise ConfigError("the configuration must be a mapping of keys to values")
    config = copy.deepcopy(config)
    schema = load_schema()
    errors = list(_Validator(schema).iter_errors(config))
    if errors:
        raise ConfigError(_describe(_first_error(errors), schema))
    _check_semantics(config)
    return config


def _check_sandbox(config: dict) -> None:
    """What the agents' sandbox needs: an image for apptainer (whether the file exists is checked by the agent
    job, where the image is used: a dry run needs none), an opt-in for GPU budgets in bubblewrap."""
    sandbox, gpus = config["sandbox"], config["budget"]["gpus"]
    if sandbox["backend"] == "apptainer" and not sandbox.get("image"):
        raise ConfigError("config key 'sandbox.image' is required with sandbox.backend apptainer (containers/agent.sif)")
    # backend auto resolves on the node that runs the agent: the agent job refuses bubblewrap there
    if sandbox["backend"] == "bubblewrap" and gpus > 0 and not sandbox.get("allow_bubblewrap_with_gpus"):
        raise ConfigError(f"config key 'sandbox.backend' is 'bubblewrap' with budget.gpus {gpus}: agents would "
                          "train in the pipeline's environment, not the agent image; set backend apptainer with "
                          "sandbox.image, or sandbox.allow_bubblewrap_with_gpus: true")


def _check_semantics(config: dict) -> None:
    _check_sandbox(config)
    agents = config["agents"]
    for name, spec in agents.items():
        recipe_and_prompting = (spec.get("recipe"), spec.get("prompting", "chat"))
        if spec["type"] == "builtin" and spec["recipe"] in ("base", "instruct") and name not in REFERENCE_RECIPES:
            names = " or ".join(repr(n) for n, (r, _) in REFERENCE_RECIPES.items() if r == spec["recipe"])
            raise ConfigError(
                f"config key 'agents.{name}.recipe' is {spec['recipe']!r}; the reference recipe "
                f"{spec['recipe']!r} must be registered under the agent name {names}"
            )
        if name in REFERENCE_RECIPES and not (spec["type"] == "builtin"
                                              and recipe_and_prompting == REFERENCE_RECIPES[name]):
            recipe, prompting = REFERENCE_RECIPES[name]
            raise ConfigError(f"config key 'agents.{name}' is reserved for the built-in {recipe!r} recipe "
                              f"with prompting {prompting!r}")
        if "prompting" in spec and spec["type"] != "builtin":
            raise ConfigError(f"config key 'agents.{name}.prompting' applies to builtin agents only "
                              "(post-trained checkpoints are scored with the chat protocol)")
        from .agents.options import agent_option_problem

        if problem := agent_option_problem(name, spec):
            raise ConfigError(problem)
    if "instruct" in agents:
        missing = [m for m, spec in config["models"].items() if not spec.get("instruct")]
        if missing:
            raise ConfigError(
                f"config key 'models.{missing[0]}.instruct' is required when the 'instruct' agent is run"
            )
    weights = config["scoring"]["weights"]
    if weights is not None:
        missing = [b for b in config["benchmarks"] if b not in weights]
        if missing and "instruct" not in agents:
            raise ConfigError(
                f"config key 'scoring.weights.{missing[0]}' is missing; give a weight for every benchmark "
                "run, or run the 'instruct' agent so weights follow from the reference rows"
            )
    from .graders import check_grader_config

    try:
        check_grader_config(config)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def load_config(path: str | Path) -> dict:
    """Read a YAML file and validate it."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}".replace("\n", " ")) from None
    return validate_config(raw or {})


def agent_seeds(config: dict, agent: str) -> list[int]:
    spec = config["agents"][agent]
    if "seeds" in spec:
        return list(spec["seeds"])
    return list(config["seeds"])


def iter_cells(config: dict) -> Iterator[Cell]:
    """Every cell of the matrix. The ``base`` reference row is always included: flagged or failed
    cells are scored with its score."""
    agents = dict(config["agents"])
    seeds_of = {a: agent_seeds(config, a) for a in agents}
    if "base" not in agents:
        seeds_of["base"] = [min(config["seeds"])]
    for agent, seeds in seeds_of.items():
        for model in config["models"]:
            for benchmark in config["benchmarks"]:
                for seed in seeds:
                    yield Cell(agent, model, benchmark, seed)


def agent_spec(config: dict, agent: str) -> dict:
    """An agent's spec; ``base`` is implicit when not configured."""
    if agent == "base" and "base" not in config["agents"]:
        return {"type": "builtin", "recipe": "base"}
    return config["agents"][agent]

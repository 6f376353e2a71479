"""The integrity judge: deterministic checks with evidence (checkpoint, weight provenance, contamination, harness,
forbidden APIs), an optional LLM judge on top, and the verdict JSON. See docs/judge.md."""

from pathlib import Path

from .verdict import REASON_OF_CHECK, judge_run

__all__ = ["REASON_OF_CHECK", "REFERENCE_DATA_MANIFEST", "judge_run", "default_test_sets", "judge_settings", "judge_rule_inputs",
           "reference_data_inputs", "write_reference_manifest", "read_reference_manifest"]

# Every judge job's view of the test sets and allowed data (rule judge_reference_data writes it).
REFERENCE_DATA_MANIFEST = "resources/judge/reference_data.json"


def default_test_sets(config: dict) -> list[str]:
    """``judge.contamination.test_sets`` when set, else the config's benchmarks plus every benchmark whose test set
    the stage rule can produce offline (GPQA, gated on the hub, only when the config runs it)."""
    from ..benchmarks import BENCHMARKS, NEEDS_HUB

    explicit = config.get("judge", {}).get("contamination", {}).get("test_sets")
    if explicit is not None:
        return sorted(set(explicit))
    offline = {key for key in BENCHMARKS if key not in NEEDS_HUB}
    return sorted(set(config["benchmarks"]) | offline)


def judge_settings(config: dict) -> dict:
    """The judge's settings as the rule passes them (a rule param, so a change re-runs only judge and scoring):
    the config's ``judge`` section with the built-in prompt filled in."""
    import copy

    from .llm import DEFAULT_PROMPT

    settings = copy.deepcopy(config.get("judge", {}))
    llm = settings.setdefault("llm", {})
    if not llm.get("prompt"):
        llm["prompt"] = DEFAULT_PROMPT
    return settings


def judge_rule_inputs(config: dict, wildcards) -> dict[str, str | list[str]]:
    """Inputs of one judge job, which audits an agent's runs on one base model and seed across the benchmarks:
    those run records (in the config's benchmark order), the staged base (and instruct) model, and the
    reference-data manifest (one file standing for every test set and allowed data set)."""
    model, agent, seed = wildcards.model, wildcards.agent, wildcards.seed
    inputs: dict[str, str | list[str]] = {
        "runs": [f"results/runs/{agent}/{model}/{benchmark}/seed{seed}/run.json" for benchmark in config["benchmarks"]],
        "base_model": f"resources/models/{model}/base",
        "reference_data": REFERENCE_DATA_MANIFEST,
    }
    if config["models"][model].get("instruct"):
        inputs["instruct_model"] = f"resources/models/{model}/instruct"
    return inputs


def reference_data_inputs(config: dict) -> dict[str, str]:
    """What the reference-data manifest lists: the test sets scanned for contamination (with their meta) and the
    allowed training data."""
    inputs = {}
    for name in default_test_sets(config):
        inputs[f"test_{name}"] = f"resources/benchmarks/{name}/test.jsonl"
        inputs[f"meta_{name}"] = f"resources/benchmarks/{name}/meta.json"
    for name in config["judge"]["contamination"]["allowed_training_data"]:
        inputs[f"allowed_{name}"] = f"resources/datasets/{name}.jsonl"
    return inputs


def write_reference_manifest(inputs: dict[str, str], out: Path) -> dict:
    """Write the manifest: ``{"test_sets": {name: {"path", "sha256"}}, "allowed_data": {name: {"path"}}}``, the
    test checksums taken from the staged meta.json files."""
    from ..io import atomic_write_json, read_json

    manifest: dict = {"test_sets": {}, "allowed_data": {}}
    for key, path in sorted(inputs.items()):
        kind, _, name = key.partition("_")
        if kind == "test":
            meta = read_json(Path(inputs[f"meta_{name}"]))
            manifest["test_sets"][name] = {"path": str(path), "sha256": meta["sha256"]}
        elif kind == "allowed":
            manifest["allowed_data"][name] = {"path": str(path)}
    atomic_write_json(Path(out), manifest)
    return manifest


def read_reference_manifest(path: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """The test sets and allowed data sets of a manifest, as ``{name: path}`` each."""
    from ..io import read_json

    manifest = read_json(Path(path))
    return ({name: Path(entry["path"]) for name, entry in manifest["test_sets"].items()},
            {name: Path(entry["path"]) for name, entry in manifest["allowed_data"].items()})

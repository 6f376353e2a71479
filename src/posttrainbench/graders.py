"""LLM graders for the two benchmarks scored by a model: Arena-Hard v2.0 creative writing (pairwise against the
fixed baseline answers, both orders) and HealthBench (one grader call per rubric criterion).

Any OpenAI-compatible chat-completions endpoint works: a hosted API, or a local ``vllm serve`` of an open model
(:class:`posttrainbench.serving.OpenAICompatibleServer`). The grader is configured under
``evaluation.grader`` (``base_url``, ``model``, ``api_key_env``, ...). Grading needs no GPU: it reads the samples
file that generation wrote and calls the endpoint. A grader call that fails or cannot be parsed is retried,
then counted in ``n_errors``; the score is the mean over the items that were graded.
"""

from __future__ import annotations

import json
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from . import benchmarks as bm

log = logging.getLogger(__name__)


class GraderError(RuntimeError):
    """The grader is misconfigured or unreachable, or graded no item at all."""


@dataclass(frozen=True)
class GraderSettings:
    base_url: str
    model: str
    api_key_env: str | None = None
    max_tokens: int = 1024
    temperature: float = 0.0
    concurrency: int = 4
    timeout_seconds: float = 120.0
    retries: int = 2
    structured: bool = True  # ask for JSON-schema-constrained replies (OpenAI and vLLM both support it)
    explain: bool = True  # with structured replies: reasoning before the label (off for small, fast graders)

    @classmethod
    def from_options(cls, options: dict | None) -> "GraderSettings":
        """From the ``evaluation.grader`` config section; a clear error names the missing key."""
        options = options or {}
        for key in ("base_url", "model"):
            if not options.get(key):
                raise GraderError(f"config key evaluation.grader.{key} is required to grade this benchmark")
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in options.items() if k in known and v is not None})

    def api_key(self) -> str:
        if not self.api_key_env:
            return "EMPTY"  # local servers accept any key
        key = os.environ.get(self.api_key_env)
        if not key:
            raise GraderError(f"evaluation.grader.api_key_env names {self.api_key_env}, which is not set in the "
                              "grade job's environment")
        return key


def grader_key_env(options: dict | None) -> str | None:
    """The name of the one API key a grade job keeps in its environment (``evaluation.grader.api_key_env``)."""
    name = ((options or {}).get("grader") or {}).get("api_key_env")
    return name if isinstance(name, str) and name else None


REASONING_FIELDS = ("judgment", "explanation")


class ChatGrader:
    """One grader endpoint: ``ask(system, user) -> text``, retried ``retries`` times on any error."""

    def __init__(self, settings: GraderSettings):
        from openai import OpenAI

        self.settings = settings
        self.client = OpenAI(base_url=settings.base_url, api_key=settings.api_key(),
                             timeout=settings.timeout_seconds, max_retries=0)

    def ask(self, system: str, user: str, schema: dict | None = None) -> str:
        extra: dict[str, Any] = {}
        if schema is not None and self.settings.structured:
            if not self.settings.explain:
                schema = {**schema, "properties": {k: v for k, v in schema["properties"].items()
                                                   if k not in REASONING_FIELDS},
                          "required": [k for k in schema["required"] if k not in REASONING_FIELDS]}
            extra["response_format"] = {"type": "json_schema",
                                        "json_schema": {"name": "grade", "schema": schema, "strict": True}}
        last: Exception | None = None
        for _ in range(self.settings.retries + 1):
            try:
                reply = self.client.chat.completions.create(
                    model=self.settings.model,
                    messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
                    max_tokens=self.settings.max_tokens, temperature=self.settings.temperature, **extra,
                )
                return reply.choices[0].message.content or ""
            except Exception as exc:  # noqa: BLE001 - network and server errors alike are retried
                last = exc
        raise GraderError(f"grader call failed after {self.settings.retries + 1} tries: {type(last).__name__}: {last}")


# ----------------------------------------------------------------------------------------------------------------
# Arena-Hard
# ----------------------------------------------------------------------------------------------------------------

ARENA_SYSTEM = (
    "You are an impartial judge of two AI assistants' answers to the user prompt shown below. First write your "
    "own answer to the prompt, then compare both assistants' answers with it and with each other, judging "
    "helpfulness, relevance, concision, creativity and missing important information. Finish with exactly one "
    "verdict label on the last line:\n"
    "[[A>>B]] if assistant A is significantly better, [[A>B]] if A is slightly better, [[A=B]] for a tie, "
    "[[B>A]] if B is slightly better, [[B>>A]] if B is significantly better."
)


def arena_user_message(prompt: str, answer_a: str, answer_b: str) -> str:
    return (
        f"<|User Prompt|>\n{prompt}\n\n<|The Start of Assistant A's Answer|>\n{answer_a}\n"
        f"<|The End of Assistant A's Answer|>\n\n<|The Start of Assistant B's Answer|>\n{answer_b}\n"
        "<|The End of Assistant B's Answer|>"
    )


# Reasoning first, then the label (as free-text judgments end with it).
ARENA_SCHEMA = {
    "type": "object",
    "properties": {"judgment": {"type": "string"},
                   "verdict": {"type": "string", "enum": [f"[[{v}]]" for v in bm.ARENA_VERDICT_SCORE]}},
    "required": ["judgment", "verdict"],
    "additionalProperties": False,
}


def grade_arena_item(ask: Callable[..., str], record: dict, response: str) -> dict[str, Any]:
    """Both orderings of one prompt; ``score`` is the model's mean score (None if no verdict parsed)."""
    first = ask(ARENA_SYSTEM, arena_user_message(record["prompt"], response, record["baseline_answer"]), ARENA_SCHEMA)
    second = ask(ARENA_SYSTEM, arena_user_message(record["prompt"], record["baseline_answer"], response), ARENA_SCHEMA)
    v1, v2 = bm.parse_arena_verdict(first), bm.parse_arena_verdict(second)
    return {"verdicts": [v1, v2], "score": bm.arena_item_score(v1, v2), "judgments": [first, second]}


# ----------------------------------------------------------------------------------------------------------------
# HealthBench
# ----------------------------------------------------------------------------------------------------------------

HEALTHBENCH_SYSTEM = (
    "You grade one response of an AI assistant in a health conversation against one rubric criterion. Decide "
    "whether the response meets the criterion. For a criterion that describes undesirable behaviour, answer "
    "whether the response shows that behaviour. Reply with a JSON object only: "
    '{"explanation": "<one or two sentences>", "criteria_met": true or false}'
)

HEALTHBENCH_SCHEMA = {
    "type": "object",
    "properties": {"explanation": {"type": "string"}, "criteria_met": {"type": "boolean"}},
    "required": ["explanation", "criteria_met"],
    "additionalProperties": False,
}

_JSON_RE = re.compile(r"\{.*\}", re.DOTALL)


def parse_criteria_met(reply: str) -> bool | None:
    """The ``criteria_met`` boolean of a grader reply (a JSON object, possibly fenced), or ``None``."""
    match = _JSON_RE.search(reply or "")
    if not match:
        return None
    try:
        value = json.loads(match.group(0)).get("criteria_met")
    except (json.JSONDecodeError, AttributeError):
        return None
    return value if isinstance(value, bool) else None


def healthbench_user_message(conversation: list[dict[str, str]], response: str, criterion: dict) -> str:
    transcript = "\n\n".join(f"{m['role']}: {m['content']}" for m in conversation)
    return (
        f"Conversation:\n{transcript}\n\nassistant (the response to grade): {response}\n\n"
        f"Rubric criterion ({criterion['points']} points): {criterion['criterion']}"
    )


def grade_healthbench_item(ask: Callable[..., str], record: dict, response: str) -> dict[str, Any]:
    def grade_criterion(criterion: dict) -> bool | None:
        message = healthbench_user_message(record["prompt"], response, criterion)
        return parse_criteria_met(ask(HEALTHBENCH_SYSTEM, message, HEALTHBENCH_SCHEMA))

    # The criteria of one conversation are independent calls: send them together.
    with ThreadPoolExecutor(max_workers=4) as pool:
        met = list(pool.map(grade_criterion, record["rubrics"]))
    if None in met:
        criterion = record["rubrics"][met.index(None)]["criterion"]
        return {"criteria_met": met, "score": None, "error": f"unparseable grade for: {criterion[:80]}"}
    return {"criteria_met": met, "score": bm.healthbench_item_score(record["rubrics"], met)}


# ----------------------------------------------------------------------------------------------------------------
# grading a samples file
# ----------------------------------------------------------------------------------------------------------------

GRADE_ITEM = {"arenahardwriting": grade_arena_item, "healthbench": grade_healthbench_item}


def grade_samples(benchmark: str, samples_path: Path, benchmark_dir: Path, settings: GraderSettings,
                  ask: Callable[..., str] | None = None) -> dict[str, Any]:
    """Grade every response in ``samples_path`` (written by generation) against the staged records; rewrite the
    samples file with each item's grade; return ``{"score", "n_graded", "n_errors", "grader_model"}``."""
    if benchmark not in GRADE_ITEM:
        raise GraderError(f"benchmark {benchmark!r} is not graded by an LLM; graded: {', '.join(GRADE_ITEM)}")
    ask = ask or ChatGrader(settings).ask
    records = {r["id"]: r for r in bm.read_test_records(benchmark_dir)}
    samples = [json.loads(line) for line in Path(samples_path).read_text(encoding="utf-8").splitlines() if line]
    grade_item = GRADE_ITEM[benchmark]

    def grade(sample: dict) -> dict:
        try:
            return grade_item(ask, records[sample["id"]], bm.final_answer(sample["response"]))
        except GraderError as exc:
            return {"score": None, "error": str(exc)[:300]}

    with ThreadPoolExecutor(max_workers=max(1, settings.concurrency)) as pool:
        grades = list(pool.map(grade, samples))
    scores = [g["score"] for g in grades if g.get("score") is not None]
    for sample, graded in zip(samples, grades):
        sample["grade"] = graded
        sample["correct"] = graded.get("score")
    from .io import atomic_write_text

    atomic_write_text(Path(samples_path), "".join(json.dumps(s, ensure_ascii=True) + "\n" for s in samples))
    if not scores:
        errors = {g.get("error") for g in grades if g.get("error")}
        raise GraderError(f"the grader graded none of {len(samples)} {benchmark} items: {sorted(errors)[:1]}")
    return {"score": sum(scores) / len(scores), "n_graded": len(scores), "n_errors": len(samples) - len(scores),
            "grader_model": settings.model}


def check_grader_config(config: dict) -> None:
    """Validation: graded benchmarks need ``evaluation.grader.base_url`` and ``.model``; raise ``ValueError``."""
    graded = [b for b in config.get("benchmarks", []) if b in GRADE_ITEM]
    grader = (config.get("evaluation") or {}).get("grader") or {}
    missing = [k for k in ("base_url", "model") if not grader.get(k)]
    if graded and missing:
        raise ValueError(
            f"benchmarks {', '.join(graded)} are scored by an LLM grader, but config key "
            f"evaluation.grader.{missing[0]} is not set (give base_url and model of an OpenAI-compatible endpoint)"
        )

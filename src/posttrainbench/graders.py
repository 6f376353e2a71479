"""The LLM grader client: calls an OpenAI-compatible chat-completions endpoint for the benchmarks scored by a model.

What a grader asks and how its replies become a score is the benchmark's protocol and lives in the benchmark's
module (``benchmarks/arenahardwriting.py``, ``benchmarks/healthbench.py``), as a :class:`Grading` named
``GRADING``: the protocol's grader model, the extra request fields (reasoning effort, completion-token limit),
the number of tries, how one item is graded and how the item grades are aggregated. This module is generic: the
endpoint, retries with back-off, the concurrency limit, and grading a samples file written by generation.

Any OpenAI-compatible endpoint works: a hosted API, or a local ``vllm serve`` of an open model
(:class:`posttrainbench.serving.OpenAICompatibleServer`). It is configured under ``evaluation.grader``:
``base_url`` (required), ``model`` (default: the protocol's grader model, ``gpt-5-mini`` in posttrainbench-v1),
``api_key_env``, and optional overrides of the protocol's request (``max_tokens``, ``temperature``, ``retries``)
and, for small local graders, JSON-schema-constrained replies (``structured``, ``explain``). Grading needs no
GPU: it reads the samples file that generation wrote and calls the endpoint.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)

Messages = list[dict[str, str]]
# ask(messages, schema=None, tries=None) -> reply text; raises GraderError when every try failed.
Ask = Callable[..., str]


class GraderError(RuntimeError):
    """The grader is misconfigured or unreachable, or graded no item at all."""


@dataclass(frozen=True)
class Grading:
    """A benchmark's grader protocol (defined in the benchmark's module as ``GRADING``).

    ``grade_item(ask, record, answer, staged) -> dict`` grades one item (``answer``: the response as the grader
    sees it, from the benchmark's ``score``; ``staged``: the staged folder's :class:`~.benchmarks.spec.StagedSet`)
    and returns at least ``score`` (``None``: the item does not count); ``aggregate(grades) -> float`` is the
    headline over all items' grades; ``failed(grade)`` says whether the grader itself failed on an item."""

    model: str
    request: dict[str, Any]
    tries: int
    grade_item: Callable[[Ask, dict, str, Any], dict[str, Any]]
    aggregate: Callable[[list[dict[str, Any]]], float]
    failed: Callable[[dict[str, Any]], bool]
    reply_schema: dict[str, Any] | None = None
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GraderSettings:
    """The endpoint and the configured overrides; ``None`` means the protocol's value."""

    base_url: str
    model: str | None = None
    api_key_env: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    concurrency: int = 4
    timeout_seconds: float = 600.0
    retries: int | None = None
    structured: bool = False  # JSON-schema-constrained replies (OpenAI and vLLM both support it)
    explain: bool = True  # with structured replies: reasoning before the label (off for small, fast graders)
    retry_backoff_seconds: float = 2.0

    @classmethod
    def from_options(cls, options: dict | None) -> "GraderSettings":
        """From the ``evaluation.grader`` config section; a clear error names the missing key."""
        options = options or {}
        if not options.get("base_url"):
            raise GraderError("config key evaluation.grader.base_url is required to grade this benchmark")
        known = set(cls.__dataclass_fields__)
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


def grading_of(benchmark: str) -> Grading:
    """The ``GRADING`` of a graded benchmark's module; :class:`GraderError` for any other benchmark."""
    if benchmark not in GRADED:
        raise GraderError(f"benchmark {benchmark!r} is not graded by an LLM; graded: {', '.join(GRADED)}")
    return importlib.import_module(f"posttrainbench.benchmarks.{benchmark}").GRADING


GRADED = ("arenahardwriting", "healthbench")


class ChatGrader:
    """One grader endpoint under one benchmark's protocol. ``ask`` sends one chat request and returns the reply
    text, retrying any error up to the protocol's (or configured) number of tries; at most ``concurrency``
    requests are in flight at once, whatever the number of threads asking."""

    def __init__(self, settings: GraderSettings, grading: Grading):
        from openai import OpenAI

        self.settings = settings
        self.model = settings.model or grading.model
        self.tries = settings.retries + 1 if settings.retries is not None else grading.tries
        self.request = dict(grading.request)
        if settings.max_tokens is not None:
            self.request["max_completion_tokens"] = settings.max_tokens
        if settings.temperature is not None:
            self.request["temperature"] = settings.temperature
        self.client = OpenAI(base_url=settings.base_url, api_key=settings.api_key(),
                             timeout=settings.timeout_seconds, max_retries=0)
        self._slots = threading.Semaphore(max(1, settings.concurrency))
        self._lock = threading.Lock()

    def _response_format(self, schema: dict | None) -> dict[str, Any]:
        if schema is None or not self.settings.structured:
            return {}
        if not self.settings.explain:
            schema = {**schema, "properties": {k: v for k, v in schema["properties"].items()
                                               if k not in REASONING_FIELDS},
                      "required": [k for k in schema["required"] if k not in REASONING_FIELDS]}
        return {"response_format": {"type": "json_schema",
                                    "json_schema": {"name": "grade", "schema": schema, "strict": True}}}

    def ask(self, messages: Messages, schema: dict | None = None, tries: int | None = None) -> str:
        import openai

        last: Exception | None = None
        for attempt in range(tries or self.tries):
            with self._lock:
                request = dict(self.request)
            try:
                with self._slots:
                    reply = self.client.chat.completions.create(model=self.model, messages=messages, **request,
                                                                **self._response_format(schema))
                content = reply.choices[0].message.content
                if content is None:
                    raise GraderError("the grader's reply has no content")
                return content
            except openai.BadRequestError as exc:
                last = exc
                # Endpoints without reasoning support refuse the field: ask again without it (as published).
                if "reasoning" in str(exc).lower() and "reasoning_effort" in request:
                    with self._lock:
                        self.request.pop("reasoning_effort", None)
                    continue
            except Exception as exc:  # noqa: BLE001 - network and server errors alike are retried
                last = exc
            time.sleep(self.settings.retry_backoff_seconds * (2 ** attempt))
        raise GraderError(f"grader call failed after {tries or self.tries} tries: {type(last).__name__}: "
                          f"{str(last)[:200]}")


def grade_samples(benchmark: str, samples_path: Path, benchmark_dir: Path, settings: GraderSettings,
                  ask: Ask | None = None) -> dict[str, Any]:
    """Grade every response in ``samples_path`` (written by generation) against the staged records of
    ``benchmark_dir``; rewrite the samples file with each item's grade; return ``{"score", "n_graded",
    "n_errors", "grader_model"}``. ``ask`` replaces the endpoint (tests)."""
    from .benchmarks import read_test_records
    from .benchmarks.spec import Response, StagedSet
    from .io import atomic_write_text

    grading = grading_of(benchmark)
    spec = importlib.import_module(f"posttrainbench.benchmarks.{benchmark}").SPEC
    model = settings.model or grading.model
    ask = ask or ChatGrader(settings, grading).ask
    staged = StagedSet(benchmark_dir)
    records = {r["id"]: r for r in read_test_records(benchmark_dir)}
    samples = [json.loads(line) for line in Path(samples_path).read_text(encoding="utf-8").splitlines() if line]
    unknown = [s["id"] for s in samples if s["id"] not in records]
    if unknown:
        raise GraderError(f"{len(unknown)} samples are not items of the staged {benchmark} set (first: {unknown[0]})")

    def grade(sample: dict) -> dict:
        record = records[sample["id"]]
        answer = spec.score(record, Response(text=sample.get("response") or "")).extracted
        try:
            return grading.grade_item(ask, record, answer, staged)
        except GraderError as exc:
            return {"score": None, "error": str(exc)[:300]}

    with ThreadPoolExecutor(max_workers=max(1, settings.concurrency)) as pool:
        grades = list(pool.map(grade, samples))
    for sample, graded in zip(samples, grades):
        sample["grade"] = graded
        sample["correct"] = graded.get("score")
    atomic_write_text(Path(samples_path), "".join(json.dumps(s, ensure_ascii=True) + "\n" for s in samples))
    failed = [g for g in grades if grading.failed(g)]
    if len(failed) == len(samples):
        errors = sorted({str(g.get("error")) for g in failed if g.get("error")})
        raise GraderError(f"the grader graded none of {len(samples)} {benchmark} items: {errors[:1]}")
    return {"score": float(grading.aggregate(grades)),
            "n_graded": sum(1 for g in grades if g.get("score") is not None),
            "n_errors": len(failed), "grader_model": model}


def check_grader_config(config: dict) -> None:
    """Validation: graded benchmarks need ``evaluation.grader.base_url``; raise ``ValueError``."""
    graded = [b for b in config.get("benchmarks", []) if b in GRADED]
    grader = (config.get("evaluation") or {}).get("grader") or {}
    if graded and not grader.get("base_url"):
        raise ValueError(
            f"benchmarks {', '.join(graded)} are scored by an LLM grader, but config key "
            "evaluation.grader.base_url is not set (the base URL of an OpenAI-compatible endpoint; the model "
            "defaults to the protocol's grader)"
        )

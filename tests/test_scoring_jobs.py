"""Per-cell evaluate and judge jobs: failures become records, substitutions become flags."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from posttrainbench.cells import Cell
from posttrainbench.scoring_jobs import EvaluationSetupError, evaluate_cell, judge_cell

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


def test_missing_checkpoint_is_a_failed_eval(tmp_path):
    out = tmp_path / "eval.json"
    record = evaluate_cell(CELL, run_json=make_run(tmp_path, None, "timeout"), benchmark_dir=tmp_path,
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
                           options={"backend": "hf", "device": "cpu", "limit": 2}, out_json=tmp_path / "e.json")
    assert record["status"] == "failed" and record["error"]
    assert record["score"] is None


def test_unavailable_backend_fails_the_job_loudly(tmp_path):
    with pytest.raises(EvaluationSetupError, match="vllm"):
        evaluate_cell(CELL, run_json=make_run(tmp_path, None), benchmark_dir=tmp_path,
                      options={"backend": "vllm"}, out_json=tmp_path / "e.json")
    assert not (tmp_path / "e.json").exists()

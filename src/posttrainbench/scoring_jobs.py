"""The evaluate and judge jobs of one cell: read the run record, do the work, write the JSON
contract atomically. Failures become records (status "failed" / failed checks), never crashes."""

from __future__ import annotations

import logging
import traceback
from pathlib import Path

from .cells import Cell
from .io import atomic_write_json, read_json
from .agents.sandbox import now_iso as utc_now

log = logging.getLogger(__name__)

BENCHMARK_METRIC = {
    "gsm8k": "exact_match",
    "humaneval": "pass@1",
    "aime2025": "exact_match",
    "gpqamain": "exact_match",
    "bfcl": "accuracy",
    "arenahardwriting": "win_rate",
    "healthbench": "rubric_score",
}


class EvaluationSetupError(RuntimeError):
    """The configured evaluation cannot run at all: the job fails loudly instead of recording a
    per-cell failure that would silently score every cell as the base model."""


def resolve_backend(options: dict) -> str:
    backend = options.get("backend", "auto")
    if backend == "vllm":
        raise EvaluationSetupError(
            "evaluation.backend 'vllm' is not available in this version; set evaluation.backend to hf or auto"
        )
    return "hf"


def evaluate_cell(cell: Cell, *, run_json: Path, benchmark_dir: Path, options: dict, out_json: Path,
                  threads: int = 1) -> dict:
    """Evaluate the cell's ``final_model`` on its benchmark and write the eval JSON."""
    run = read_json(run_json)
    backend = resolve_backend(options)
    record = {
        "agent": cell.agent, "model": cell.model, "benchmark": cell.benchmark, "seed": cell.seed,
        "score": None, "metric": BENCHMARK_METRIC.get(cell.benchmark), "n": 0,
        "backend": None, "status": "failed", "error": None,
        "run_status": run.get("status"), "evaluated": utc_now(),
    }
    checkpoint = run.get("final_model")
    if not checkpoint or not Path(checkpoint).is_dir():
        record["error"] = f"no checkpoint to evaluate (run status: {run.get('status')})"
    else:
        per = options.get("per_benchmark", {}).get(cell.benchmark, {})
        try:
            import torch

            torch.set_num_threads(max(1, threads))
            from .evaluation import evaluate_checkpoint

            result = evaluate_checkpoint(
                Path(checkpoint), cell.benchmark, benchmark_dir,
                limit=per.get("limit", options.get("limit")),
                max_gen_toks=per.get("max_gen_toks"),
                batch_size=options.get("batch_size", 8),
                device=options.get("device", "auto"),
                dtype=options.get("dtype", "auto"),
                samples_path=samples_path(out_json),
                code_timeout=options.get("code_timeout_seconds", 10),
            )
            record.update(result)
            record.update(status="ok", error=None, backend=result.get("backend", backend))
        except Exception as exc:  # noqa: BLE001 - any failure is this cell's recorded outcome
            log.error("evaluation failed:\n%s", traceback.format_exc())
            record["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
    atomic_write_json(out_json, record)
    return record


def samples_path(eval_json: Path) -> Path:
    """Per-item outputs sit next to the eval JSON (``seedN.samples.jsonl``)."""
    return eval_json.with_name(eval_json.stem + ".samples.jsonl")


def judge_cell(cell: Cell, *, run_json: Path, base_dir: Path, out_json: Path, **options) -> dict:
    """Audit one run (see :mod:`posttrainbench.judge`); ``options`` go to :func:`~posttrainbench.judge.judge_run`."""
    from .judge import judge_run

    return judge_run(cell, run_json=run_json, base_dir=base_dir, out_json=out_json, **options)

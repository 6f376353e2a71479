"""The evaluate and judge jobs of one cell: read the run record, do the work, write the JSON
contract atomically. Failures become records (status "failed" / failed checks), never crashes."""

from __future__ import annotations

import logging
import traceback
from pathlib import Path

from .benchmarks import get_spec, headline_metric
from .cells import Cell
from .io import atomic_write_json, atomic_write_text, read_json
from .agents.sandbox import now_iso as utc_now
from .evaluation import InfrastructureError

log = logging.getLogger(__name__)

class EvaluationSetupError(InfrastructureError):
    """The configured evaluation cannot run at all: the job fails loudly instead of recording a
    per-cell failure that would silently score every cell as the base model."""


def vllm_available() -> bool:
    """Whether a vLLM interpreter is installed (``.venv-vllm``, ``$PTB_VLLM_PYTHON`` or this one)."""
    from .serving import ServerError, vllm_python

    try:
        vllm_python()
        return True
    except ServerError:
        return False


def resolve_backend(options: dict) -> str:
    """``evaluation.backend``: ``auto`` is vLLM where it is installed, else transformers; an explicit ``vllm``
    without vLLM fails the job loudly (every cell would otherwise score as the base model)."""
    backend = options.get("backend", "auto")
    if backend not in ("auto", "hf", "vllm"):
        raise EvaluationSetupError(f"evaluation.backend must be one of auto, hf, vllm, not {backend!r}")
    if backend == "hf":
        return "hf"
    if vllm_available():
        return "vllm"
    if backend == "vllm":
        raise EvaluationSetupError(
            "evaluation.backend is 'vllm' but vLLM is not installed (make install builds .venv-vllm; or set "
            "PTB_VLLM_PYTHON); set evaluation.backend to hf or auto"
        )
    return "hf"


def code_execution_settings(options: dict, sandbox: dict | None):
    """The code sandbox settings of ``evaluation.code_execution``, backend and image from ``sandbox``
    unless set there."""
    from .code_sandbox import CodeExecutionSettings

    return CodeExecutionSettings.from_config(options.get("code_execution"), sandbox or {},
                                             timeout_seconds=options.get("code_timeout_seconds", 10))


def evaluate_cell(cell: Cell, *, run_json: Path, benchmark_dir: Path, base_dir: Path, options: dict, out_json: Path,
                  threads: int = 1, grade: bool = True, prompting: str = "chat", family: str = "auto",
                  sandbox: dict | None = None, reference: bool = False, templates_dir: Path | None = None) -> dict:
    """Evaluate the cell's ``final_model`` on its benchmark under ``evaluation.protocol`` and write the eval JSON.

    ``base_dir``: the staged base model; its tokenizer is the one evaluation encodes and decodes with, and its
    config decides the template family for ``auto``. A checkpoint that cannot be evaluated as data (see
    :mod:`posttrainbench.checkpoint_guard`) is recorded ``status: failed`` with ``error: "checkpoint rejected:
    <reason>"``. What is the pipeline's fault raises instead (:class:`~posttrainbench.evaluation.InfrastructureError`:
    a missing staged base or template, an unusable configuration, a sandbox that cannot start), so it fails the job
    and is never scored as the agent's.

    ``prompting`` ``chat``: the benchmark module's messages through the family's template (``evaluation.templates``:
    the published files staged in ``templates_dir``, or the project's own); ``few-shot``: plain-text worked
    demonstrations, no chat template (the base-fewshot reference row). ``reference``: a reference row (one attempt).
    Generation that fails as a whole is retried down the module's max-token ladder (inside one engine); what still
    fails is recorded as ``status: failed`` with the reason and the attempts (the leaderboard then scores the cell
    as the base model). Graded benchmarks are graded after the model is unloaded (``grade=False`` leaves that to
    :func:`grade_cell`).
    """
    from .protocol import UnknownProtocol, get_protocol

    run = read_json(run_json)
    backend = resolve_backend(options)
    base_dir = Path(base_dir)
    if not (base_dir / "config.json").is_file():
        raise EvaluationSetupError(f"the staged base model {base_dir} is missing (no config.json)")
    try:
        protocol = get_protocol(options.get("protocol"))
    except UnknownProtocol as exc:
        raise EvaluationSetupError(str(exc)) from None
    if prompting not in ("chat", "few-shot"):
        raise EvaluationSetupError(f"prompting must be chat or few-shot, not {prompting!r}")
    record = {
        "agent": cell.agent, "model": cell.model, "benchmark": cell.benchmark, "seed": cell.seed,
        "score": None, "metric": headline_metric(cell.benchmark), "n": 0,
        "backend": backend, "status": "failed", "error": None, "protocol": protocol.id,
        "run_status": run.get("status"), "evaluated": utc_now(), "attempts": [],
    }
    checkpoint = run.get("final_model")
    if not checkpoint or not Path(checkpoint).is_dir():
        record["error"] = f"no checkpoint to evaluate (run status: {run.get('status')})"
        atomic_write_json(out_json, record)
        return record
    per = options.get("per_benchmark", {}).get(cell.benchmark, {})
    import torch

    torch.set_num_threads(max(1, threads))
    from .checkpoint_guard import CheckpointRejected
    from .evaluation import AttemptsExhausted, EvaluationError, evaluate_checkpoint

    templates = options.get("templates") or {}
    try:
        result = evaluate_checkpoint(
            Path(checkpoint), cell.benchmark, benchmark_dir,
            limit=per.get("limit", options.get("limit")),
            max_tokens=per.get("max_tokens"),
            batch_size=options.get("batch_size", 8),
            device=options.get("device", "auto"),
            dtype=options.get("dtype", "auto"),
            samples_path=samples_path(out_json),
            prompting=prompting,
            # The family comes from config or the staged base, never from the checkpoint's own config.
            family=family,
            templates=templates.get("use", "published"),
            templates_dir=templates_dir,
            num_fewshot=per.get("num_fewshot"),
            backend=backend,
            timeout_seconds=options.get("timeout_seconds"),
            server_log=out_json.with_name(out_json.stem + ".vllm.log") if backend == "vllm" else None,
            base_dir=base_dir,
            protocol=protocol.id,
            reference=reference,
            seed=cell.seed,
            # Executed output runs in the agents' sandbox backend (config ``sandbox``) unless overridden.
            code_execution=code_execution_settings(options, sandbox),
        )
    except InfrastructureError:
        raise
    except CheckpointRejected as exc:
        reason = f"checkpoint rejected: {exc}".splitlines()[0][:1000]
        log.error("evaluation refused the checkpoint: %s", reason)
        record["error"] = reason
    except AttemptsExhausted as exc:
        record.update(error=str(exc).splitlines()[0][:500], attempts=exc.attempts)
    except Exception as exc:  # noqa: BLE001 - what transformers and vLLM do with the checkpoint is its outcome
        log.error("evaluation failed:\n%s", traceback.format_exc())
        record["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
        if not isinstance(exc, EvaluationError):
            record["error"] = "unexpected: " + record["error"]
    else:
        record.update(result)
        record.update(status="ok", error=None)
    if record["status"] == "ok" and get_spec(cell.benchmark).graded:
        record["status"] = "generated"  # the grader has yet to score it
        if grade:
            atomic_write_json(out_json, record)
            return grade_cell(out_json, benchmark_dir=benchmark_dir, options=options)
    atomic_write_json(out_json, record)
    return record


def grade_cell(generated_json: Path, *, benchmark_dir: Path, options: dict, out_json: Path | None = None) -> dict:
    """Score a graded benchmark's generations (``status: generated``) with the LLM grader; write the eval JSON
    (to ``out_json``, default ``generated_json``). A generation that failed stays failed; a grader that
    grades nothing makes the cell failed with the reason."""
    from .graders import GraderSettings, grade_samples

    record = dict(read_json(generated_json))
    out_json = out_json or generated_json
    if record.get("status") == "generated":
        try:
            graded = grade_samples(record["benchmark"], samples_path(generated_json), benchmark_dir,
                                   GraderSettings.from_options(options.get("grader")))
            record.update(graded, status="ok", error=None)
            if out_json != generated_json:  # the graded per-item records go next to the eval JSON
                atomic_write_text(samples_path(out_json), samples_path(generated_json).read_text())
        except Exception as exc:  # noqa: BLE001 - recorded, never a crashed sweep
            log.error("grading failed:\n%s", traceback.format_exc())
            record.update(status="failed", score=None, error=f"grading: {type(exc).__name__}: {exc}".splitlines()[0][:500])
    atomic_write_json(out_json, record)
    return record


def samples_path(eval_json: Path) -> Path:
    """Per-item outputs sit next to the eval JSON (``seedN.samples.jsonl``)."""
    return eval_json.with_name(eval_json.stem + ".samples.jsonl")


def judge_cell(cell: Cell, *, run_json: Path, base_dir: Path, out_json: Path, **options) -> dict:
    """Audit one run (see :mod:`posttrainbench.judge`); ``options`` go to :func:`~posttrainbench.judge.judge_run`."""
    from .judge import judge_run

    return judge_run(cell, run_json=run_json, base_dir=base_dir, out_json=out_json, **options)

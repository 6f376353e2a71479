"""The evaluate and judge jobs of one cell: read the run record, do the work, write the JSON
contract atomically. Failures become records (status "failed" / failed checks), never crashes."""

from __future__ import annotations

import logging
import traceback
from pathlib import Path

from .benchmarks import headline_metric
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


def max_tokens_ladder(first: int, retries: int) -> list[int]:
    """The published retry ladder: each retry halves the max-token limit (never below 16 tokens)."""
    ladder = [int(first)]
    for _ in range(max(0, retries)):
        nxt = max(16, ladder[-1] // 2)
        if nxt == ladder[-1]:
            break
        ladder.append(nxt)
    return ladder


def evaluate_cell(cell: Cell, *, run_json: Path, benchmark_dir: Path, base_dir: Path, options: dict, out_json: Path,
                  threads: int = 1, grade: bool = True, prompting: str = "chat", family: str = "auto",
                  sandbox: dict | None = None) -> dict:
    """Evaluate the cell's ``final_model`` on its benchmark and write the eval JSON.

    ``base_dir``: the staged base model; its tokenizer is the one evaluation encodes and decodes with, and its
    config decides the template family for ``auto``. A checkpoint that cannot be evaluated as data (see
    :mod:`posttrainbench.checkpoint_guard`: a tokenizer that differs from the base's, a hostile config or weight
    header, ...) is recorded ``status: failed`` with ``error: "checkpoint rejected: <reason>"``. What is the
    pipeline's fault raises instead (:class:`~posttrainbench.evaluation.InfrastructureError`: a missing staged base,
    an unusable configuration, a bug in the checks), so it fails the job and is never scored as the agent's.

    ``prompting`` ``chat``: zero-shot through a chat template, the ``family``'s forced one (configured, or
    ``auto`` = detected from the checkpoint) unless ``evaluation.chat_template`` is ``checkpoint``;
    ``few-shot``: plain-text worked demonstrations, no chat template (the base-fewshot reference row).

    A failed or timed-out generation is retried down the max-token ladder; what still fails is recorded as
    ``status: failed`` with the reason (the leaderboard then scores the cell as the base model). Graded
    benchmarks are graded after the model is unloaded (``grade=False`` leaves that to :func:`grade_cell`).
    """
    run = read_json(run_json)
    backend = resolve_backend(options)
    base_dir = Path(base_dir)
    if not (base_dir / "config.json").is_file():
        raise EvaluationSetupError(f"the staged base model {base_dir} is missing (no config.json)")
    sampling = options.get("sampling", "greedy")
    if sampling not in ("greedy", "checkpoint"):
        raise EvaluationSetupError(f"evaluation.sampling must be greedy or checkpoint, not {sampling!r}")
    from .benchmarks import GRADED_BENCHMARKS, benchmark_info

    record = {
        "agent": cell.agent, "model": cell.model, "benchmark": cell.benchmark, "seed": cell.seed,
        "score": None, "metric": headline_metric(cell.benchmark), "n": 0,
        "backend": backend, "status": "failed", "error": None,
        "run_status": run.get("status"), "evaluated": utc_now(), "attempts": [],
    }
    checkpoint = run.get("final_model")
    if not checkpoint or not Path(checkpoint).is_dir():
        record["error"] = f"no checkpoint to evaluate (run status: {run.get('status')})"
        atomic_write_json(out_json, record)
        return record
    per = options.get("per_benchmark", {}).get(cell.benchmark, {})
    first = per.get("max_gen_toks") or benchmark_info(cell.benchmark).default_max_gen_toks
    import torch

    torch.set_num_threads(max(1, threads))
    from .checkpoint_guard import CheckpointRejected
    from .evaluation import EvaluationError, evaluate_checkpoint

    # The family comes from the staged base, as for the runner: the checkpoint's config is the agent's.
    prompt = prompt_settings(cell.benchmark, base_dir, prompting, family, options)
    record.update({k: v for k, v in prompt.items() if k != "chat_template"})

    for max_gen_toks in max_tokens_ladder(first, options.get("retries", 2)):
        try:
            result = evaluate_checkpoint(
                Path(checkpoint), cell.benchmark, benchmark_dir,
                limit=per.get("limit", options.get("limit")),
                max_gen_toks=max_gen_toks,
                batch_size=options.get("batch_size", 8),
                device=options.get("device", "auto"),
                dtype=options.get("dtype", "auto"),
                samples_path=samples_path(out_json),
                apply_chat_template=prompt["apply_chat_template"],
                chat_template=prompt["chat_template"],
                num_fewshot=prompt["num_fewshot"],
                code_timeout=options.get("code_timeout_seconds", 10),
                # Executed output runs in the agents' sandbox backend (config ``sandbox``) unless overridden.
                code_execution=code_execution_settings(options, sandbox),
                backend=backend,
                timeout_seconds=options.get("timeout_seconds"),
                max_model_len=options.get("max_model_len", 4096),
                server_log=out_json.with_name(out_json.stem + ".vllm.log") if backend == "vllm" else None,
                base_dir=base_dir,
                sampling=sampling,
            )
        except InfrastructureError:
            raise
        except CheckpointRejected as exc:
            reason = f"checkpoint rejected: {exc}".splitlines()[0][:1000]
            log.error("evaluation refused the checkpoint: %s", reason)
            record["attempts"].append({"max_gen_toks": max_gen_toks, "error": reason})
            record["error"] = reason
            break  # the same files are refused again with fewer tokens
        except Exception as exc:  # noqa: BLE001 - what lm-eval and transformers do with the checkpoint is its outcome
            log.error("evaluation failed (max_gen_toks=%d):\n%s", max_gen_toks, traceback.format_exc())
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
            record["attempts"].append({"max_gen_toks": max_gen_toks, "error": reason})
            record["error"] = reason
            # An unusable checkpoint or input does not get better with fewer tokens: stop at once.
            retryable = not isinstance(exc, EvaluationError) or "could not load" not in str(exc)
            if not retryable:
                break
            continue
        record["attempts"].append({"max_gen_toks": max_gen_toks, "error": None})
        record.update(result)
        record.update(status="ok", error=None)
        break
    if record["status"] == "ok" and cell.benchmark in GRADED_BENCHMARKS:
        record["status"] = "generated"  # the grader has yet to score it
        if grade:
            atomic_write_json(out_json, record)
            return grade_cell(out_json, benchmark_dir=benchmark_dir, options=options)
    atomic_write_json(out_json, record)
    return record


def prompt_settings(benchmark: str, checkpoint: Path, prompting: str, family: str, options: dict) -> dict:
    """How the checkpoint is prompted: ``apply_chat_template``, ``chat_template`` (Jinja text forced on it, or
    ``None`` for its own), ``num_fewshot``, plus what the eval JSON records of it (``prompting``,
    ``chat_family``, ``chat_template_source``: ``family:<name>``, ``checkpoint`` or ``none``)."""
    from .evaluation import default_num_fewshot, family_chat_template, resolve_family

    if prompting not in ("chat", "few-shot"):
        raise EvaluationSetupError(f"prompting must be chat or few-shot, not {prompting!r}")
    resolved = resolve_family(family, checkpoint)
    settings = {"prompting": prompting, "chat_family": resolved, "apply_chat_template": prompting == "chat",
                "chat_template": None, "num_fewshot": 0, "chat_template_source": "none"}
    if prompting == "few-shot":
        per = options.get("per_benchmark", {}).get(benchmark, {})
        settings["num_fewshot"] = int(per.get("num_fewshot", default_num_fewshot(benchmark)))
        return settings
    forced = options.get("chat_template", "family") == "family"
    if forced and resolved:
        settings.update(chat_template=family_chat_template(resolved), chat_template_source=f"family:{resolved}")
        return settings
    if forced:
        log.warning("no chat-template family for %s (set models.<name>.family): its own template is used", checkpoint)
    settings["chat_template_source"] = "checkpoint"
    return settings


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

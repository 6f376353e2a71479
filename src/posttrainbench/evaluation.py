"""Score one checkpoint on one staged benchmark under a named evaluation protocol, through transformers ("hf") or
vLLM.

Everything benchmark-specific comes from the benchmark's module (:mod:`posttrainbench.benchmarks`): its items,
messages, tools, template kind, max-token ladder, extraction and scorer. This module is generic:

1. the checkpoint is read as data through its evaluation view (:mod:`posttrainbench.checkpoint_guard`);
2. the requests are built once (:mod:`posttrainbench.eval_requests`, the code ``ptb requests`` runs), checked to fit
   the checkpoint's context, and checked for tokens only the checkpoint has;
3. one engine (:mod:`posttrainbench.generation`) generates, down the max-token ladder with the protocol's attempts
   per rung when an attempt fails as a whole;
4. the module's scorer scores each item (HumanEval's programs run in the code sandbox, in batches) and the cell's
   score is its aggregate; graded benchmarks leave the scores to :mod:`posttrainbench.graders`.

Heavy libraries (torch, transformers) are imported inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from . import benchmarks as bm
from .io import atomic_write_text, read_json, sha256_file

log = logging.getLogger(__name__)

BACKENDS = ("hf", "vllm")
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16", "float16")
PROMPTINGS = ("chat", "few-shot")


class EvaluationError(RuntimeError):
    """A checkpoint could not be evaluated; the message says what went wrong and with which input."""


class InfrastructureError(RuntimeError):
    """A fault of the pipeline or its staged inputs, never of the checkpoint: it fails the job instead of
    being recorded as the cell's outcome."""


# ----------------------------------------------------------------------------------------------------------------
# settings
# ----------------------------------------------------------------------------------------------------------------


def resolve_device(device: str) -> str:
    """``auto`` becomes ``cuda`` when a GPU is visible, else ``cpu``; asking for an absent GPU is an error."""
    if device not in DEVICES:
        raise EvaluationError(f"device must be one of {', '.join(DEVICES)}, not {device!r}")
    import torch

    has_cuda = torch.cuda.is_available()
    if device == "auto":
        return "cuda" if has_cuda else "cpu"
    if device == "cuda" and not has_cuda:
        raise EvaluationError("device 'cuda' was requested but torch sees no CUDA GPU (use device 'cpu' or 'auto')")
    return device


def resolve_dtype(dtype: str, device: str) -> str:
    """``auto`` is bfloat16 on a GPU and float32 on the CPU (CPU half-precision matmuls are slow or missing)."""
    if dtype not in DTYPES:
        raise EvaluationError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    if dtype == "auto":
        return "bfloat16" if device == "cuda" else "float32"
    return dtype


# Chat-template families by the ``model_type`` in a checkpoint's config.json (never by its path).
FAMILY_BY_MODEL_TYPE = {"qwen3": "qwen3", "qwen3_moe": "qwen3", "gemma3": "gemma3", "gemma3_text": "gemma3",
                        "smollm3": "smollm"}
# The template of a family is forced on every checkpoint of it (see posttrainbench.templates).
FAMILIES = ("qwen3", "gemma3", "smollm")


def detect_family(model_dir: Path) -> str | None:
    """The chat-template family of a checkpoint from its config.json ``model_type``; ``None`` if unknown."""
    from .checkpoint_guard import UnreadableInput, read_json_bounded

    try:
        model_type = read_json_bounded(Path(model_dir) / "config.json").get("model_type")
    except UnreadableInput:
        return None
    return FAMILY_BY_MODEL_TYPE.get(model_type) if isinstance(model_type, str) else None


def resolve_family(configured: str | None, model_dir: Path) -> str | None:
    """The family whose template is forced: the configured one (``models.<name>.family``), or for ``auto``
    the one detected from the checkpoint's config.json; ``None`` when neither names a known family."""
    if configured and configured != "auto":
        if configured not in FAMILIES:
            raise EvaluationError(f"chat-template family must be one of {', '.join(FAMILIES)} or auto, "
                                  f"not {configured!r}")
        return configured
    return detect_family(model_dir)


def family_chat_template(family: str, kind: str = "chat", source: str = "project",
                         templates_dir: Path | None = None) -> str:
    """The Jinja chat template forced on checkpoints of ``family`` (see :func:`posttrainbench.templates.chat_template`)."""
    from .templates import TemplateError, chat_template

    try:
        return chat_template(family, kind, source, templates_dir)[0]
    except TemplateError as exc:
        raise EvaluationError(str(exc)) from None


# ----------------------------------------------------------------------------------------------------------------
# few-shot prompting: the base-model baseline row (plain text, no chat template, as published)
# ----------------------------------------------------------------------------------------------------------------

FEWSHOT_DIR = Path(__file__).parent / "fewshot"


def fewshot_demos(benchmark: str) -> list[dict[str, Any]]:
    """The benchmark's worked demonstrations (shipped with the package, none drawn from a test set), in the
    test items' format plus ``demo_answer``; empty for HumanEval, whose plain prompt is the function stub."""
    path = FEWSHOT_DIR / f"{benchmark}.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def default_num_fewshot(benchmark: str) -> int:
    """Every shipped demonstration."""
    return len(fewshot_demos(benchmark))


# ----------------------------------------------------------------------------------------------------------------
# evaluation
# ----------------------------------------------------------------------------------------------------------------


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{exc.__class__.__name__}: {text.splitlines()[0][:300]}" if text else exc.__class__.__name__


def _check_benchmark_dir(benchmark: str, benchmark_dir: Path) -> tuple[Path, dict[str, Any]]:
    """The staged test file and its meta; a missing, foreign or modified test set is an error."""
    test_file, meta_file = benchmark_dir / bm.TEST_FILE, benchmark_dir / bm.META_FILE
    if not test_file.is_file() or not meta_file.is_file():
        raise EvaluationError(f"{benchmark_dir} is not a staged benchmark (needs {bm.TEST_FILE} and {bm.META_FILE})")
    meta = read_json(meta_file)
    if meta.get("benchmark") != benchmark:
        raise EvaluationError(f"{benchmark_dir} holds benchmark {meta.get('benchmark')!r}, not {benchmark!r}")
    actual = sha256_file(test_file)
    if actual != meta.get("sha256"):
        raise EvaluationError(f"{test_file} does not match the sha256 in {meta_file}: the test set was modified")
    return test_file, meta


def _check_model_dir(model_dir: Path) -> None:
    if not model_dir.is_dir():
        raise EvaluationError(f"checkpoint {model_dir} does not exist or is not a directory")
    if not (model_dir / "config.json").is_file():
        raise EvaluationError(f"checkpoint {model_dir} has no config.json (not a transformers model folder)")


class GenerationTimeout(EvaluationError):
    """Generation ran past its time limit."""


@contextlib.contextmanager
def time_limit(seconds: float | None):
    """Raise :class:`GenerationTimeout` in this (main) thread after ``seconds``; no limit for ``None``."""
    import threading

    if not seconds or threading.current_thread() is not threading.main_thread():
        # Signals reach only the main thread; elsewhere the vLLM request timeout is the only limit.
        yield
        return

    def expire(signum, frame):
        raise GenerationTimeout(f"generation did not finish within {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, float(seconds))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class AttemptsExhausted(EvaluationError):
    """Every attempt on every rung of the max-token ladder failed; ``attempts`` lists them."""

    def __init__(self, message: str, attempts: list[dict[str, Any]]):
        super().__init__(message)
        self.attempts = attempts


@contextlib.contextmanager
def open_engine(backend: str, view_dir: Path, tokenizer, *, device: str, dtype: str, batch_size: int,
                max_model_len: int, stop_ids: list[int], request_timeout: float = 3600,
                server_log: Path | None = None, server=None):
    """The generation engine of ``backend`` for the evaluation view ``view_dir``, loaded once for the block (every
    attempt of a cell). ``server``: an already running vLLM server of this view to use instead of starting one."""
    from .generation import GenerationError, HFEngine, VLLMEngine

    if backend not in BACKENDS:
        raise EvaluationError(f"evaluation.backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    if backend == "hf":
        try:
            engine = HFEngine(view_dir, tokenizer, device=device, dtype=dtype, batch_size=batch_size,
                              stop_ids=stop_ids)
        except GenerationError as exc:
            raise EvaluationError(str(exc)) from exc
        try:
            yield engine
        finally:
            engine.close()
        return
    from .serving import OpenAICompatibleServer, ServerError

    owned = server is None
    if owned:
        # The tokenizer is the view's; the checkpoint's generation config never reaches the server (the request
        # carries the protocol's sampling parameters).
        server = OpenAICompatibleServer(view_dir, served_name="checkpoint", max_model_len=max_model_len,
                                        dtype=dtype, log_path=server_log, tokenizer=view_dir,
                                        generation_config="vllm")
        try:
            server.start()
        except ServerError as exc:
            raise EvaluationError(f"could not load checkpoint in vLLM: {_first_line(exc)}") from exc
    try:
        yield VLLMEngine(server, batch_size=batch_size, stop_ids=stop_ids, request_timeout=request_timeout)
    finally:
        if owned:
            server.stop()


def rungs(spec, *, reference: bool, max_tokens: int | None, reference_attempts: int = 1) -> list[tuple[int, int]]:
    """``[(max tokens, attempts)]`` of the ladder: the module's, scaled to ``max_tokens`` for its first rung when set;
    reference rows get ``reference_attempts`` on the first rung only, as published."""
    ladder = list(spec.ladder)
    if max_tokens is not None:
        ladder = [max(1, round(int(max_tokens) * r / spec.ladder[0])) for r in spec.ladder]
    pairs = list(zip(ladder, spec.attempts))
    return [(ladder[0], int(reference_attempts))] if reference else pairs


def _score(spec, records, responses, code_execution) -> list:
    if spec.score_batch is not None:
        return list(spec.score_batch(records, responses, code_execution))
    return [spec.score(record, response) for record, response in zip(records, responses)]


def _sample_line(index: int, record: dict[str, Any], request, response, score) -> dict[str, Any]:
    line = {"doc_id": index, "id": record.get("id"), "messages": request.messages, "prompt": request.prompt,
            "prompt_tokens": request.prompt_tokens, "response": response.text,
            "finish_reason": response.finish_reason, "extracted": score.extracted, "value": score.value,
            "correct": None if score.value is None else score.value >= 1.0, "detail": score.detail}
    if response.tool_calls is not None or request.tools:
        line["tool_calls"] = response.tool_calls
    return line


def prepare_requests(view, spec, records: list[dict[str, Any]], benchmark_dir: Path, proto, *, prompting: str,
                     family: str | None, family_dir: Path, templates: str, templates_dir: Path | None,
                     num_fewshot: int | None, max_tokens: int | None, reference: bool):
    """``(tokenizer, requests, details)`` of a cell: what the evaluator sends and ``ptb requests`` prints.

    ``view``: the checkpoint's evaluation view (its tokenizer and generation settings are used); the template is
    the family's (``family``, or detected from ``family_dir``'s config for ``auto``). Every request is checked to
    fit the checkpoint's context (:class:`EvaluationError` otherwise); template problems are the pipeline's
    (:class:`InfrastructureError`). ``details``: ``ladder``, ``demos``, ``template_label``, ``template_sha256``."""
    from transformers import AutoTokenizer

    from .eval_requests import RequestError, build_requests, check_fit, context_length, sampling_parameters

    tokenizer = AutoTokenizer.from_pretrained(str(view.model_dir), local_files_only=True, trust_remote_code=False)
    template_text, template_label, template_sha = None, None, None
    if prompting == "chat":
        resolved = resolve_family(family, family_dir)
        if resolved is None:
            raise EvaluationError("no chat-template family for this model (set models.<name>.family)")
        from .templates import TemplateError, chat_template

        try:
            template_text, template_label, template_sha = chat_template(resolved, spec.template, templates,
                                                                        templates_dir)
        except TemplateError as exc:
            raise InfrastructureError(str(exc)) from None
    demos: list[dict[str, Any]] = []
    if prompting == "few-shot":
        demos = fewshot_demos(spec.key)
        count = len(demos) if num_fewshot is None else int(num_fewshot)
        if count > len(demos):
            raise EvaluationError(f"{spec.key} has {len(demos)} few-shot demonstrations, not {count}")
        demos = demos[:count]
    ladder = rungs(spec, reference=reference, max_tokens=max_tokens, reference_attempts=proto.reference_attempts)
    try:
        requests = build_requests(spec, records, bm.StagedSet(benchmark_dir), tokenizer, prompting=prompting,
                                  chat_template=template_text, max_tokens=ladder[0][0],
                                  max_model_len=context_length(view.model_dir),
                                  sampling=sampling_parameters(proto.sampling, view.generation, prompting),
                                  demos=demos)
        check_fit(requests)
    except RequestError as exc:
        raise EvaluationError(str(exc)) from exc
    except bm.StagingIncomplete as exc:  # the pipeline's staging, not the checkpoint
        raise InfrastructureError(str(exc)) from exc
    return tokenizer, requests, {"ladder": ladder, "demos": demos, "template_label": template_label,
                                 "template_sha256": template_sha}


def evaluate_checkpoint(
    model_dir: Path,
    benchmark: str,
    benchmark_dir: Path,
    *,
    limit: int | None = None,
    max_tokens: int | None = None,
    batch_size: int = 8,
    device: str = "auto",
    dtype: str = "auto",
    samples_path: Path | None = None,
    prompting: str = "chat",
    family: str | None = None,
    templates: str = "project",
    templates_dir: Path | None = None,
    num_fewshot: int | None = None,
    backend: str = "hf",
    timeout_seconds: float | None = None,
    server_log: Path | None = None,
    server=None,
    base_dir: Path | None = None,
    protocol: str | None = None,
    reference: bool = False,
    seed: int = 0,
    code_execution=None,
    requests_out: Path | None = None,
) -> dict[str, Any]:
    """Evaluate the checkpoint in ``model_dir`` on the staged ``benchmark_dir`` under ``protocol``.

    The checkpoint is read through its evaluation view (``base_dir``: the staged base model whose tokenizer is used;
    ``None`` only for trusted folders). ``prompting`` ``chat`` renders the module's messages through ``family``'s
    template (``templates``: ``published`` files staged in ``templates_dir``, or the ``project``'s own);
    ``few-shot`` sends the module's plain prompt with ``num_fewshot`` demonstrations (the base-fewshot row).
    ``limit``: the first N items; ``max_tokens``: the first rung of the ladder (the others scale with it). Both are
    recorded as overrides in the protocol settings. ``reference``: a reference row (one attempt, as published).

    Returns the result record (``score``, ``metric``, ``n``, ``protocol``, ``settings``, ``settings_hash``,
    ``attempts``, ``max_tokens``, ``max_model_len``, timing, and the view's record). Raises
    :class:`~posttrainbench.checkpoint_guard.CheckpointRejected` for a checkpoint that is refused as data,
    :class:`EvaluationError` (with :class:`AttemptsExhausted` when generation failed on every rung) for what the
    checkpoint or its run caused, and :class:`InfrastructureError` for the pipeline's own faults.
    """
    from .checkpoint_guard import CheckpointRejected, prepare_view
    from .eval_requests import write_requests
    from .protocol import benchmark_settings, get_protocol, settings_hash
    from .tokenizer_guard import added_tokens_in_inputs

    started = time.monotonic()
    spec = bm.get_spec(benchmark)
    proto = get_protocol(protocol)
    model_dir, benchmark_dir = Path(model_dir), Path(benchmark_dir)
    if prompting not in PROMPTINGS:
        raise EvaluationError(f"prompting must be one of {', '.join(PROMPTINGS)}, not {prompting!r}")
    if backend not in BACKENDS:
        raise EvaluationError(f"evaluation.backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    if limit is not None and int(limit) < 1:
        raise EvaluationError(f"limit must be a positive integer or None, not {limit!r}")
    if int(batch_size) < 1:
        raise EvaluationError(f"batch_size must be >= 1, not {batch_size!r}")
    if max_tokens is not None and int(max_tokens) < 1:
        raise EvaluationError(f"max_tokens must be >= 1, not {max_tokens!r}")
    _test_file, meta = _check_benchmark_dir(benchmark, benchmark_dir)
    _check_model_dir(model_dir)
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(var, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    resolved_device = resolve_device(device)
    resolved_dtype = resolve_dtype(dtype, resolved_device)
    records = bm.read_test_records(benchmark_dir)
    if limit is not None:
        records = records[: int(limit)]
    if not records:
        raise EvaluationError(f"{benchmark_dir} holds no test items")

    sampling_mode = "greedy" if proto.sampling == "greedy" else "published"
    with tempfile.TemporaryDirectory(prefix="ptb-eval-view-") as view_root:
        try:
            view = prepare_view(model_dir, base_dir, Path(view_root) / "model", sampling=sampling_mode)
        except (CheckpointRejected, InfrastructureError):
            raise
        except Exception as exc:  # the view promises those two on any input: anything else is a bug here
            raise InfrastructureError(f"preparing the evaluation view failed: {_first_line(exc)}") from exc
        view_s = time.monotonic() - started
        tokenizer, requests, prepared = prepare_requests(
            view, spec, records, benchmark_dir, proto, prompting=prompting, family=family,
            family_dir=base_dir if base_dir is not None else model_dir, templates=templates,
            templates_dir=templates_dir, num_fewshot=num_fewshot, max_tokens=max_tokens, reference=reference)
        ladder, demos, template_label, template_sha = (prepared["ladder"], prepared["demos"],
                                                       prepared["template_label"], prepared["template_sha256"])
        max_model_len = requests[0].max_model_len
        requests_s = time.monotonic() - started - view_s
        if requests_out is not None:
            write_requests(requests, Path(requests_out))
        occurring = added_tokens_in_inputs(view.added_tokens, [r.prompt for r in requests] + [r.tools for r in requests])
        if occurring:
            raise CheckpointRejected(f"added token(s) {', '.join(occurring)} occur in the requests and would change "
                                     "how they encode")
        if spec.score_batch is not None:
            # Scoring runs model output in the code sandbox: one that cannot start fails the job before any
            # GPU time is spent on generation.
            from .code_sandbox import CodeSandbox, with_timeout

            CodeSandbox(with_timeout(code_execution, 30)).preflight()
        from .generation import GenerationError, stop_token_ids, with_tool_calls

        stop_ids = stop_token_ids(model_dir, tokenizer)
        attempts: list[dict[str, Any]] = []
        responses = None
        engine_started = time.monotonic()
        with open_engine(backend, view.model_dir, tokenizer, device=resolved_device, dtype=resolved_dtype,
                         batch_size=batch_size, max_model_len=max_model_len, stop_ids=stop_ids,
                         request_timeout=timeout_seconds or 3600, server_log=server_log, server=server) as engine:
            generation_started = time.monotonic()
            engine_s = generation_started - engine_started
            from .progress import ProgressReporter

            for rung_tokens, tries in ladder:
                for _ in range(tries):
                    # One progress count per attempt: items generated of this attempt's requests.
                    engine.progress = ProgressReporter(len(requests), f"generate:{benchmark}", logger=log)
                    try:
                        # The limit is per attempt, as published: a timed-out attempt is retried lower down.
                        with time_limit(timeout_seconds), engine.progress:
                            responses = engine.generate(requests, rung_tokens, seed=seed * 100003)
                    except InfrastructureError:
                        raise
                    except (GenerationError, RuntimeError, ValueError) as exc:
                        log.error("generation failed (max_tokens=%d): %s", rung_tokens, _first_line(exc))
                        attempts.append({"max_tokens": rung_tokens, "error": _first_line(exc)})
                        continue
                    attempts.append({"max_tokens": rung_tokens, "error": None})
                    break
                if responses is not None:
                    break
            generation_s = time.monotonic() - generation_started
        if responses is None:
            raise AttemptsExhausted(f"generation failed on every attempt: {attempts[-1]['error']}", attempts)
        if spec.template == "tool_calling" and prompting == "chat":
            responses = with_tool_calls(responses)
        scoring_started = time.monotonic()
        scores = _score(spec, records, responses, code_execution)
        scoring_s = time.monotonic() - scoring_started

    graded = spec.graded
    if samples_path is not None:
        lines = [_sample_line(i, rec, req, resp, sc)
                 for i, (rec, req, resp, sc) in enumerate(zip(records, requests, responses, scores))]
        atomic_write_text(Path(samples_path), "".join(json.dumps(x, ensure_ascii=True, default=str) + "\n"
                                                      for x in lines))
    settings = benchmark_settings(proto, benchmark, overrides={"limit": limit, "max_tokens": max_tokens},
                                  template_sha256=template_sha)
    if prompting == "few-shot":
        settings["prompting"] = {"few-shot": len(demos)}
    prompt_lengths = [r.prompt_tokens for r in requests]
    return {
        "score": None if graded else float(spec.headline(scores)),
        "metric": spec.metric,
        "n": len(records),
        "n_published": spec.published_items,
        "partial": meta.get("partial"),
        "backend": backend,
        "device": resolved_device,
        "dtype": resolved_dtype,
        "limit": limit,
        "protocol": proto.id,
        "settings": settings,
        "settings_hash": settings_hash(settings),
        "prompting": prompting,
        "chat_template": template_label,
        "sampling_sent": requests[0].sampling,
        "max_tokens": attempts[-1]["max_tokens"],
        "attempts": attempts,
        "max_model_len": max_model_len,
        "prompt_tokens": {"min": min(prompt_lengths), "max": max(prompt_lengths)},
        "truncated": sum(1 for r in responses if r.finish_reason == "length"),
        "test_sha256": meta["sha256"],
        "duration_s": round(time.monotonic() - started, 2),
        "generation_s": round(generation_s, 2),
        # Where a cell's wall time goes: checks and view, building the requests, loading the model or starting the
        # server, generation (every attempt), scoring (HumanEval's programs included).
        "timings_s": {"view": round(view_s, 2), "requests": round(requests_s, 2), "engine_start": round(engine_s, 2),
                      "generation": round(generation_s, 2), "scoring": round(scoring_s, 2)},
        **view.record,
    }


__all__: list[str] = [
    "AttemptsExhausted",
    "EvaluationError",
    "InfrastructureError",
    "GenerationTimeout",
    "open_engine",
    "evaluate_checkpoint",
    "resolve_device",
    "resolve_dtype",
    "resolve_family",
    "family_chat_template",
    "fewshot_demos",
]

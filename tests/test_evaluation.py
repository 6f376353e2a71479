"""Checkpoint evaluation through lm-eval on local files: input checks, task configs, and real model runs."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from posttrainbench import benchmarks as bm
from posttrainbench.evaluation import (
    EvaluationError,
    build_task_config,
    evaluate_checkpoint,
    resolve_device,
    resolve_dtype,
)

RESULT_KEYS = {
    "score", "metric", "n", "backend", "device", "dtype", "limit", "max_gen_toks", "test_sha256", "duration_s",
    "lm_eval_version", "generation_s",
}
OFFLINE = ("aime2025", "arenahardwriting", "bfcl", "gsm8k", "healthbench", "humaneval")


@pytest.fixture(scope="module")
def bench_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("staged")
    for name in OFFLINE:
        bm.stage_benchmark(name, root / name)
    return root


def _evaluate(model_dir, benchmark, bench_dir, **overrides):
    kwargs = dict(limit=2, max_gen_toks=8, batch_size=2, device="cpu", dtype="auto", samples_path=None)
    kwargs.update(overrides)
    return evaluate_checkpoint(model_dir, benchmark, bench_dir, **kwargs)


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# ---------------------------------------------------------------------------------------------------------------
# settings and input checks (no model is loaded)
# ---------------------------------------------------------------------------------------------------------------


def test_resolve_dtype():
    assert resolve_dtype("auto", "cpu") == "float32"
    assert resolve_dtype("auto", "cuda") == "bfloat16"
    assert resolve_dtype("float16", "cuda") == "float16"
    with pytest.raises(EvaluationError, match="dtype must be one of"):
        resolve_dtype("fp8", "cpu")


def test_resolve_device():
    import torch

    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(EvaluationError, match="device must be one of"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(EvaluationError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_unknown_benchmark_is_refused(tmp_path):
    with pytest.raises(KeyError, match="unknown benchmark"):
        _evaluate(tmp_path, "mmlu", tmp_path)


def test_unknown_backend_is_refused(tiny_model_dir, bench_root):
    with pytest.raises(EvaluationError, match="evaluation.backend"):
        _evaluate(tiny_model_dir, "gsm8k", bench_root / "gsm8k", backend="tgi")


def test_missing_checkpoint_is_a_clear_error(bench_root, tmp_path):
    with pytest.raises(EvaluationError, match="does not exist"):
        _evaluate(tmp_path / "nope", "gsm8k", bench_root / "gsm8k")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EvaluationError, match="no config.json"):
        _evaluate(tmp_path / "empty", "gsm8k", bench_root / "gsm8k")


def test_benchmark_dir_is_checked(bench_root, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    with pytest.raises(EvaluationError, match="not a staged benchmark"):
        _evaluate(model, "gsm8k", tmp_path / "missing")
    with pytest.raises(EvaluationError, match="holds benchmark 'humaneval'"):
        _evaluate(model, "gsm8k", bench_root / "humaneval")
    tampered = tmp_path / "tampered"
    shutil.copytree(bench_root / "gsm8k", tampered)
    with open(tampered / "test.jsonl", "a", encoding="utf-8") as handle:
        handle.write('{"question": "1+1?", "answer": "#### 2"}\n')
    with pytest.raises(EvaluationError, match="test set was modified"):
        _evaluate(model, "gsm8k", tampered)


def test_bad_arguments_are_refused(bench_root, tmp_path):
    with pytest.raises(EvaluationError, match="limit"):
        _evaluate(tmp_path, "gsm8k", bench_root / "gsm8k", limit=0)
    with pytest.raises(EvaluationError, match="batch_size"):
        _evaluate(tmp_path, "gsm8k", bench_root / "gsm8k", batch_size=0)


def test_unloadable_checkpoint_raises_evaluation_error(bench_root, tmp_path):
    model = tmp_path / "broken"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llama"}')  # no weights, no tokenizer
    with pytest.raises(EvaluationError, match="could not load checkpoint"):
        _evaluate(model, "gsm8k", bench_root / "gsm8k")


# ---------------------------------------------------------------------------------------------------------------
# task configs load in lm-eval from the staged files
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("benchmark, n", [("gsm8k", 1319), ("humaneval", 164)])
@pytest.mark.parametrize("chat", [True, False])
def test_task_config_loads_local_data(bench_root, tmp_path, benchmark, n, chat):
    from lm_eval.tasks import TaskManager

    config = build_task_config(
        benchmark, bench_root / benchmark / "test.jsonl", max_gen_toks=64, apply_chat_template=chat,
        cache_dir=str(tmp_path / "cache"),
    )
    task = TaskManager(include_defaults=False).load([config])["tasks"][f"ptb_{benchmark}"]
    docs = list(task.test_docs())
    assert len(docs) == n
    first = docs[0]
    prompt = task.doc_to_text(first)
    if benchmark == "gsm8k":
        assert first["question"] in prompt
        assert task.doc_to_target(first) == "18"
        # lm-eval's per-document scoring is our helper: the gold solution scores 1, a wrong number 0.
        assert task.process_results(first, [first["answer"]]) == {"exact_match": 1.0}
        assert task.process_results(first, ["It is 17."]) == {"exact_match": 0.0}
    else:
        assert first["prompt"] in prompt
        if chat:
            # The answer is pre-filled with an opening fence: the model writes the whole function.
            assert task.doc_to_prefix(first) == "```python\n"
            solution = first["prompt"] + first["canonical_solution"]
        else:
            solution = first["canonical_solution"]
        assert task.process_results(first, [solution]) == {"pass@1": 1.0}
        assert task.process_results(first, ["    return 42\n"]) == {"pass@1": 0.0}
    assert task.config.generation_kwargs["max_gen_toks"] == 64
    assert task.config.generation_kwargs["do_sample"] is False


# ---------------------------------------------------------------------------------------------------------------
# real runs
# ---------------------------------------------------------------------------------------------------------------


def test_tiny_model_runs_end_to_end(tiny_model_dir, bench_root, tmp_path):
    """The whole lm-eval path on a seconds-to-load random model: fields, counts and the samples file agree."""
    samples = tmp_path / "samples.jsonl"
    result = _evaluate(tiny_model_dir, "gsm8k", bench_root / "gsm8k", limit=2, samples_path=samples)
    assert set(result) == RESULT_KEYS
    assert result["n"] == 2 and result["limit"] == 2 and result["max_gen_toks"] == 8
    assert result["device"] == "cpu" and result["dtype"] == "float32" and result["backend"] == "hf"
    assert result["test_sha256"] == json.loads((bench_root / "gsm8k" / "meta.json").read_text())["sha256"]
    records = _read_jsonl(samples)
    assert [r["doc_id"] for r in records] == [0, 1]
    assert records[0]["target"] == "18"
    assert "<|im_start|>assistant" in records[0]["prompt"]  # the chat template was applied
    assert result["score"] == sum(r["correct"] for r in records) / 2


def test_plain_completion_mode_sends_the_raw_prompt(tiny_model_dir, bench_root, tmp_path):
    samples = tmp_path / "samples.jsonl"
    result = _evaluate(tiny_model_dir, "humaneval", bench_root / "humaneval", samples_path=samples,
                       apply_chat_template=False)
    assert result["metric"] == "pass@1" and result["n"] == 2
    problems = bm.read_test_records(bench_root / "humaneval")
    records = _read_jsonl(samples)
    assert [r["prompt"] for r in records] == [problems[0]["prompt"], problems[1]["prompt"]]
    assert result["score"] == sum(r["correct"] for r in records) / 2


def test_missing_chat_template_is_a_clear_error(tiny_model_dir, bench_root, tmp_path):
    model = tmp_path / "no-template"
    shutil.copytree(tiny_model_dir, model)
    (model / "chat_template.jinja").unlink()
    with pytest.raises(EvaluationError, match="no chat template"):
        _evaluate(model, "gsm8k", bench_root / "gsm8k")


@pytest.mark.parametrize("benchmark", ["aime2025", pytest.param("bfcl", marks=pytest.mark.slow), "arenahardwriting",
                                       "healthbench"])
def test_every_benchmark_generates_and_scores(tiny_model_dir, bench_root, tmp_path, benchmark):
    """Each benchmark's task runs through lm-eval on a fast random model; its samples agree with its score."""
    samples = tmp_path / "samples.jsonl"
    result = _evaluate(tiny_model_dir, benchmark, bench_root / benchmark, samples_path=samples)
    assert set(result) == RESULT_KEYS and result["n"] == 2
    assert result["metric"] == bm.headline_metric(benchmark)
    records = _read_jsonl(samples)
    assert len(records) == 2 and all(r["prompt"] for r in records)
    if benchmark in bm.GRADED_BENCHMARKS:
        assert result["score"] is None and all(r["correct"] is None for r in records)
    else:
        assert result["score"] == sum(r["correct"] for r in records) / 2
    if benchmark == "bfcl":
        assert all("Functions:" in r["prompt"] for r in records)


def test_generation_past_its_time_limit_is_an_error(tiny_model_dir, bench_root):
    from posttrainbench.evaluation import GenerationTimeout

    with pytest.raises(GenerationTimeout, match="did not finish within"):
        _evaluate(tiny_model_dir, "gsm8k", bench_root / "gsm8k", max_gen_toks=4000, timeout_seconds=0.5)


@pytest.mark.slow
def test_smollm2_real_evaluation_and_vllm_agreement(smollm2_dir, openai_server, bench_root, tmp_path):
    """Greedy GSM8K on SmolLM2 through transformers and through vLLM (the session's server): same prompts,
    and the same outputs except where float rounding tips a greedy choice (then the common prefix is long)."""
    kwargs = dict(limit=3, max_gen_toks=48, batch_size=3, device="cpu", dtype="auto")
    hf = evaluate_checkpoint(smollm2_dir, "gsm8k", bench_root / "gsm8k", samples_path=tmp_path / "hf.jsonl", **kwargs)
    vllm = evaluate_checkpoint(smollm2_dir, "gsm8k", bench_root / "gsm8k", samples_path=tmp_path / "vllm.jsonl",
                               backend="vllm", server=openai_server, **kwargs)
    assert set(hf) == set(vllm) == RESULT_KEYS and vllm["backend"] == "vllm"
    a, b = _read_jsonl(tmp_path / "hf.jsonl"), _read_jsonl(tmp_path / "vllm.jsonl")
    assert [r["prompt"] for r in a] == [r["prompt"] for r in b]
    assert all(r["response"].strip() for r in a + b), "the model produced empty responses"
    for x, y in zip(a, b):
        common = len(os.path.commonprefix([x["response"], y["response"]]))
        assert x["response"] == y["response"] or common >= 20, (x["response"], y["response"])
    assert hf["score"] == pytest.approx(sum(r["correct"] for r in a) / 3)


def test_family_comes_from_the_model_config_not_the_path(tiny_model_dir, tmp_path):
    from posttrainbench.evaluation import detect_family

    assert detect_family(tiny_model_dir) == "qwen3"
    misleading = tmp_path / "gemma-3-4b-it"
    misleading.mkdir()
    (misleading / "config.json").write_text('{"model_type": "llama"}')
    assert detect_family(misleading) is None
    (misleading / "config.json").write_text('{"model_type": "gemma3_text"}')
    assert detect_family(misleading) == "gemma3"
    assert detect_family(tmp_path / "absent") is None

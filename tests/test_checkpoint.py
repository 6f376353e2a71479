"""validate_checkpoint: each check passes on a faithful copy and fails, with evidence, on the fault it targets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from posttrainbench.checkpoint import CHECK_NAMES, validate_checkpoint
from posttrainbench.models import build_tiny_model

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _passed(checks: dict) -> dict[str, bool]:
    return {name: check["passed"] for name, check in checks.items()}


def test_identical_copy_passes_everything(tmp_path, tiny_model_dir):
    ckpt = _copy(tiny_model_dir, tmp_path / "ckpt")
    checks = validate_checkpoint(ckpt, tiny_model_dir)
    assert list(checks) == list(CHECK_NAMES)
    assert all(_passed(checks).values()), checks
    for check in checks.values():
        assert isinstance(check["evidence"], str) and check["evidence"]
    assert "all finite" in checks["checkpoint_loads"]["evidence"]
    assert "24 tensor names and shapes identical" in checks["architecture_matches_base"]["evidence"]
    assert "512 tokens" in checks["tokenizer_matches_base"]["evidence"]


def test_bf16_copy_still_matches(tmp_path, tiny_model_dir):
    """A checkpoint saved in another dtype is the same architecture (dtype is reported, not failed)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
    ckpt = tmp_path / "bf16"
    model.save_pretrained(ckpt)
    for name in TOKENIZER_FILES:
        shutil.copy(tiny_model_dir / name, ckpt / name)
    checks = validate_checkpoint(ckpt, tiny_model_dir)
    assert all(_passed(checks).values()), checks
    assert "BF16" in checks["architecture_matches_base"]["evidence"]


def test_missing_dir_fails_present_and_skips_the_rest(tmp_path, tiny_model_dir):
    checks = validate_checkpoint(tmp_path / "never-written", tiny_model_dir)
    assert _passed(checks) == dict.fromkeys(CHECK_NAMES, False)
    assert "does not exist" in checks["checkpoint_present"]["evidence"]
    for name in CHECK_NAMES[1:]:
        assert checks[name]["evidence"].startswith("not checked: checkpoint not present")


def test_dir_without_weights_or_config_fails_present(tmp_path, tiny_model_dir):
    no_weights = _copy(tiny_model_dir, tmp_path / "no-weights")
    (no_weights / "model.safetensors").unlink()
    checks = validate_checkpoint(no_weights, tiny_model_dir)
    assert not checks["checkpoint_present"]["passed"]
    assert "no *.safetensors weights" in checks["checkpoint_present"]["evidence"]

    bin_only = _copy(tiny_model_dir, tmp_path / "bin-only")
    (bin_only / "model.safetensors").rename(bin_only / "pytorch_model.bin")
    evidence = validate_checkpoint(bin_only, tiny_model_dir)["checkpoint_present"]["evidence"]
    assert "pytorch_model.bin" in evidence and "safe_serialization" in evidence

    no_config = _copy(tiny_model_dir, tmp_path / "no-config")
    (no_config / "config.json").unlink()
    checks = validate_checkpoint(no_config, tiny_model_dir)
    assert not checks["checkpoint_present"]["passed"]
    assert "config.json missing" in checks["checkpoint_present"]["evidence"]


def test_missing_shard_named_by_index_fails_present(tmp_path, tiny_model_dir):
    ckpt = _copy(tiny_model_dir, tmp_path / "sharded")
    (ckpt / "model.safetensors").rename(ckpt / "model-00001-of-00002.safetensors")
    from posttrainbench.models import read_safetensors_header

    names = [n for n in read_safetensors_header(ckpt / "model-00001-of-00002.safetensors") if n != "__metadata__"]
    weight_map = {n: "model-00001-of-00002.safetensors" for n in names}
    weight_map[names[0]] = "model-00002-of-00002.safetensors"
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    checks = validate_checkpoint(ckpt, tiny_model_dir)
    assert not checks["checkpoint_present"]["passed"]
    assert "model-00002-of-00002.safetensors" in checks["checkpoint_present"]["evidence"]


@pytest.mark.parametrize("damage", ["truncate", "garble-header", "zero-header-length"])
def test_corrupted_safetensors_fails_loads(tmp_path, tiny_model_dir, damage):
    ckpt = _copy(tiny_model_dir, tmp_path / "ckpt")
    weights = ckpt / "model.safetensors"
    data = bytearray(weights.read_bytes())
    if damage == "truncate":
        data = data[: len(data) - 1000]
    elif damage == "garble-header":
        data[8:40] = b"\xff" * 32
    else:
        data[:8] = b"\x00" * 8
    weights.write_bytes(bytes(data))
    checks = validate_checkpoint(ckpt, tiny_model_dir)
    assert checks["checkpoint_present"]["passed"]
    assert not checks["checkpoint_loads"]["passed"]
    assert "model.safetensors" in checks["checkpoint_loads"]["evidence"]
    # The architecture cannot be confirmed from unreadable headers either.
    assert not checks["architecture_matches_base"]["passed"]


def _save_modified(tiny_model_dir: Path, out: Path, edit) -> Path:
    import torch
    from safetensors.torch import load_file, save_file

    ckpt = _copy(tiny_model_dir, out)
    tensors = load_file(ckpt / "model.safetensors")
    edit(tensors, torch)
    save_file(tensors, ckpt / "model.safetensors", metadata={"format": "pt"})
    return ckpt


def test_nan_weights_fail_loads(tmp_path, tiny_model_dir):
    def poison(tensors, torch):
        tensors["model.norm.weight"][0] = float("nan")

    ckpt = _save_modified(tiny_model_dir, tmp_path / "nan", poison)
    checks = validate_checkpoint(ckpt, tiny_model_dir)
    assert not checks["checkpoint_loads"]["passed"]
    assert "NaN/Inf" in checks["checkpoint_loads"]["evidence"]
    assert "model.norm.weight" in checks["checkpoint_loads"]["evidence"]
    # Above the full-read limit only the headers are checked, and the evidence says so.
    quick = validate_checkpoint(ckpt, tiny_model_dir, full_read_max_bytes=0)
    assert quick["checkpoint_loads"]["passed"]
    assert "tensor data not read" in quick["checkpoint_loads"]["evidence"]


def test_missing_tensor_fails_loads_and_architecture(tmp_path, tiny_model_dir):
    def drop(tensors, torch):
        del tensors["model.layers.1.mlp.down_proj.weight"]

    ckpt = _save_modified(tiny_model_dir, tmp_path / "dropped", drop)
    checks = validate_checkpoint(ckpt, tiny_model_dir)
    assert not checks["checkpoint_loads"]["passed"]
    assert "model.layers.1.mlp.down_proj.weight" in checks["checkpoint_loads"]["evidence"]
    assert not checks["architecture_matches_base"]["passed"]
    assert "1 tensor(s) only in base: model.layers.1.mlp.down_proj.weight" in (
        checks["architecture_matches_base"]["evidence"]
    )


def test_different_layer_count_fails_architecture_only(tmp_path, tiny_model_dir):
    deeper = build_tiny_model(tmp_path / "deeper", num_hidden_layers=3)
    checks = validate_checkpoint(deeper, tiny_model_dir)
    assert _passed(checks) == {
        "checkpoint_present": True,
        "checkpoint_loads": True,
        "architecture_matches_base": False,
        "tokenizer_matches_base": True,
    }, checks
    evidence = checks["architecture_matches_base"]["evidence"]
    assert "num_hidden_layers: checkpoint 3 vs base 2" in evidence
    assert "tensor(s) only in checkpoint: model.layers.2." in evidence


def test_config_field_edit_fails_architecture(tmp_path, tiny_model_dir):
    ckpt = _copy(tiny_model_dir, tmp_path / "ckpt")
    config = json.loads((ckpt / "config.json").read_text())
    config["architectures"] = ["Qwen3ForSequenceClassification"]
    (ckpt / "config.json").write_text(json.dumps(config))
    checks = validate_checkpoint(ckpt, tiny_model_dir)
    assert not checks["architecture_matches_base"]["passed"]
    assert "architectures: checkpoint ['Qwen3ForSequenceClassification'] vs base ['Qwen3ForCausalLM']" in (
        checks["architecture_matches_base"]["evidence"]
    )


def test_different_tokenizer_fails_tokenizer_only(tmp_path, tiny_model_dir):
    # Same size (512) but trained on less text: same shapes, different vocabulary.
    other = build_tiny_model(tmp_path / "other-tok", corpus_lines=300)
    ckpt = _copy(tiny_model_dir, tmp_path / "ckpt")
    for name in TOKENIZER_FILES:
        shutil.copy(other / name, ckpt / name)
    checks = validate_checkpoint(ckpt, tiny_model_dir)
    assert _passed(checks) == {
        "checkpoint_present": True,
        "checkpoint_loads": True,
        "architecture_matches_base": True,
        "tokenizer_matches_base": False,
    }, checks
    evidence = checks["tokenizer_matches_base"]["evidence"]
    assert evidence.startswith("tokenizer differs from the base model's: vocabulary")
    assert "only in checkpoint" in evidence and "only in base" in evidence


def test_added_special_token_passes_an_added_normal_token_fails(tmp_path, tiny_model_dir):
    """A new special token beyond the base's ids (a pad token, say) is allowed; a normal one changes encoding."""
    from transformers import AutoTokenizer

    ckpt = _copy(tiny_model_dir, tmp_path / "ckpt")
    tok = AutoTokenizer.from_pretrained(ckpt)
    assert tok.add_tokens(["<|think|>"], special_tokens=True) == 1
    tok.save_pretrained(ckpt)
    check = validate_checkpoint(ckpt, tiny_model_dir)["tokenizer_matches_base"]
    assert check["passed"], check
    assert "1 added special token(s) beyond the base's ids: '<|think|>'" in check["evidence"]

    assert tok.add_tokens(["the"]) == 1
    tok.save_pretrained(ckpt)
    check = validate_checkpoint(ckpt, tiny_model_dir)["tokenizer_matches_base"]
    assert not check["passed"]
    assert "added token 'the' (id 513): not special" in check["evidence"]


def test_reordered_merges_fail_tokenizer(tmp_path, tiny_model_dir):
    ckpt = _copy(tiny_model_dir, tmp_path / "ckpt")
    data = json.loads((ckpt / "tokenizer.json").read_text())
    merges = data["model"]["merges"]
    merges[0], merges[1] = merges[1], merges[0]
    (ckpt / "tokenizer.json").write_text(json.dumps(data))
    check = validate_checkpoint(ckpt, tiny_model_dir)["tokenizer_matches_base"]
    assert not check["passed"]
    assert check["evidence"].startswith("tokenizer differs from the base model's: merges")
    assert "first difference at merge #0" in check["evidence"]

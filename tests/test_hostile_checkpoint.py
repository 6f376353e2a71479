"""A submitted checkpoint is data: evaluation uses the base model's tokenizer, ignores generation settings, never
runs the checkpoint's code, and turns hostile files into a failed cell with the reason (never a crash), while a
fault of the pipeline itself still fails the job. Real tiny models, the real HF backend, real evaluate_cell."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest

from posttrainbench.cells import Cell
from posttrainbench.checkpoint import CHECK_NAMES, validate_checkpoint
from posttrainbench.checkpoint_guard import (
    MAX_CHAT_TEMPLATE_BYTES,
    CheckpointRejected,
    checkpoint_chat_template,
    generation_settings,
)
from posttrainbench.evaluation import InfrastructureError
from posttrainbench.scoring_jobs import EvaluationSetupError, evaluate_cell

CELL = Cell("attacker", "tiny", "gsm8k", 1)
# Greedy, so that two evaluations of the same weights give the same answers; the project's templates, since the
# published ones are not staged in tests.
OPTIONS = {"backend": "hf", "device": "cpu", "limit": 2, "batch_size": 2, "protocol": "posttrainbench-v1-greedy",
           "templates": {"use": "project"}, "per_benchmark": {"gsm8k": {"max_tokens": 6}}}


@pytest.fixture(scope="module")
def gsm8k_bench(tmp_path_factory) -> Path:
    from posttrainbench.benchmarks import stage_benchmark

    out = tmp_path_factory.mktemp("bench") / "gsm8k"
    stage_benchmark("gsm8k", out)
    return out


def _copy(tiny_model_dir: Path, tmp_path: Path, name: str = "final_model") -> Path:
    return Path(shutil.copytree(tiny_model_dir, tmp_path / name))


def _evaluate(tmp_path: Path, ckpt: Path, base: Path, bench: Path, options: dict = OPTIONS) -> dict:
    run_json = tmp_path / "run" / "run.json"
    run_json.parent.mkdir(parents=True, exist_ok=True)
    run_json.write_text(json.dumps({"status": "ok", "final_model": str(ckpt)}))
    out = tmp_path / "evals" / "seed1.json"
    record = evaluate_cell(CELL, run_json=run_json, benchmark_dir=bench, base_dir=base, options=options,
                           out_json=out)
    assert json.loads(out.read_text()) == record  # always written, whatever happened
    return record


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    data = edit(data) or data
    path.write_text(json.dumps(data))


def _responses(eval_json: Path) -> list[str]:
    samples = eval_json.with_name(eval_json.stem + ".samples.jsonl")
    return [json.loads(line)["response"] for line in samples.read_text().splitlines()]


# ----------------------------------------------------------------------------------------------------------------
# the tokenizer is the base's
# ----------------------------------------------------------------------------------------------------------------

PAYLOAD = "\nimport os\n"


def _decoder_attack(data: dict) -> None:
    data["decoder"] = {"type": "Sequence", "decoders": [
        data["decoder"], {"type": "Replace", "pattern": {"String": " "}, "content": PAYLOAD}]}


def _normalizer_attack(data: dict) -> None:
    data["normalizer"] = {"type": "Replace", "pattern": {"String": "7"}, "content": "1"}


def _pre_tokenizer_attack(data: dict) -> None:
    data["pre_tokenizer"]["add_prefix_space"] = True


def _post_processor_attack(data: dict) -> None:
    data["post_processor"]["single"].insert(0, {"SpecialToken": {"id": "<|im_start|>", "type_id": 0}})
    data["post_processor"]["special_tokens"] = {"<|im_start|>": {"id": "<|im_start|>", "ids": [1],
                                                                 "tokens": ["<|im_start|>"]}}


def _vocab_swap(data: dict) -> None:
    vocab = data["model"]["vocab"]
    vocab["Ġthe"], vocab["Ġand"] = vocab["Ġand"], vocab["Ġthe"]


def _model_option(data: dict) -> None:
    data["model"]["byte_fallback"] = True


def _special_flag(data: dict) -> None:
    data["added_tokens"][2]["special"] = False


@pytest.mark.parametrize(("edit", "component"), [
    (_decoder_attack, "decoder"),
    (_normalizer_attack, "normalizer"),
    (_pre_tokenizer_attack, "pre_tokenizer"),
    (_post_processor_attack, "post_processor"),
    (_vocab_swap, "vocabulary"),
    (_model_option, "model options (byte_fallback)"),
    (_special_flag, "added token '<|im_end|>' (id 2) changed: special"),
])
def test_base_weights_with_an_edited_tokenizer_are_a_failed_cell(tmp_path, tiny_model_dir, gsm8k_bench, edit,
                                                                  component):
    ckpt = _copy(tiny_model_dir, tmp_path)
    _edit_json(ckpt / "tokenizer.json", edit)
    if edit is _decoder_attack:  # the attack is real: the checkpoint's own tokenizer decodes into the payload
        from tokenizers import Tokenizer

        own = Tokenizer.from_file(str(ckpt / "tokenizer.json"))
        assert PAYLOAD in own.decode(own.encode("The answer is 42").ids)
    record = _evaluate(tmp_path, ckpt, tiny_model_dir, gsm8k_bench)
    assert record["status"] == "failed" and record["score"] is None
    assert record["error"].startswith(f"checkpoint rejected: tokenizer differs from the base model's: {component}")
    assert record["attempts"] == []  # refused as data before generation: never retried down the ladder
    check = validate_checkpoint(ckpt, tiny_model_dir)["tokenizer_matches_base"]
    assert not check["passed"] and component in check["evidence"]


def _with_added_token(tiny_model_dir: Path, out: Path, content: str, special: bool) -> Path:
    """The base weights with one added token and the embedding resized for it, saved by transformers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    if content == "<pad>":
        tok.add_special_tokens({"pad_token": content})
    else:
        assert tok.add_tokens([content], special_tokens=special) == 1
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.resize_token_embeddings(len(tok))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_honest_pad_token_evaluates_with_the_base_tokenizer_plus_it(tmp_path, tiny_model_dir, gsm8k_bench):
    ckpt = _with_added_token(tiny_model_dir, tmp_path / "final_model", "<pad>", special=True)
    record = _evaluate(tmp_path, ckpt, tiny_model_dir, gsm8k_bench)
    assert record["status"] == "ok", record["error"]
    tokenizer = record["tokenizer"]
    assert tokenizer["source"] == "base model" and tokenizer["n_added"] == 1
    assert tokenizer["added_tokens"] == [{"id": 512, "content": "<pad>"}]
    assert tokenizer["roles"]["pad_token"] == {"base": "<|endoftext|>", "checkpoint": "<pad>", "used": "<pad>"}
    assert tokenizer["roles"]["eos_token"]["used"] == "<|im_end|>"
    # The judge agrees: a grown vocabulary is not another model, and the base rows are compared as weights.
    checks = validate_checkpoint(ckpt, tiny_model_dir)
    assert all(check["passed"] for check in checks.values()), checks
    assert "vocabulary grown from 512 to 513" in checks["architecture_matches_base"]["evidence"]
    from posttrainbench.judge.provenance import check_provenance

    provenance = check_provenance(ckpt, tiny_model_dir, None, {})
    assert provenance["passed"] and provenance["comparable"] and provenance["cosine_to_base"] > 0.999, provenance


@pytest.mark.parametrize(("content", "special", "reason"), [
    ("the", False, "added token 'the' (id 512): not special"),
    ("the", True, "added tokens change how base tokens encode or decode: ' the'"),
    ("<a b>", True, "content holds whitespace"),
    # A marker of the forced chat template's turns, not of the base vocabulary
    ("<|im_start|>assistant", True, "added tokens change how base tokens encode or decode: 'def add(a, b)"),
])
def test_added_token_that_changes_encoding_is_a_failed_cell(tmp_path, tiny_model_dir, gsm8k_bench, content,
                                                            special, reason):
    ckpt = _with_added_token(tiny_model_dir, tmp_path / "final_model", content, special)
    record = _evaluate(tmp_path, ckpt, tiny_model_dir, gsm8k_bench)
    assert record["status"] == "failed"
    assert record["error"].startswith("checkpoint rejected: tokenizer differs from the base model's")
    assert reason in record["error"]


def test_added_special_token_that_occurs_in_the_test_items_is_a_failed_cell(tmp_path, tiny_model_dir, gsm8k_bench):
    """A special token matches before anything else is encoded: one whose text is in a question ("Janet", not a
    token of the base vocabulary) would turn part of the question into a token only the checkpoint has."""
    ckpt = _with_added_token(tiny_model_dir, tmp_path / "final_model", "Janet", special=True)
    record = _evaluate(tmp_path, ckpt, tiny_model_dir, gsm8k_bench)
    assert record["status"] == "failed"
    assert record["error"] == ("checkpoint rejected: added token(s) 'Janet' (id 512) occur in the requests and "
                               "would change how they encode")
    assert record["attempts"] == []  # found in the rendered requests, before any generation


def test_config_keys_that_load_another_model_are_dropped(tmp_path, tiny_model_dir):
    """vLLM serves a speculators checkpoint's verifier (model and tokenizer) instead of the folder it is given;
    ``_name_or_path`` (transformers writes it) is where the agent loaded from. Neither reaches the view."""
    from posttrainbench.checkpoint_guard import prepare_view

    ckpt = _copy(tiny_model_dir, tmp_path)
    _edit_json(ckpt / "config.json", lambda d: d.update(
        _name_or_path="Qwen/Qwen3-1.7B",
        speculators_config={"algorithm": "eagle3", "proposal_methods": [{"proposal_type": "greedy"}],
                            "verifier": {"name_or_path": str(tmp_path / "other-cell" / "final_model"),
                                         "architectures": ["Qwen3ForCausalLM"]}}))
    view = prepare_view(ckpt, tiny_model_dir, tmp_path / "view")
    config = json.loads((view.model_dir / "config.json").read_text())
    assert "speculators_config" not in config and "_name_or_path" not in config
    assert {"speculators_config", "_name_or_path"} <= set(view.record["ignored_config_keys"])
    assert validate_checkpoint(ckpt, tiny_model_dir)["checkpoint_loads"]["passed"]


def test_added_token_beyond_the_embedding_is_a_failed_cell(tmp_path, tiny_model_dir, gsm8k_bench):
    from transformers import AutoTokenizer

    ckpt = _copy(tiny_model_dir, tmp_path)
    tok = AutoTokenizer.from_pretrained(ckpt)
    tok.add_special_tokens({"pad_token": "<pad>"})
    tok.save_pretrained(ckpt)  # no resize: id 512 has no embedding row
    record = _evaluate(tmp_path, ckpt, tiny_model_dir, gsm8k_bench)
    assert record["error"] == "checkpoint rejected: added token id 512 is beyond the model's vocabulary size 512"


def test_eos_role_change_is_used_when_special_and_recorded(tmp_path, tiny_model_dir):
    from posttrainbench.tokenizer_guard import compare_tokenizers

    ckpt = _copy(tiny_model_dir, tmp_path)
    _edit_json(ckpt / "tokenizer_config.json", lambda d: d.update(eos_token="<|im_start|>", bos_token="Ġthe"))
    roles = compare_tokenizers(ckpt, tiny_model_dir).roles
    assert roles["eos_token"] == {"base": "<|im_end|>", "checkpoint": "<|im_start|>", "used": "<|im_start|>"}
    assert roles["bos_token"] == {"base": None, "checkpoint": "Ġthe", "used": None}
    _edit_json(ckpt / "tokenizer_config.json", lambda d: d.update(eos_token="Ġthe"))
    assert compare_tokenizers(ckpt, tiny_model_dir).roles["eos_token"]["used"] == "<|im_end|>"


def test_checkpoint_without_tokenizer_uses_the_base_one(tmp_path, tiny_model_dir):
    from posttrainbench.tokenizer_guard import TOKENIZER_FILES

    ckpt = _copy(tiny_model_dir, tmp_path)
    for name in TOKENIZER_FILES + ("chat_template.jinja",):
        (ckpt / name).unlink(missing_ok=True)
    check = validate_checkpoint(ckpt, tiny_model_dir)["tokenizer_matches_base"]
    assert check["passed"] and "none shipped" in check["evidence"]


# ----------------------------------------------------------------------------------------------------------------
# generation settings
# ----------------------------------------------------------------------------------------------------------------

HOSTILE_GENERATION = {"num_beams": 4, "max_new_tokens": 1, "repetition_penalty": 5.0, "length_penalty": -3.0,
                      "bad_words_ids": [[5], [6]], "forced_eos_token_id": 2, "no_repeat_ngram_size": 1,
                      "temperature": 0.7, "do_sample": True, "min_length": 5}


def test_generation_config_is_ignored_and_recorded(tmp_path, tiny_model_dir, gsm8k_bench):
    clean = _evaluate(tmp_path / "clean", tiny_model_dir, tiny_model_dir, gsm8k_bench)
    assert clean["status"] == "ok", clean["error"]
    ckpt = _copy(tiny_model_dir, tmp_path)
    (ckpt / "generation_config.json").write_text(json.dumps(HOSTILE_GENERATION))
    _edit_json(ckpt / "config.json", lambda d: d.update(num_beams=3, repetition_penalty=9.0, max_length=3))
    record = _evaluate(tmp_path / "attack", ckpt, tiny_model_dir, gsm8k_bench)
    assert record["status"] == "ok", record["error"]
    settings = record["generation_settings"]
    assert settings["sampling"] == "greedy" and settings["applied"] == {"do_sample": False}
    assert set(HOSTILE_GENERATION) <= set(settings["ignored"])
    assert {"num_beams", "repetition_penalty", "max_length"} <= set(record["ignored_config_keys"])
    # Nothing of it applied: the same greedy answers as the untouched model.
    assert _responses(tmp_path / "attack" / "evals" / "seed1.json") == _responses(
        tmp_path / "clean" / "evals" / "seed1.json")


def test_sampling_keys_are_read_only_when_the_protocol_takes_them(tmp_path):
    (tmp_path / "generation_config.json").write_text(json.dumps(
        {**HOSTILE_GENERATION, "top_p": 0.9, "top_k": "many", "min_p": 7}))
    assert generation_settings(tmp_path)["applied"] == {"do_sample": False}
    settings = generation_settings(tmp_path, "checkpoint")
    assert settings["applied"] == {"do_sample": True, "temperature": 0.7, "top_p": 0.9}
    assert {"num_beams", "top_k", "min_p", "max_new_tokens"} <= set(settings["ignored"])
    (tmp_path / "generation_config.json").write_text("[" * 100_000)
    unreadable = generation_settings(tmp_path, "checkpoint")
    assert unreadable["applied"] == {"do_sample": False}
    assert "unreadable" in unreadable["ignored"]["generation_config.json"]


# ----------------------------------------------------------------------------------------------------------------
# hostile files: a failed cell with the reason, never an exception
# ----------------------------------------------------------------------------------------------------------------


def _config_list(ckpt: Path) -> None:
    (ckpt / "config.json").write_text(json.dumps([{"model_type": "qwen3"}]))


def _config_deep(ckpt: Path) -> None:
    (ckpt / "config.json").write_text('{"a":' * 50_000 + "1" + "}" * 50_000)


def _config_huge(ckpt: Path) -> None:
    (ckpt / "config.json").write_text(json.dumps({"model_type": "qwen3", "pad": "x" * (5 << 20)}))


def _unknown_architecture(ckpt: Path) -> None:
    _edit_json(ckpt / "config.json", lambda d: d.update(architectures=["EvilForCausalLM"]))


def _header_64gib(ckpt: Path) -> None:
    weights = ckpt / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[:8] = struct.pack("<Q", 64 << 30)
    weights.write_bytes(bytes(data))


def _header_deep(ckpt: Path) -> None:
    header = b"[" * 20_000 + b"]" * 20_000
    (ckpt / "extra.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)


def _header_lies(ckpt: Path) -> None:
    header = json.dumps({"w": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4]}}).encode()
    (ckpt / "extra.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)


def _extra_garbage(ckpt: Path) -> None:
    (ckpt / "optimizer.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")


def _index_escapes(ckpt: Path) -> None:
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"model.norm.weight": "../other-cell/model.safetensors"}}))


def _config_names_a_path(ckpt: Path) -> None:
    _edit_json(ckpt / "config.json", lambda d: d.update(
        quantization_config={"quant_method": "fp8", "modules": ["../../other-cell/final_model"]}))


def _tokenizer_deep(ckpt: Path) -> None:
    (ckpt / "tokenizer.json").write_text("[" * 100_000)


def _tokenizer_not_a_tokenizer(ckpt: Path) -> None:
    (ckpt / "tokenizer.json").write_text(json.dumps({"model": {"type": "Evil"}}))


@pytest.mark.parametrize(("damage", "reason"), [
    (_config_list, "config.json is a JSON list, not an object"),
    (_config_deep, "unreadable config.json: config.json: nested"),
    (_config_huge, "over the 4194304-byte limit"),
    (_unknown_architecture, "architecture 'EvilForCausalLM' is not a transformers generative model class"),
    (_header_64gib, "model.safetensors: header length 68719476736 does not fit"),
    (_header_deep, "extra.safetensors header: nested"),
    (_header_lies, "tensor 'w' holds 4 bytes, its dtype and shape need 4000"),
    (_extra_garbage, "unreadable weights: optimizer.safetensors"),
    (_index_escapes, "names '../other-cell/model.safetensors', not a safetensors file of the checkpoint"),
    (_config_names_a_path, "quantization_config.modules[0] names a path ('../../other-cell/final_model')"),
    (_tokenizer_deep, "tokenizer.json unreadable (tokenizer.json: nested"),
    (_tokenizer_not_a_tokenizer, "tokenizer.json unreadable (tokenizer.json: not a tokenizer"),
])
def test_hostile_files_are_a_failed_cell_with_the_reason(tmp_path, tiny_model_dir, gsm8k_bench, damage, reason):
    ckpt = _copy(tiny_model_dir, tmp_path)
    damage(ckpt)
    record = _evaluate(tmp_path, ckpt, tiny_model_dir, gsm8k_bench)
    assert record["status"] == "failed" and record["error"].startswith("checkpoint rejected: ")
    assert reason in record["error"], record["error"]
    checks = validate_checkpoint(ckpt, tiny_model_dir)  # the judge's checks never raise either
    assert list(checks) == list(CHECK_NAMES)
    assert not all(check["passed"] for check in checks.values())


# ----------------------------------------------------------------------------------------------------------------
# nothing of the checkpoint runs, nothing asks
# ----------------------------------------------------------------------------------------------------------------

EVIL_CODE = """
import pathlib
pathlib.Path({marker!r}).write_text("executed")
from transformers import Qwen3Config, Qwen3ForCausalLM, PreTrainedTokenizerFast
class EvilConfig(Qwen3Config):
    model_type = "evil_model"
class EvilModel(Qwen3ForCausalLM):
    config_class = EvilConfig
class EvilTokenizer(PreTrainedTokenizerFast):
    pass
"""


def _plant_code(ckpt: Path, marker: Path, model_type: str | None = None) -> None:
    (ckpt / "evil.py").write_text(EVIL_CODE.format(marker=str(marker)))
    auto_map = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    _edit_json(ckpt / "config.json", lambda d: d.update(auto_map=auto_map, **({"model_type": model_type}
                                                                               if model_type else {})))
    _edit_json(ckpt / "tokenizer_config.json",
               lambda d: d.update(auto_map={"AutoTokenizer": [None, "evil.EvilTokenizer"]},
                                  tokenizer_class="EvilTokenizer"))


@pytest.fixture
def no_prompt(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("something asked on stdin")

    monkeypatch.setattr("builtins.input", refuse)


def test_auto_map_is_neither_executed_nor_asked_about(tmp_path, tiny_model_dir, gsm8k_bench, no_prompt):
    marker = tmp_path / "executed"
    ckpt = _copy(tiny_model_dir, tmp_path)
    _plant_code(ckpt, marker)
    record = _evaluate(tmp_path, ckpt, tiny_model_dir, gsm8k_bench)
    assert record["status"] == "ok", record["error"]  # neutralised: transformers' own Qwen3 class evaluated it
    assert "auto_map" in record["ignored_config_keys"]
    checks = validate_checkpoint(ckpt, tiny_model_dir)
    assert checks["checkpoint_loads"]["passed"], checks
    assert not marker.exists()


def test_unknown_model_type_with_custom_code_is_refused_without_asking(tmp_path, tiny_model_dir, gsm8k_bench,
                                                                        no_prompt):
    marker = tmp_path / "executed"
    ckpt = _copy(tiny_model_dir, tmp_path)
    _plant_code(ckpt, marker, model_type="evil_model")
    record = _evaluate(tmp_path, ckpt, tiny_model_dir, gsm8k_bench)
    assert record["error"] == ("checkpoint rejected: config.json: model_type 'evil_model' is not a model type "
                               "transformers knows")
    checks = validate_checkpoint(ckpt, tiny_model_dir)
    assert not checks["checkpoint_loads"]["passed"]
    assert "evil_model" in checks["checkpoint_loads"]["evidence"]
    assert not marker.exists()


def test_checkpoint_chat_template_is_bounded(tmp_path, tiny_model_dir):
    ckpt = _copy(tiny_model_dir, tmp_path)
    assert "im_start" in checkpoint_chat_template(ckpt)
    (ckpt / "chat_template.jinja").write_text("{{ 'x' }}" * (MAX_CHAT_TEMPLATE_BYTES // 8))
    with pytest.raises(CheckpointRejected, match="over the .*-byte limit"):
        checkpoint_chat_template(ckpt)
    (ckpt / "chat_template.jinja").unlink()
    _edit_json(ckpt / "tokenizer_config.json", lambda d: d.update(chat_template={"not": "a string"}))
    with pytest.raises(CheckpointRejected, match="not a string"):
        checkpoint_chat_template(ckpt)


# ----------------------------------------------------------------------------------------------------------------
# the pipeline's own faults fail the job
# ----------------------------------------------------------------------------------------------------------------


def test_missing_staged_base_fails_the_job(tmp_path, tiny_model_dir, gsm8k_bench):
    ckpt = _copy(tiny_model_dir, tmp_path)
    with pytest.raises(EvaluationSetupError, match="staged base model .* is missing"):
        _evaluate(tmp_path, ckpt, tmp_path / "no-base", gsm8k_bench)
    assert not (tmp_path / "evals" / "seed1.json").exists()


def test_unreadable_base_tokenizer_and_bugs_in_the_checks_fail_the_job(tmp_path, tiny_model_dir, gsm8k_bench,
                                                                       monkeypatch):
    ckpt = _copy(tiny_model_dir, tmp_path)
    base = _copy(tiny_model_dir, tmp_path, "base")
    (base / "tokenizer.json").write_text("{")
    with pytest.raises(InfrastructureError, match="staged base model .*tokenizer unreadable"):
        _evaluate(tmp_path, ckpt, base, gsm8k_bench)

    def broken(*args, **kwargs):
        raise TypeError("a bug in the checks")

    monkeypatch.setattr("posttrainbench.checkpoint_guard.sanitized_config", broken)
    with pytest.raises(InfrastructureError, match="preparing the evaluation view failed: TypeError"):
        _evaluate(tmp_path, ckpt, tiny_model_dir, gsm8k_bench)
    assert not (tmp_path / "evals" / "seed1.json").exists()


# ----------------------------------------------------------------------------------------------------------------
# vLLM gets the view, the evaluation tokenizer and no generation config
# ----------------------------------------------------------------------------------------------------------------


def test_vllm_server_gets_the_view_and_the_evaluation_tokenizer(tmp_path, tiny_model_dir, gsm8k_bench, monkeypatch):
    from posttrainbench import serving
    from posttrainbench.evaluation import EvaluationError, evaluate_checkpoint

    seen = {}

    class Recorder(serving.OpenAICompatibleServer):
        def start(self):
            seen["argv"] = self.command()
            seen["files"] = sorted(p.name for p in self.model_dir.iterdir())
            seen["tokenizer.json"] = (self.tokenizer / "tokenizer.json").read_text()
            raise serving.ServerError("not started in this test")

    monkeypatch.setattr(serving, "OpenAICompatibleServer", Recorder)
    ckpt = _with_added_token(tiny_model_dir, tmp_path / "final_model", "<pad>", special=True)
    (ckpt / "generation_config.json").write_text(json.dumps(HOSTILE_GENERATION))
    (ckpt / "evil.py").write_text("raise SystemExit")
    with pytest.raises(EvaluationError, match="could not load checkpoint in vLLM"):
        evaluate_checkpoint(ckpt, "gsm8k", gsm8k_bench, limit=1, max_tokens=4, batch_size=1, device="cpu",
                            dtype="float32", samples_path=None, backend="vllm", base_dir=tiny_model_dir,
                            templates="project", server_log=tmp_path / "vllm.log")
    argv = seen["argv"]
    model = argv[argv.index("--model") + 1]
    assert argv[argv.index("--tokenizer") + 1] == model and Path(model).name == "model"
    assert argv[argv.index("--generation-config") + 1] == "vllm"
    assert "--trust-remote-code" not in argv
    assert seen["files"] == ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    added = json.loads(seen["tokenizer.json"])["added_tokens"]
    assert [t["content"] for t in added] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]

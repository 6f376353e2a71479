"""The built-in reference-sft recipe, on the tiny model (seconds) and, data-wise, on real GSM8K."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from posttrainbench.checkpoint import validate_checkpoint
from posttrainbench.io import read_json, sha256_file
from posttrainbench.recipes import RECIPES
from posttrainbench.recipes.sft import format_answer, load_examples, train_sft

SRC = Path(__file__).resolve().parents[1] / "src"

TINY = dict(max_steps=3, learning_rate=1e-3, batch_size=2, max_length=256, max_examples=24, bf16="auto")


def test_recipe_registry_points_at_train_sft():
    module, func = RECIPES["reference-sft"].split(":")
    assert module == "posttrainbench.recipes.sft" and func == train_sft.__name__


def test_format_answer_ends_in_an_extractable_number():
    raw = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips.\n#### 72"
    assert (
        format_answer(raw) == "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips.\nThe answer is 72."
    )
    assert format_answer("It costs $<<2*500=1000>>1000.\n#### 1,000").endswith("The answer is 1000.")
    assert format_answer("A loss of 3.\n#### -3") == "A loss of 3.\nThe answer is -3."


def test_every_gsm8k_target_ends_with_its_gold_answer(gsm8k_train_jsonl):
    """The last number of every training target is the GSM8K gold answer (what the evaluator extracts)."""
    import re

    examples = load_examples(gsm8k_train_jsonl, None, seed=0)
    records = [json.loads(line) for line in gsm8k_train_jsonl.read_text().splitlines() if line.strip()]
    assert len(examples) == len(records) > 7000
    for example, record in zip(examples, records):
        target = example["completion"][0]["content"]
        gold = record["answer"].split("####")[-1].strip().replace(",", "")
        assert "<<" not in target and "####" not in target
        assert re.findall(r"-?\d+(?:\.\d+)?", target)[-1] == gold, target
        assert example["prompt"] == [{"role": "user", "content": record["question"].strip()}]


def test_subset_is_chosen_by_seed(gsm8k_train_jsonl):
    first = load_examples(gsm8k_train_jsonl, 50, seed=1)
    again = load_examples(gsm8k_train_jsonl, 50, seed=1)
    other = load_examples(gsm8k_train_jsonl, 50, seed=2)
    assert len(first) == 50 and first == again
    assert first != other


def test_train_sft_runs_saves_and_is_deterministic(tmp_path, tiny_model_dir, gsm8k_train_jsonl):
    log = tmp_path / "train.log.jsonl"
    out_a = tmp_path / "a" / "final_model"
    metrics = train_sft(tiny_model_dir, gsm8k_train_jsonl, out_a, seed=7, log_path=log, **TINY)

    assert math.isfinite(metrics["train_loss"]) and metrics["train_loss"] > 0
    assert metrics["steps"] == 3 and metrics["examples"] == 24
    assert metrics["device"] == "cpu" and metrics["dtype"] == "float32"
    assert metrics["duration_s"] > 0
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["step"] for e in events if "loss" in e] == [1, 2, 3]
    assert read_json(out_a / "ptb_train.json")["train_loss"] == metrics["train_loss"]
    assert sorted(p.name for p in out_a.parent.iterdir()) == ["final_model"]  # no temp folders left

    checks = validate_checkpoint(out_a, tiny_model_dir)
    assert all(c["passed"] for c in checks.values()), checks
    # Training changed the weights.
    assert sha256_file(out_a / "model.safetensors") != sha256_file(tiny_model_dir / "model.safetensors")

    out_b = tmp_path / "b" / "final_model"
    again = train_sft(tiny_model_dir, gsm8k_train_jsonl, out_b, seed=7, **TINY)
    assert again["train_loss"] == metrics["train_loss"]
    assert sha256_file(out_b / "model.safetensors") == sha256_file(out_a / "model.safetensors")

    out_c = tmp_path / "c" / "final_model"
    train_sft(tiny_model_dir, gsm8k_train_jsonl, out_c, seed=8, **TINY)
    assert sha256_file(out_c / "model.safetensors") != sha256_file(out_a / "model.safetensors")


def test_trained_model_loads_and_generates(tmp_path, tiny_model_dir, gsm8k_train_jsonl):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "final_model"
    train_sft(tiny_model_dir, gsm8k_train_jsonl, out, seed=0, **TINY)
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert tok.chat_template and tok.eos_token == "<|im_end|>"
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is 2 + 2?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        gen = model.generate(**ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    assert gen.shape[1] > ids["input_ids"].shape[1]


def test_training_reduces_loss_on_repeated_data(tmp_path, tiny_model_dir, gsm8k_train_jsonl):
    """A real learning signal: on 4 examples seen repeatedly, the loss falls well below its start."""
    metrics = train_sft(
        tiny_model_dir,
        gsm8k_train_jsonl,
        tmp_path / "out",
        max_steps=20,
        learning_rate=3e-3,
        batch_size=4,
        max_length=256,
        max_examples=4,
        seed=0,
        bf16=False,
    )
    assert metrics["final_loss"] < metrics["first_loss"] - 0.5, metrics


def test_bad_inputs_are_rejected(tmp_path, tiny_model_dir):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "no question here"}) + "\n")
    with pytest.raises(ValueError, match="question"):
        train_sft(tiny_model_dir, bad, tmp_path / "out", seed=0, **TINY)
    with pytest.raises(ValueError, match="max_steps"):
        train_sft(tiny_model_dir, bad, tmp_path / "out", seed=0, **{**TINY, "max_steps": 0})
    assert not (tmp_path / "out").exists()


def test_cli_runs_as_a_subprocess(tmp_path, tiny_model_dir, gsm8k_train_jsonl):
    out = tmp_path / "final_model"
    metrics_file = tmp_path / "metrics.json"
    from posttrainbench.evaluation import family_chat_template

    template = tmp_path / "chat_template.smollm.jinja"
    template.write_text(family_chat_template("smollm"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    cmd = [
        sys.executable, "-m", "posttrainbench.recipes.sft",
        "--base", str(tiny_model_dir), "--train", str(gsm8k_train_jsonl), "--out", str(out),
        "--max-steps", "2", "--batch-size", "2", "--max-length", "256", "--max-examples", "8",
        "--learning-rate", "1e-3", "--seed", "3", "--bf16", "false", "--gradient-checkpointing", "true",
        "--metrics-out", str(metrics_file), "--chat-template", str(template),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = json.loads(proc.stdout)  # stdout holds only the metrics JSON
    assert printed == read_json(metrics_file)
    assert printed["steps"] == 2 and printed["examples"] == 8
    assert printed["hyperparameters"]["gradient_checkpointing"] is True
    assert (out / "model.safetensors").is_file()
    # It trained in, and saved, the template evaluation forces on the family.
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(out).chat_template == family_chat_template("smollm")

    bad = subprocess.run(cmd[:3] + ["--base", str(tiny_model_dir)], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "required" in bad.stderr

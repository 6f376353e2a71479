"""``reference-sft``: supervised fine-tuning of a base model on GSM8K train with TRL's ``SFTTrainer``.

Data: JSONL records with ``question`` and ``answer`` (GSM8K's format, whose answer ends in ``#### N``). Each record
becomes a conversational prompt/completion pair: user = the question, assistant = the worked solution with the
``<<a*b=c>>`` calculator annotations removed and the ``#### N`` line rewritten as ``The answer is N.``, so the last
number the model writes is its answer (what the evaluator extracts). The loss covers the completion only (TRL's
``completion_only_loss``, on by default for prompt/completion data), including the end-of-turn token, so the model
learns to stop.

Deterministic: the example subset is drawn with ``random.Random(seed)``; model init, data order and dropout are seeded
through ``SFTConfig(seed=..., data_seed=...)``; on CPU, runs with the same arguments give bit-identical weights. On
CUDA (bf16 autocast, gradient checkpointing) it is seeded and two runs of the tiny model on an H200 gave identical
weights, but bitwise reproducibility across GPU kernels/driver versions is not promised.

Offline: the model and tokenizer come from ``base_dir`` only, nothing is reported anywhere (``report_to="none"``).
The output folder is written next to ``out_dir`` and renamed into place when complete.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ..io import atomic_write_json
from ..progress import ProgressReporter

_CALC = re.compile(r"<<[^<>]*>>")
_FINAL = re.compile(r"^\s*####\s*(.+?)\s*$")

# What the user turn holds: the bare question. Change together with the evaluator's prompt if that adds instructions.
PROMPT_TEMPLATE = "{question}"


def format_answer(answer: str) -> str:
    """GSM8K solution -> training target: calculator annotations removed, ``#### N`` -> ``The answer is N.``"""
    lines = [_CALC.sub("", line).rstrip() for line in answer.strip().splitlines()]
    out = []
    for line in lines:
        match = _FINAL.match(line)
        if match:
            number = match.group(1).replace(",", "")
            out.append(f"The answer is {number}.")
        elif line:
            out.append(line)
    return "\n".join(out)


def load_examples(train_jsonl: Path, max_examples: int | None, seed: int) -> list[dict[str, Any]]:
    """Read ``question``/``answer`` records and return conversational prompt/completion examples.

    With ``max_examples`` smaller than the file, a subset is drawn with ``random.Random(seed)`` (the same seed
    always gives the same subset, in file order).
    """
    records = []
    with open(train_jsonl, encoding="utf-8") as handle:
        for lineno, raw in enumerate(handle, 1):
            if not raw.strip():
                continue
            record = json.loads(raw)
            if "question" not in record or "answer" not in record:
                raise ValueError(f"{train_jsonl}:{lineno}: record lacks 'question'/'answer'")
            records.append(record)
    if not records:
        raise ValueError(f"{train_jsonl} holds no records")
    if max_examples is not None and 0 < max_examples < len(records):
        keep = sorted(random.Random(seed).sample(range(len(records)), max_examples))
        records = [records[i] for i in keep]
    return [
        {
            "prompt": [{"role": "user", "content": PROMPT_TEMPLATE.format(question=r["question"].strip())}],
            "completion": [{"role": "assistant", "content": format_answer(r["answer"])}],
        }
        for r in records
    ]


def _resolve_bf16(bf16: str | bool) -> bool:
    import torch

    if isinstance(bf16, str):
        if bf16.lower() != "auto":
            return bf16.lower() in ("1", "true", "yes", "on")
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return bool(bf16)


def _save_dtype(base_dir: Path):
    """Save in the base model's dtype (float32 for a staged GGUF; bf16 for most hub checkpoints)."""
    import torch

    config = json.loads((Path(base_dir) / "config.json").read_text(encoding="utf-8"))
    name = config.get("dtype") or config.get("torch_dtype") or "float32"
    return {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(str(name), torch.float32)


def train_sft(
    base_dir: Path,
    train_jsonl: Path,
    out_dir: Path,
    *,
    max_steps: int,
    learning_rate: float,
    batch_size: int,
    max_length: int,
    max_examples: int | None,
    seed: int,
    bf16: str | bool = "auto",
    log_path: Path | None = None,
    gradient_accumulation_steps: int = 1,
    warmup_ratio: float = 0.05,
    gradient_checkpointing: bool | None = None,
    chat_template: str | None = None,
) -> dict[str, Any]:
    """Fine-tune ``base_dir`` on ``train_jsonl`` for ``max_steps`` optimizer steps; save model+tokenizer to ``out_dir``.

    ``chat_template`` (Jinja text) replaces the base tokenizer's template for training and in the saved model:
    the pipeline passes the template evaluation forces on the model's family, so training and scoring agree.

    Returns ``{"train_loss", "final_loss", "steps", "examples", "duration_s", "device", "dtype", ...}``;
    ``train_loss`` is the mean loss over all steps, ``final_loss`` the last logged step's. ``log_path`` (optional)
    receives one JSON line per trainer log event. ``gradient_checkpointing`` defaults to on with CUDA, off on CPU.
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback, set_seed
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    from ..models import _clean_tokenizer_config, _replace_dir  # shared folder helpers

    base_dir, train_jsonl, out_dir = Path(base_dir), Path(train_jsonl), Path(out_dir)
    if max_steps < 1:
        raise ValueError("max_steps must be >= 1")
    started = time.monotonic()
    cuda = torch.cuda.is_available()
    use_bf16 = _resolve_bf16(bf16)
    if gradient_checkpointing is None:
        gradient_checkpointing = cuda

    examples = load_examples(train_jsonl, max_examples, seed)
    dataset = Dataset.from_list(examples)

    set_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(base_dir, trust_remote_code=False, local_files_only=True)
    if chat_template:
        tokenizer.chat_template = chat_template
    if tokenizer.chat_template is None:
        raise ValueError(f"{base_dir} has no chat template; reference-sft trains on chat-formatted data")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, trust_remote_code=False, local_files_only=True)
    save_dtype = _save_dtype(base_dir)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.training-", dir=out_dir.parent))
    log_handle = open(log_path, "a", encoding="utf-8") if log_path is not None else None
    logged: list[dict[str, Any]] = []

    class _Log(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: D401 - trainer hook
            record = {"step": state.global_step, **{k: v for k, v in (logs or {}).items()}}
            logged.append(record)
            # One compact line per event on stderr (stdout is kept for the CLI's metrics JSON).
            shown = {k: (float(f"{v:.4g}") if isinstance(v, float) else v) for k, v in record.items()}
            print(json.dumps(shown, default=str), file=sys.stderr, flush=True)
            if log_handle is not None:
                log_handle.write(json.dumps(record, default=float) + "\n")
                log_handle.flush()

    class _Progress(TrainerCallback):
        """Optimizer steps done of ``max_steps``, as progress lines on stderr (the agent's trace)."""

        reporter: ProgressReporter | None = None

        def on_train_begin(self, args, state, control, **kwargs):  # noqa: D401 - trainer hook
            self.reporter = ProgressReporter(state.max_steps or max_steps, "train-steps", logger=progress_log)

        def on_step_end(self, args, state, control, **kwargs):  # noqa: D401 - trainer hook
            if self.reporter is not None:
                self.reporter.set(state.global_step)

        def on_train_end(self, args, state, control, **kwargs):  # noqa: D401 - trainer hook
            if self.reporter is not None:
                self.reporter.set(state.global_step)
                self.reporter.finish(complete=False)

    # Progress goes to stderr whether or not the caller configured logging.
    progress_log = logging.getLogger("posttrainbench.recipes.sft.progress")
    if not progress_log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        progress_log.addHandler(handler)
        progress_log.setLevel(logging.INFO)
        progress_log.propagate = False

    try:
        config = SFTConfig(
            output_dir=str(work / "trainer"),
            max_steps=max_steps,
            learning_rate=learning_rate,
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=gradient_accumulation_steps,
            max_length=max_length,
            lr_scheduler_type="cosine",
            warmup_steps=max(0, math.ceil(warmup_ratio * max_steps)),
            weight_decay=0.0,
            max_grad_norm=1.0,
            seed=seed,
            data_seed=seed,
            bf16=use_bf16,
            fp16=False,
            use_cpu=not cuda,
            gradient_checkpointing=gradient_checkpointing,
            logging_steps=1 if max_steps <= 50 else 10,
            save_strategy="no",
            eval_strategy="no",
            report_to="none",
            disable_tqdm=True,
            dataloader_num_workers=0,
            packing=False,
            completion_only_loss=True,
        )
        trainer = SFTTrainer(
            model=model,
            args=config,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[_Log(), _Progress()],
        )
        # The stock printer writes python dicts to stdout; _Log replaces it.
        trainer.remove_callback(PrinterCallback)
        result = trainer.train()
        losses = [r["loss"] for r in logged if "loss" in r]
        train_loss = float(result.training_loss)
        if not math.isfinite(train_loss):
            raise RuntimeError(f"training diverged: mean loss {train_loss}")

        steps = int(trainer.state.global_step)
        if not trainer.is_world_process_zero():
            # Under a multi-process launcher only rank 0 writes the model.
            return {"train_loss": train_loss, "steps": steps, "rank_zero": False}
        final = trainer.model
        final.eval()
        staging = work / "model"
        final.to(save_dtype).save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        _clean_tokenizer_config(staging)
        metrics = {
            "recipe": "reference-sft",
            "train_loss": train_loss,
            "first_loss": float(losses[0]) if losses else None,
            "final_loss": float(losses[-1]) if losses else None,
            "steps": steps,
            "examples": len(examples),
            "examples_seen": steps * batch_size * gradient_accumulation_steps * int(trainer.args.world_size),
            "epochs": float(trainer.state.epoch or 0.0),
            "duration_s": round(time.monotonic() - started, 2),
            "device": "cuda" if cuda else "cpu",
            "dtype": "bf16-autocast" if use_bf16 else "float32",
            "saved_dtype": str(save_dtype).replace("torch.", ""),
            "seed": seed,
            "hyperparameters": {
                "max_steps": max_steps,
                "learning_rate": learning_rate,
                "batch_size": batch_size,
                "gradient_accumulation_steps": gradient_accumulation_steps,
                "max_length": max_length,
                "max_examples": max_examples,
                "warmup_ratio": warmup_ratio,
                "gradient_checkpointing": bool(gradient_checkpointing),
            },
            "base_dir": str(base_dir),
            "train_jsonl": str(train_jsonl),
        }
        atomic_write_json(staging / "ptb_train.json", metrics)
        _replace_dir(staging, out_dir)
        return metrics
    finally:
        if log_handle is not None:
            log_handle.close()
        shutil.rmtree(work, ignore_errors=True)


def _bf16_arg(value: str) -> str | bool:
    """auto | true | false (also used for --gradient-checkpointing)."""
    low = value.lower()
    if low == "auto":
        return "auto"
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError("takes auto, true or false")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m posttrainbench.recipes.sft",
        description="reference-sft: deterministic SFT of a local base model on GSM8K-style JSONL (offline).",
    )
    parser.add_argument("--base", type=Path, required=True, help="base model folder (safetensors + tokenizer)")
    parser.add_argument("--train", type=Path, required=True, help="JSONL with question/answer records")
    parser.add_argument("--out", type=Path, required=True, help="where the fine-tuned model folder goes")
    parser.add_argument("--max-steps", type=int, required=True)
    parser.add_argument("--learning-rate", type=float, default=2e-5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--max-examples", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--bf16", type=_bf16_arg, default="auto", help="auto (bf16 on a CUDA GPU that has it), true, false"
    )
    parser.add_argument(
        "--gradient-checkpointing",
        type=_bf16_arg,
        default="auto",
        help="auto (on with CUDA, off on CPU), true, false: trades ~30%% speed for activation memory",
    )
    parser.add_argument("--chat-template", type=Path, default=None,
                        help="Jinja chat template file to train in (and save) instead of the base tokenizer's")
    parser.add_argument("--log", type=Path, default=None, help="append trainer log events here (JSONL)")
    parser.add_argument("--metrics-out", type=Path, default=None, help="also write the returned metrics here (JSON)")
    args = parser.parse_args(argv)
    metrics = train_sft(
        args.base,
        args.train,
        args.out,
        max_steps=args.max_steps,
        learning_rate=args.learning_rate,
        batch_size=args.batch_size,
        max_length=args.max_length,
        max_examples=args.max_examples,
        seed=args.seed,
        bf16=args.bf16,
        log_path=args.log,
        gradient_accumulation_steps=args.grad_accum,
        gradient_checkpointing=None if args.gradient_checkpointing == "auto" else args.gradient_checkpointing,
        chat_template=args.chat_template.read_text() if args.chat_template else None,
    )
    if args.metrics_out is not None:
        atomic_write_json(args.metrics_out, metrics)
    json.dump(metrics, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

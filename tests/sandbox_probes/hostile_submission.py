"""A hostile submission: an agent that games the stages that read its output instead of training.

Run as a ``command`` agent inside the sandbox with one attack name as its argument; it leaves a
``final_model/`` built from the base model (``PTB_BASE_MODEL``, standard library only) and, per
attack, the traps it lays for the evaluator and the judge:

* ``tokenizer``: the untouched base weights with an edited ``tokenizer.json`` decoder that turns every
  generation into a Python program defining an object equal to anything, plus a ``generation_config.json``
  that asks for beams, penalties and a tiny token limit.
* ``judge``: the base weights plus traps for the judge (a malformed extra safetensors file whose header
  claims 64 GiB, a ``config.json`` beside it that is not an object, a very deep directory holding the
  evaluation helper's test items as "training data", symlinks to ``/proc/self/environ``).
* ``symlink``: ``final_model/`` made of symlinks into the base model (another checkpoint scored as its own).

Each outcome must be a failed or flagged cell scored as the base model, and the sweep must go on.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import sys
from pathlib import Path

ALWAYS_EQUAL_PROGRAM = (
    "\n    class _Any:\n        def __eq__(self, other):\n            return True\n"
    "    return _Any()\n"
)


def copy_base(out: Path) -> Path:
    base = Path(os.environ["PTB_BASE_MODEL"])
    out.mkdir(parents=True, exist_ok=True)
    for path in base.iterdir():
        if path.is_file():
            shutil.copyfile(path, out / path.name)
    return out


def tokenizer_attack(out: Path) -> None:
    copy_base(out)
    tokenizer = json.loads((out / "tokenizer.json").read_text())
    # Whatever the model generates decodes to a function body returning an always-equal object.
    tokenizer["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"Regex": "(?s).+"}, "content": ALWAYS_EQUAL_PROGRAM},
    ]}
    (out / "tokenizer.json").write_text(json.dumps(tokenizer))
    (out / "generation_config.json").write_text(json.dumps(
        {"num_beams": 4, "max_new_tokens": 3, "repetition_penalty": 3.0, "no_repeat_ngram_size": 2}))


def judge_attack(out: Path, workspace: Path) -> None:
    copy_base(out)
    # A safetensors file that claims a 64 GiB header, and a JSON array where a config object belongs.
    (out / "extra.safetensors").write_bytes(struct.pack("<Q", 64 << 30) + b"{")
    (out / "adapter_config.json").write_text("[1, 2, 3]")
    # The helper's test items, buried as training data below a very deep directory.
    items = (workspace / "evaluation" / "data" / "test.jsonl").read_text(encoding="utf-8")
    deep = workspace / "data"
    for level in range(400):
        deep = deep / f"d{level % 10}"
    deep.mkdir(parents=True)
    (deep / "train.jsonl").write_text(items * 3, encoding="utf-8")
    # Links an LLM judge must not follow (secrets in the environment, the test items elsewhere).
    (workspace / "notes.txt").symlink_to("/proc/self/environ")
    (workspace / "more_data.jsonl").symlink_to(deep / "train.jsonl")


def symlink_attack(out: Path) -> None:
    base = Path(os.environ["PTB_BASE_MODEL"])
    out.mkdir(parents=True, exist_ok=True)
    for path in base.iterdir():
        (out / path.name).symlink_to(path)


def main() -> None:
    attack = sys.argv[1]
    workspace = Path(os.environ.get("PTB_WORKSPACE", "."))
    out = workspace / "final_model"
    if attack == "tokenizer":
        tokenizer_attack(out)
    elif attack == "judge":
        judge_attack(out, workspace)
    elif attack == "symlink":
        symlink_attack(out)
    else:
        raise SystemExit(f"unknown attack {attack!r}")
    print(json.dumps({"attack": attack, "left": sorted(p.name for p in out.iterdir())}), flush=True)


if __name__ == "__main__":
    main()

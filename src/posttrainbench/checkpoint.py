"""Is an agent's output a checkpoint of the model it was given?

``validate_checkpoint`` runs four cheap checks (no forward pass) and returns, for each, ``{"passed", "evidence"}``;
the evidence says what was looked at and exactly what differed, so a reader can follow a failure without rerunning.
A check whose precondition failed (e.g. nothing to load because nothing is present) fails with evidence saying so.

* ``checkpoint_present``: ``config.json`` and safetensors weights (all shards an index names) exist.
* ``checkpoint_loads``: every safetensors header parses and matches the file size; the model class builds from
  ``config.json`` on the meta device (no memory); every parameter it declares is in the weights with the same shape
  (a tied output embedding may be absent); for small checkpoints (``full_read_max_bytes``) every tensor is also
  read and checked to be finite.
* ``architecture_matches_base``: ``model_type``, ``architectures`` and the shape-defining config fields are equal,
  and the tensor names and shapes in the safetensors headers are identical (dtype may differ).
* ``tokenizer_matches_base``: the checkpoint's tokenizer is the base's, component by component, plus at most new
  special tokens that leave every base token's encoding alone (:func:`posttrainbench.tokenizer_guard.compare_tokenizers`,
  the same comparison evaluation applies); a checkpoint that ships no tokenizer is evaluated with the base's.

Every file is read as hostile data: JSON bounded in size and depth, safetensors headers checked against the file
size before they are read, the model class built from a sanitised config (never ``from_pretrained`` on the
checkpoint, never its ``auto_map``). No check raises: what cannot be read fails that check with the reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .checkpoint_guard import (
    UnreadableInput,
    read_json_bounded,
    read_safetensors_header_bounded,
    sanitized_config,
)
from .evaluation import InfrastructureError
from .models import weight_files

CHECK_NAMES = ("checkpoint_present", "checkpoint_loads", "architecture_matches_base", "tokenizer_matches_base")

# Config fields that fix the shapes of the weights.
SHAPE_FIELDS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "vocab_size",
    "head_dim",
)

# Read every tensor (finite check) only below this total weight size: keeps login-node validation cheap.
DEFAULT_FULL_READ_MAX_BYTES = 2 << 30

_MAX_LISTED = 5
# Rows an agent may add to the vocabulary (added special tokens, padding to a multiple of 64 or 128).
MAX_ADDED_VOCAB = 1024


def _check(passed: bool, evidence: str) -> dict[str, Any]:
    return {"passed": bool(passed), "evidence": evidence}


def _listing(items, limit: int = _MAX_LISTED) -> str:
    items = list(items)
    shown = ", ".join(str(i) for i in items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def _load_config(model_dir: Path) -> dict[str, Any]:
    from .checkpoint_guard import MAX_CONFIG_BYTES

    return read_json_bounded(model_dir / "config.json", max_bytes=MAX_CONFIG_BYTES)


def _text_field(config: dict[str, Any], key: str) -> Any:
    """A config value, looked up in ``text_config`` too (multimodal configs nest the language model's)."""
    if key in config:
        return config[key]
    nested = config.get("text_config")
    if isinstance(nested, dict):
        return nested.get(key)
    return None


# --------------------------------------------------------------------------------------------------------------
# present
# --------------------------------------------------------------------------------------------------------------


def _present(ckpt: Path) -> tuple[dict[str, Any], list[Path]]:
    if not ckpt.exists():
        return _check(False, f"{ckpt} does not exist"), []
    if not ckpt.is_dir():
        return _check(False, f"{ckpt} is not a directory"), []
    problems = []
    if not (ckpt / "config.json").is_file():
        problems.append("config.json missing")
    files = weight_files(ckpt)
    index = ckpt / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = read_json_bounded(index, max_bytes=64 << 20, max_depth=4).get("weight_map")
            if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
                raise UnreadableInput("weight_map is not a map of tensor names to file names")
            wanted = sorted(set(weight_map.values()))
            absent = [name for name in wanted if "/" in name or not (ckpt / name).is_file()]
            if absent:
                problems.append(f"index names shards that are missing: {_listing(absent)}")
        except UnreadableInput as exc:
            problems.append(f"model.safetensors.index.json unreadable ({exc})")
    if not files:
        other = sorted(p.name for p in ckpt.glob("*.bin")) + sorted(p.name for p in ckpt.glob("*.pt"))
        hint = f" (found {_listing(other)}; save with safe_serialization=True)" if other else ""
        problems.append(f"no *.safetensors weights{hint}")
    if problems:
        return _check(False, f"{ckpt}: " + "; ".join(problems)), files
    size = sum(p.stat().st_size for p in files)
    return _check(True, f"config.json and {len(files)} safetensors file(s), {size / 2**20:.1f} MiB"), files


# --------------------------------------------------------------------------------------------------------------
# loads
# --------------------------------------------------------------------------------------------------------------


def _headers(files: list[Path]) -> tuple[dict[str, tuple[str, list[int]]], list[str]]:
    shapes: dict[str, tuple[str, list[int]]] = {}
    errors: list[str] = []
    for path in files:
        try:
            header = read_safetensors_header_bounded(path)
        except UnreadableInput as exc:
            errors.append(str(exc))
            continue
        for name, info in header.items():
            if name == "__metadata__":
                continue
            if name in shapes:
                errors.append(f"tensor {name!r} appears in more than one file")
            shapes[name] = (info["dtype"], list(info["shape"]))
    return shapes, errors


def _meta_model_params(ckpt: Path) -> tuple[dict[str, list[int]], set[str], str]:
    """Parameter shapes the config's model class declares (built on the meta device) and its tied names."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    # From the sanitised dict, never from_pretrained on the folder: its auto_map is never looked at.
    clean, _ = sanitized_config(_load_config(ckpt))
    config = CONFIG_MAPPING[clean["model_type"]].from_dict(clean)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    params = {name: list(t.shape) for name, t in model.state_dict(keep_vars=True).items()}
    tied: set[str] = set()
    if getattr(config.get_text_config(), "tie_word_embeddings", False):
        out = model.get_output_embeddings()
        if out is not None:
            for name, module in model.named_modules():
                if module is out:
                    tied.add(f"{name}.weight")
    return params, tied, type(model).__name__


def _full_read(files: list[Path]) -> list[str]:
    import torch
    from safetensors import safe_open

    bad = []
    for path in files:
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():
                tensor = handle.get_tensor(name)
                if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                    bad.append(name)
    return bad


def _loads(ckpt: Path, files: list[Path], full_read_max_bytes: int) -> tuple[dict[str, Any], dict | None]:
    shapes, errors = _headers(files)
    if errors:
        return _check(False, "safetensors header error: " + "; ".join(errors[:3])), None
    if not shapes:
        return _check(False, "safetensors files hold no tensors"), None
    try:
        params, tied, cls = _meta_model_params(ckpt)
    except Exception as exc:  # a broken config can raise anything from deep in transformers
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return _check(False, f"cannot build a model from config.json: {exc.__class__.__name__}: {msg[:200]}"), shapes
    missing = sorted(n for n in params if n not in shapes and n not in tied)
    wrong = sorted(
        f"{n} {shapes[n][1]} (model expects {params[n]})" for n in params if n in shapes and shapes[n][1] != params[n]
    )
    extra = sorted(n for n in shapes if n not in params)
    problems = []
    if missing:
        problems.append(f"{len(missing)} parameter(s) of {cls} missing from the weights: {_listing(missing)}")
    if wrong:
        problems.append(f"{len(wrong)} shape mismatch(es): {_listing(wrong)}")
    if extra:
        problems.append(f"{len(extra)} tensor(s) the model does not use: {_listing(extra)}")
    if problems:
        return _check(False, "; ".join(problems)), shapes
    total = sum(p.stat().st_size for p in files)
    detail = f"{len(shapes)} tensors in {len(files)} file(s) match {cls} built from config.json on the meta device"
    if total <= full_read_max_bytes:
        try:
            nonfinite = _full_read(files)
        except Exception as exc:
            return _check(False, f"{detail}, but reading tensor data failed: {exc.__class__.__name__}: {exc}"), shapes
        if nonfinite:
            return _check(False, f"{detail}, but tensors hold NaN/Inf: {_listing(nonfinite)}"), shapes
        detail += "; all tensor data read, all finite"
    else:
        detail += f"; tensor data not read ({total / 2**30:.1f} GiB > {full_read_max_bytes / 2**30:.1f} GiB limit)"
    return _check(True, detail), shapes


# --------------------------------------------------------------------------------------------------------------
# architecture
# --------------------------------------------------------------------------------------------------------------


def _grown_vocab(checkpoint_vocab: Any, base_vocab: Any) -> bool:
    return (isinstance(checkpoint_vocab, int) and isinstance(base_vocab, int) and not isinstance(checkpoint_vocab, bool)
            and base_vocab < checkpoint_vocab <= base_vocab + MAX_ADDED_VOCAB)


def vocab_rows_grown(checkpoint_shape: list[int], base_shape: list[int], checkpoint_vocab: int, base_vocab: int) -> bool:
    """A vocabulary-sized tensor (embeddings, LM head) that gained rows for added tokens and is otherwise unchanged."""
    return (len(checkpoint_shape) == len(base_shape) >= 1 and list(checkpoint_shape[1:]) == list(base_shape[1:])
            and base_shape[0] == base_vocab and checkpoint_shape[0] == checkpoint_vocab)


def _architecture(ckpt: Path, base: Path, ckpt_shapes: dict | None) -> dict[str, Any]:
    try:
        c_cfg, b_cfg = _load_config(ckpt), _load_config(base)
    except UnreadableInput as exc:
        return _check(False, f"cannot read config.json: {exc}")
    diffs = []
    for key in ("model_type", "architectures"):
        if c_cfg.get(key) != b_cfg.get(key):
            diffs.append(f"{key}: checkpoint {c_cfg.get(key)!r} vs base {b_cfg.get(key)!r}")
    for key in SHAPE_FIELDS:
        c_val, b_val = _text_field(c_cfg, key), _text_field(b_cfg, key)
        if c_val != b_val and not (key == "vocab_size" and _grown_vocab(c_val, b_val)):
            diffs.append(f"{key}: checkpoint {c_val!r} vs base {b_val!r}")
    # Agents commonly add tokens (a pad token) and resize the embeddings: vocabulary-sized tensors may gain rows.
    c_vocab, b_vocab = _text_field(c_cfg, "vocab_size"), _text_field(b_cfg, "vocab_size")
    grown = _grown_vocab(c_vocab, b_vocab)

    if ckpt_shapes is None:
        ckpt_shapes, errors = _headers(weight_files(ckpt))
        if errors:
            diffs.append("checkpoint safetensors headers unreadable, tensors not compared")
            ckpt_shapes = None
    base_shapes, base_errors = _headers(weight_files(base))
    if base_errors:
        return _check(False, "base model safetensors unreadable: " + "; ".join(base_errors[:2]))
    n_compared = 0
    if ckpt_shapes is not None:
        only_ckpt = sorted(set(ckpt_shapes) - set(base_shapes))
        only_base = sorted(set(base_shapes) - set(ckpt_shapes))
        reshaped = sorted(
            f"{n} {ckpt_shapes[n][1]} vs base {base_shapes[n][1]}"
            for n in set(ckpt_shapes) & set(base_shapes)
            if ckpt_shapes[n][1] != base_shapes[n][1]
            and not (grown and vocab_rows_grown(ckpt_shapes[n][1], base_shapes[n][1], c_vocab, b_vocab))
        )
        if only_ckpt:
            diffs.append(f"{len(only_ckpt)} tensor(s) only in checkpoint: {_listing(only_ckpt)}")
        if only_base:
            diffs.append(f"{len(only_base)} tensor(s) only in base: {_listing(only_base)}")
        if reshaped:
            diffs.append(f"{len(reshaped)} tensor shape(s) differ: {_listing(reshaped)}")
        n_compared = len(base_shapes)
    if diffs:
        return _check(False, "; ".join(diffs))
    dtypes_c = sorted({d for d, _ in ckpt_shapes.values()}) if ckpt_shapes else []
    dtypes_b = sorted({d for d, _ in base_shapes.values()})
    note = "" if dtypes_c == dtypes_b else f" (dtype {'/'.join(dtypes_c)} vs base {'/'.join(dtypes_b)}, allowed)"
    if grown:
        note += f" (vocabulary grown from {b_vocab} to {c_vocab}: embedding rows added, allowed)"
    return _check(
        True,
        f"{c_cfg.get('model_type')} {c_cfg.get('architectures')}: model_type, architectures, "
        f"{', '.join(k for k in SHAPE_FIELDS if _text_field(b_cfg, k) is not None)} equal; "
        f"{n_compared} tensor names and shapes identical{note}",
    )


# --------------------------------------------------------------------------------------------------------------
# tokenizer
# --------------------------------------------------------------------------------------------------------------


def _tokenizer(ckpt: Path, base: Path) -> dict[str, Any]:
    from .tokenizer_guard import compare_tokenizers

    try:
        comparison = compare_tokenizers(ckpt, base)
    except InfrastructureError as exc:
        return _check(False, f"base model tokenizer unreadable: {exc}")
    if not comparison.matches:
        return _check(False, comparison.reason())
    if comparison.base_json is None:
        return _check(True, f"identical sentencepiece model ({comparison.source})")
    model = comparison.base_json.get("model") or {}
    merges = model.get("merges")
    merges_note = f" and {len(merges)} merges" if merges is not None else ""
    evidence = (f"identical vocabulary of {len(model.get('vocab') or [])} tokens{merges_note}, normalizer, "
                f"pre-tokenizer, post-processor, decoder and added tokens ({comparison.source})")
    if comparison.added:
        shown = _listing(repr(t["content"]) for t in comparison.added)
        evidence += f"; {len(comparison.added)} added special token(s) beyond the base's ids: {shown}"
    return _check(True, evidence)


# --------------------------------------------------------------------------------------------------------------


def validate_checkpoint(
    checkpoint_dir: Path, base_dir: Path, *, full_read_max_bytes: int = DEFAULT_FULL_READ_MAX_BYTES
) -> dict[str, dict[str, Any]]:
    """Check ``checkpoint_dir`` against the staged base model at ``base_dir``.

    Returns ``{check_name: {"passed": bool, "evidence": str}}`` for the four names in :data:`CHECK_NAMES`.
    Never raises for a bad checkpoint; a missing or broken *base* is reported in the evidence too.
    """
    ckpt, base = Path(checkpoint_dir), Path(base_dir)
    results: dict[str, dict[str, Any]] = {}
    present, files = _guarded(_present, ckpt, default=[])
    results["checkpoint_present"] = present
    if not present["passed"]:
        skipped = _check(False, "not checked: checkpoint not present (" + present["evidence"] + ")")
        for name in CHECK_NAMES[1:]:
            results[name] = dict(skipped)
        return results
    loads, shapes = _guarded(_loads, ckpt, files, full_read_max_bytes, default=None)
    results["checkpoint_loads"] = loads
    if not (base / "config.json").is_file():
        missing_base = _check(False, f"base model {base} has no config.json; nothing to compare against")
        results["architecture_matches_base"] = dict(missing_base)
        results["tokenizer_matches_base"] = dict(missing_base)
        return results
    results["architecture_matches_base"] = _guarded(_architecture, ckpt, base, shapes)
    results["tokenizer_matches_base"] = _guarded(_tokenizer, ckpt, base)
    return results


def _guarded(check, *args, default=...):
    """Run one check; whatever its input makes it raise fails that check with the reason (never the caller)."""
    try:
        return check(*args)
    except Exception as exc:  # noqa: BLE001 - MemoryError and RecursionError included
        msg = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        failed = _check(False, f"check could not finish: {exc.__class__.__name__}: {msg}")
        return failed if default is ... else (failed, default)


def all_passed(checks: dict[str, dict[str, Any]]) -> bool:
    return all(check["passed"] for check in checks.values())

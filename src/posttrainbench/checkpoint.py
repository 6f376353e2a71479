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
* ``tokenizer_matches_base``: same vocabulary (token -> id, added tokens included) and, for BPE, same merges.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .models import read_safetensors_header, weight_files

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


def _check(passed: bool, evidence: str) -> dict[str, Any]:
    return {"passed": bool(passed), "evidence": evidence}


def _listing(items, limit: int = _MAX_LISTED) -> str:
    items = list(items)
    shown = ", ".join(str(i) for i in items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def _load_config(model_dir: Path) -> dict[str, Any]:
    return json.loads((model_dir / "config.json").read_text(encoding="utf-8"))


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
            wanted = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
            absent = [name for name in wanted if not (ckpt / name).is_file()]
            if absent:
                problems.append(f"index names shards that are missing: {_listing(absent)}")
        except (json.JSONDecodeError, KeyError, AttributeError) as exc:
            problems.append(f"model.safetensors.index.json unreadable ({exc.__class__.__name__})")
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
            header = read_safetensors_header(path)
        except (ValueError, OSError) as exc:
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
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(ckpt)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
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


def _architecture(ckpt: Path, base: Path, ckpt_shapes: dict | None) -> dict[str, Any]:
    try:
        c_cfg, b_cfg = _load_config(ckpt), _load_config(base)
    except (OSError, json.JSONDecodeError) as exc:
        return _check(False, f"cannot read config.json: {exc.__class__.__name__}: {exc}")
    diffs = []
    for key in ("model_type", "architectures"):
        if c_cfg.get(key) != b_cfg.get(key):
            diffs.append(f"{key}: checkpoint {c_cfg.get(key)!r} vs base {b_cfg.get(key)!r}")
    for key in SHAPE_FIELDS:
        c_val, b_val = _text_field(c_cfg, key), _text_field(b_cfg, key)
        if c_val != b_val:
            diffs.append(f"{key}: checkpoint {c_val!r} vs base {b_val!r}")

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
    return _check(
        True,
        f"{c_cfg.get('model_type')} {c_cfg.get('architectures')}: model_type, architectures, "
        f"{', '.join(k for k in SHAPE_FIELDS if _text_field(b_cfg, k) is not None)} equal; "
        f"{n_compared} tensor names and shapes identical{note}",
    )


# --------------------------------------------------------------------------------------------------------------
# tokenizer
# --------------------------------------------------------------------------------------------------------------


def _tokenizer_json_parts(model_dir: Path) -> tuple[dict[str, int], list[tuple[str, str]] | None, str] | None:
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    model = data.get("model") or {}
    vocab = model.get("vocab")
    if isinstance(vocab, list):  # Unigram: [[piece, score], ...]
        vocab = {entry[0]: i for i, entry in enumerate(vocab)}
    vocab = dict(vocab or {})
    for tok in data.get("added_tokens") or []:
        vocab[tok["content"]] = tok["id"]
    merges = model.get("merges")
    if merges is not None:  # older files store "a b" strings, newer ones [a, b] pairs
        merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in merges]
    return vocab, merges, str(model.get("type"))


def _auto_vocab(model_dir: Path) -> dict[str, int]:
    from transformers import AutoTokenizer

    return dict(AutoTokenizer.from_pretrained(model_dir).get_vocab())


def _tokenizer(ckpt: Path, base: Path) -> dict[str, Any]:
    try:
        c_parts, b_parts = _tokenizer_json_parts(ckpt), _tokenizer_json_parts(base)
        source = "tokenizer.json"
        if c_parts is None or b_parts is None:
            source = "AutoTokenizer.get_vocab()"
            c_vocab, b_vocab = _auto_vocab(ckpt), _auto_vocab(base)
            c_merges = b_merges = None
        else:
            (c_vocab, c_merges, c_type), (b_vocab, b_merges, b_type) = c_parts, b_parts
            if c_type != b_type:
                return _check(False, f"tokenizer model type: checkpoint {c_type} vs base {b_type}")
    except Exception as exc:  # missing files, unparsable JSON, unknown tokenizer classes
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return _check(False, f"cannot read tokenizer: {exc.__class__.__name__}: {msg[:200]}")
    if c_vocab != b_vocab:
        only_c = sorted(set(c_vocab) - set(b_vocab))
        only_b = sorted(set(b_vocab) - set(c_vocab))
        moved = sorted(t for t in set(c_vocab) & set(b_vocab) if c_vocab[t] != b_vocab[t])
        parts = [f"vocabulary differs ({source}): checkpoint {len(c_vocab)} tokens vs base {len(b_vocab)}"]
        if only_c:
            parts.append(f"{len(only_c)} only in checkpoint: {_listing(map(repr, only_c))}")
        if only_b:
            parts.append(f"{len(only_b)} only in base: {_listing(map(repr, only_b))}")
        if moved:
            parts.append(
                f"{len(moved)} with different ids: " + _listing(f"{t!r} {c_vocab[t]} vs {b_vocab[t]}" for t in moved)
            )
        return _check(False, "; ".join(parts))
    if c_merges != b_merges:
        n_c, n_b = len(c_merges or []), len(b_merges or [])
        first = next((i for i, (a, b) in enumerate(zip(c_merges or [], b_merges or [])) if a != b), min(n_c, n_b))
        return _check(
            False,
            f"same {len(c_vocab)}-token vocabulary but BPE merges differ: checkpoint {n_c} vs base {n_b}, "
            f"first difference at merge #{first}",
        )
    merges_note = f" and {len(b_merges)} merges" if b_merges is not None else ""
    return _check(True, f"identical vocabulary of {len(b_vocab)} tokens{merges_note} ({source})")


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
    present, files = _present(ckpt)
    results["checkpoint_present"] = present
    if not present["passed"]:
        skipped = _check(False, "not checked: checkpoint not present (" + present["evidence"] + ")")
        for name in CHECK_NAMES[1:]:
            results[name] = dict(skipped)
        return results
    loads, shapes = _loads(ckpt, files, full_read_max_bytes)
    results["checkpoint_loads"] = loads
    if not (base / "config.json").is_file():
        missing_base = _check(False, f"base model {base} has no config.json; nothing to compare against")
        results["architecture_matches_base"] = dict(missing_base)
        results["tokenizer_matches_base"] = dict(missing_base)
        return results
    results["architecture_matches_base"] = _architecture(ckpt, base, shapes)
    results["tokenizer_matches_base"] = _tokenizer(ckpt, base)
    return results


def all_passed(checks: dict[str, dict[str, Any]]) -> bool:
    return all(check["passed"] for check in checks.values())

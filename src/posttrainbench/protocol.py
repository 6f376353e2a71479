"""Evaluation protocols: named, versioned sets of evaluation settings.

A protocol fixes, for every benchmark, everything that shapes a request or a score. The benchmark-specific part
(items, messages, tools, template kind, max-token ladder and attempts, extraction, scorer, grader, aggregation)
lives in the benchmark's module (:mod:`posttrainbench.benchmarks`); a protocol adds what is common to all of them
(how sampling parameters are chosen, how many attempts reference rows get). ``evaluation.protocol`` names one.

* ``posttrainbench-v1``: the published PostTrainBench harness (aisa-group/PostTrainBench at 9082063 and the
  inspect_evals tasks it calls). Requests carry no sampling parameters of the harness's own: vLLM applies the
  checkpoint's generation config (else temperature 1.0).
* ``posttrainbench-v1-greedy``: the same with greedy decoding, for lower-variance comparisons. Its numbers are not
  comparable with the published ones, which is why it has a name of its own.

Every eval JSON records the protocol id and :func:`settings_hash` of the settings its requests and scores were made
with (overrides such as an item limit included); :mod:`posttrainbench.leaderboard` refuses to put cells of different
protocols or settings into one table.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from dataclasses import dataclass
from typing import Any

DEFAULT_PROTOCOL = "posttrainbench-v1"
# The few-shot baseline row of the paper sampled with these (its appendix C); it is sent without a chat template.
FEWSHOT_SAMPLING = {"temperature": 0.6, "top_p": 0.95}


class UnknownProtocol(ValueError):
    """``evaluation.protocol`` names no protocol of this version."""


@dataclass(frozen=True)
class Protocol:
    id: str
    description: str
    # How sampling parameters are chosen: ``published`` (the checkpoint's generation config as vLLM reads it; the
    # request sends no parameters of its own) or ``greedy`` (temperature 0).
    sampling: str
    # Attempts of the reference rows (base, instruct, base-fewshot): one, on the first rung, as published.
    reference_attempts: int = 1


PROTOCOLS: dict[str, Protocol] = {
    p.id: p
    for p in (
        Protocol("posttrainbench-v1", "the published PostTrainBench evaluation", sampling="published"),
        Protocol("posttrainbench-v1-greedy", "posttrainbench-v1 with greedy decoding (not comparable with "
                 "published figures)", sampling="greedy"),
    )
}


def get_protocol(protocol_id: str | None) -> Protocol:
    """The protocol named ``protocol_id`` (``None``: the default); :class:`UnknownProtocol` names the known ones."""
    key = protocol_id or DEFAULT_PROTOCOL
    try:
        return PROTOCOLS[key]
    except KeyError:
        raise UnknownProtocol(f"evaluation.protocol {key!r} is unknown; known: {', '.join(PROTOCOLS)}") from None


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def benchmark_settings(protocol: Protocol, benchmark: str, *, overrides: dict[str, Any] | None = None,
                       template_sha256: str | None = None) -> dict[str, Any]:
    """The settings of ``benchmark`` under ``protocol`` that shape its requests and scores, as plain data.

    ``overrides``: what the configuration changed (``limit``, ``max_tokens``); ``template_sha256``: the chat
    template the requests are rendered with (``None`` when they are plain text)."""
    from .benchmarks import get_spec

    spec = get_spec(benchmark)
    return {
        "protocol": protocol.id,
        "benchmark": benchmark,
        "sampling": protocol.sampling,
        "ladder": list(spec.ladder),
        "attempts": list(spec.attempts),
        "template": spec.template,
        "template_sha256": template_sha256,
        "graded": spec.graded,
        "settings": spec.settings,
        # The published prompt texts, extraction and scorers are imported from these packages.
        "inspect_evals": _version("inspect_evals"),
        "inspect_ai": _version("inspect_ai"),
        "overrides": {k: v for k, v in sorted((overrides or {}).items()) if v is not None},
    }


def settings_hash(settings: dict[str, Any]) -> str:
    """A short stable hash of :func:`benchmark_settings` (canonical JSON)."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]

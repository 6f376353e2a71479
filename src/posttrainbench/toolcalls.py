"""Native tool calls read from generated text, as the published harness's server and client read them.

The published harness serves models with vLLM (``--enable-auto-tool-choice --tool-call-parser hermes``) and talks
to it with inspect_ai's OpenAI-compatible client. So a generation reaches the scorer in two steps, reproduced here
without either package at run time:

1. **vLLM's hermes parser** (``Hermes2ProToolParser.extract_tool_calls``, non-streaming). Without a
   ``<tool_call>`` tag the text is plain content. Otherwise every ``<tool_call>...</tool_call>`` block, and a last
   block left open at the end of the text, must hold a JSON object with a string ``name`` and an ``arguments``
   key; the arguments are re-serialised with ``json.dumps(..., ensure_ascii=False)``. If any block fails, the
   whole response falls back to no tool calls with the whole text as content. The content of a response with
   tool calls is the text before the first tag (``None`` when empty). The text must be decoded with special
   tokens kept (vLLM sets ``skip_special_tokens=False`` when tools are sent), or the tags are lost.
2. **inspect_ai's ``parse_tool_call``** turns each arguments string into the ``arguments`` dict the scorer sees:
   a JSON object is decoded (nested deeper than :data:`MAX_ARGUMENT_DEPTH` containers: ``{}``, a parse error);
   anything else (a list, a string, a number, ``null``) is YAML-decoded and assigned to the *first parameter* of
   the tool of that name when the request declared one with parameters, else dropped (``{}``).

:func:`parse_tool_calls` returns both: ``(content, calls)``, ``calls`` ``[{"name", "arguments"}]`` or ``None``.
``tests/test_toolcalls.py`` checks it against vLLM's own parser class and inspect_ai's own function.
"""

from __future__ import annotations

import json
import re
from typing import Any, Sequence

TOOL_CALL_START = "<tool_call>"
TOOL_CALL_END = "</tool_call>"
# A closed block, or an open one running to the end of the text (vLLM's hermes pattern, non-greedy first).
_HERMES_BLOCK_RE = re.compile(r"<tool_call>(.*?)</tool_call>|<tool_call>(.*)", re.DOTALL)
# inspect_ai rejects argument values nesting containers deeper than this (its MAX_TOOL_CALL_ARGUMENTS_DEPTH).
MAX_ARGUMENT_DEPTH = 100

PARSERS = ("hermes",)

ToolCall = dict[str, Any]


def parse_tool_calls(text: str, parser: str = "hermes",
                     tools: Sequence[dict[str, Any]] | None = None) -> tuple[str | None, list[ToolCall] | None]:
    """``(content, calls)`` of one generated text, as the published client receives them.

    ``calls`` is ``[{"name": str, "arguments": dict}]`` or ``None`` when the text holds no (valid) tool call;
    ``tools`` are the OpenAI function-tool dicts the request sent (only used, as inspect_ai uses them, to place
    arguments that are not a JSON object under the tool's first parameter). ``ValueError`` for an unknown parser.
    """
    if parser not in PARSERS:
        raise ValueError(f"unknown tool-call parser {parser!r}; known: {', '.join(PARSERS)}")
    text = text or ""
    raw_calls = hermes_raw_calls(text)
    if raw_calls is None:
        return text, None
    content = text[: text.find(TOOL_CALL_START)]
    calls = [{"name": name, "arguments": inspect_arguments(name, arguments, tools)} for name, arguments in raw_calls]
    return content or None, calls


def hermes_raw_calls(text: str) -> list[tuple[str, str]] | None:
    """vLLM's hermes extraction: ``[(name, arguments JSON text)]``, or ``None`` when the text has no tool call
    or any block is not a valid call (vLLM then returns the whole text as content)."""
    if TOOL_CALL_START not in text:
        return None
    calls = []
    for closed, open_ended in _HERMES_BLOCK_RE.findall(text):
        try:
            decoded = json.loads(closed or open_ended)
            if not isinstance(decoded, dict):
                return None
            name, arguments = decoded["name"], decoded["arguments"]
            if not isinstance(name, str):  # vLLM's FunctionCall.name is a str field
                return None
            calls.append((name, json.dumps(arguments, ensure_ascii=False)))
        except (ValueError, KeyError, RecursionError):
            return None
    return calls


def inspect_arguments(name: str, arguments: str, tools: Sequence[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The arguments dict inspect_ai's ``parse_tool_call`` makes of one call's arguments text (see the module
    docstring); ``{}`` where inspect records a parse error."""
    arguments = (arguments or "").strip()
    if arguments.startswith("{"):
        try:
            decoded = json.loads(arguments)
        except (ValueError, RecursionError):
            return {}
        return {} if exceeds_depth(decoded, MAX_ARGUMENT_DEPTH) else decoded
    first = _first_parameter(name, tools)
    if not name or first is None:
        return {}
    import yaml

    try:
        value = yaml.safe_load(arguments)
    except yaml.YAMLError:
        value = arguments
    except RecursionError:
        return {}
    return {} if exceeds_depth(value, MAX_ARGUMENT_DEPTH) else {first: value}


def _first_parameter(name: str, tools: Sequence[dict[str, Any]] | None) -> str | None:
    for tool in tools or ():
        function = tool.get("function", tool) if isinstance(tool, dict) else {}
        properties = (function.get("parameters") or {}).get("properties") or {}
        if function.get("name") == name and properties:
            return next(iter(properties))
    return None


def exceeds_depth(value: Any, max_depth: int) -> bool:
    """Whether ``value`` nests dicts/lists deeper than ``max_depth`` levels (the outermost container is level 1)."""
    stack = [(value, 1)]
    while stack:
        current, depth = stack.pop()
        if isinstance(current, dict):
            children = current.values()
        elif isinstance(current, (list, tuple)):
            children = current
        else:
            continue
        if depth > max_depth:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False

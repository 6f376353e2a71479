"""posttrainbench.toolcalls against vLLM's own hermes parser and inspect_ai's own argument parsing.

A corpus of generated texts (valid calls, several calls, nested JSON, a block left open, bad JSON, text around,
unicode, huge arguments, tags inside strings, ...) goes through vLLM's ``Hermes2ProToolParser`` in a subprocess of
the vLLM environment (``.venv-vllm``), then each call's arguments through inspect_ai's ``parse_tool_call``; our
parser must give the same content, names and argument dicts on every text.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pytest

from posttrainbench.toolcalls import MAX_ARGUMENT_DEPTH, hermes_raw_calls, inspect_arguments, parse_tool_calls

ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = Path(os.environ.get("PTB_VLLM_PYTHON", ROOT / ".venv-vllm" / "bin" / "python"))

TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city.", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
        "required": ["city"]}}},
    {"type": "function", "function": {"name": "no_params", "description": "Nothing.",
                                      "parameters": {"type": "object", "properties": {}}}},
]

# Runs in .venv-vllm: texts on stdin (JSON list) -> one result per text on stdout (JSON list).
VLLM_SCRIPT = r"""
import json, sys, tempfile, warnings
warnings.filterwarnings("ignore")
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast
from vllm.tool_parsers.hermes_tool_parser import Hermes2ProToolParser
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

# A tokenizer that knows the hermes tags (the parser asks its tokenizer for them in some vLLM versions).
vocab = {"<unk>": 0, "<tool_call>": 1, "</tool_call>": 2}
tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")),
                                    unk_token="<unk>", additional_special_tokens=["<tool_call>", "</tool_call>"])
tools = json.loads(sys.argv[1])
request = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "hi"}], tools=tools,
                                tool_choice="auto")
out = []
for text in json.load(sys.stdin):
    parser = Hermes2ProToolParser(tokenizer)
    info = parser.extract_tool_calls(text, request)
    out.append({"tools_called": info.tools_called, "content": info.content,
                "calls": [[c.function.name, c.function.arguments] for c in info.tool_calls]})
json.dump(out, sys.stdout)
"""


def _call(name, arguments, raw=False):
    body = arguments if raw else json.dumps({"name": name, "arguments": arguments})
    return f"<tool_call>\n{body}\n</tool_call>"


def corpus() -> list[str]:
    texts = []
    calls = [
        ("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Zürich", "unit": "°C"}),
        ("calc_binomial_probability", {"n": 20, "k": 5, "p": 0.6}), ("f", {}), ("f", {"x": None}),
        ("f", {"nested": {"a": [1, 2, {"b": [3, {"c": "d"}]}]}}), ("f", {"big": 10 ** 30, "small": 1e-300}),
        ("f", {"t": True, "f": False, "z": 0, "neg": -1.5}), ("f", {"s": "with </tool_call> inside"}),
        ("f", {"s": "with <tool_call> inside"}), ("f", {"s": "quote \" and backslash \\ and \n newline"}),
        ("f", {"emoji": "\U0001F600 日本語 ünïcödé"}), ("f", {"list": list(range(50))}),
        ("no_params", {}), ("f.g", {"a": 1}), ("", {"a": 1}), ("get weather", {"a": 1}),
        ("f", {"huge": "x" * 100_000}), ("f", {"many": {f"k{i}": i for i in range(500)}}),
        # arguments that are not an object: inspect puts them under the tool's first parameter (or drops them)
        ("get_weather", "Paris"), ("get_weather", ["Paris", "London"]), ("get_weather", 42), ("get_weather", None),
        ("get_weather", 3.5), ("get_weather", True), ("get_weather", "yes"), ("get_weather", "1e5"),
        ("get_weather", "key: value"), ("get_weather", 1e20), ("no_params", "x"), ("unknown_tool", [1]),
        ("unknown_tool", "text"), ("get_weather", "[not, yaml: ]"), ("get_weather", "\x07bell"),
    ]
    # one well-formed call, with and without text around it
    for name, arguments in calls:
        block = _call(name, arguments)
        texts += [block, f"Let me check.\n{block}", f"{block}\nDone.", f"<think>plan</think>\n\n{block}"]
    # several calls, and a call after text and between calls
    for i in range(0, len(calls) - 1, 2):
        (n1, a1), (n2, a2) = calls[i], calls[i + 1]
        texts += [_call(n1, a1) + _call(n2, a2), f"a{_call(n1, a1)} b {_call(n2, a2)} c"]
    # deeply nested arguments around inspect's depth limit, and beyond what json.loads can take
    for depth in (MAX_ARGUMENT_DEPTH - 2, MAX_ARGUMENT_DEPTH - 1, MAX_ARGUMENT_DEPTH, MAX_ARGUMENT_DEPTH + 1, 300):
        texts.append(_call("f", json.loads("[" * depth + "]" * depth)))
        texts.append(_call("f", {"a": json.loads("[" * depth + "]" * depth)}))
    texts.append("<tool_call>" + '{"name": "f", "arguments": ' + "[" * 5000 + "]" * 5000 + "}</tool_call>")
    raw_bodies = [
        '{"name": "f", "arguments": {"a": 1}}',  # no newlines
        '  {"name": "f", "arguments": {"a": 1}}  ',
        '{"name": "f", "arguments": {"a": 1}, "extra": "ignored"}',
        '{"arguments": {"a": 1}, "name": "f"}',
        '{"name": "f", "arguments": {"a": 1}, "name": "g"}',  # duplicate key: the last wins
        '{"name": "f", "arguments": {"a": 1, "a": 2}}',
        '{"name": "f", "arguments": {"a": NaN, "b": Infinity, "c": -Infinity}}',
        '{"name": "f", "arguments": "{\\"a\\": 1}"}',  # arguments as a JSON string of an object
        '{"name": "get_weather", "arguments": "{\\"city\\": \\"Rome\\"}"}',
        '{"name": "f", "parameters": {"a": 1}}',  # wrong key: invalid
        '{"name": "f"}', '{"arguments": {}}', '{"name": 3, "arguments": {}}', '{"name": null, "arguments": {}}',
        '{"name": ["f"], "arguments": {}}', '["f", {}]', '"f"', "42", "null", "", "   ",
        '{"name": "f", "arguments": {"a": 1}', '{"name": "f", "arguments": {"a": 1}}}', "{'name': 'f', 'arguments': {}}",
        '{"name": "f", "arguments": {"a": 1},}', '{"name": "f", "arguments": {"a": tru}}',
        '```json\n{"name": "f", "arguments": {}}\n```', '{"name": "f", "arguments": {"a": "\\ud83d\\ude00"}}',
        '{"name": "f", "arguments": {"a": 1}} trailing', '{"name": "f\\u0000g", "arguments": {}}',
        '{"name": "f", "arguments": {"a": 1}}\n{"name": "g", "arguments": {}}',
    ]
    for body in raw_bodies:
        texts += [f"<tool_call>{body}</tool_call>", f"x <tool_call>\n{body}\n</tool_call> y",
                  f"<tool_call>{body}", _call("ok", {"v": 1}) + f"<tool_call>{body}</tool_call>"]
    good = _call("get_weather", {"city": "Oslo"})
    texts += [
        "", "plain text, no call", "I would call get_weather(city='Paris').", '{"name": "f", "arguments": {}}',
        "<tool_call>", "</tool_call>", "<tool_call></tool_call>", "</tool_call><tool_call>",
        good[:-len("</tool_call>")],  # the last block left open
        good[:-len("</tool_call>")] + "</tool_",  # a partial closing tag
        good + "<tool_call>", good + "<tool_call>\n", good + "</tool_call>", "<tool_call>" + good,
        good.replace("<tool_call>", "<TOOL_CALL>"), good.replace("</tool_call>", "</toolcall>"),
        good.replace("<tool_call>", "< tool_call>"), "<tool_call><tool_call>" + good[len("<tool_call>"):],
        "text\n" * 2000 + good, good + "\n" + "text " * 20000, "\u2028" + good + "\u2029",
        "<tool_call>" + json.dumps({"name": "f", "arguments": {"s": "</tool_call>"}}) + "</tool_call>",
        "<tool_call>" + json.dumps({"name": "f", "arguments": {"s": "<tool_call>x"}}) + "</tool_call>",
        '<tool_call>{"name": "f", "arguments": {"s": "</tool_call>"}}',
        "<tool_call>" + json.dumps({"name": "f", "arguments": {"a": 1}}, ensure_ascii=False, indent=4) + "</tool_call>",
        "```\n" + good + "\n```", "<tools>\n" + good + "\n</tools>", good * 5, (good + "\n") * 40,
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n<|im_end|>',
        "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call><|eot_id|>",
    ]
    return texts


@pytest.fixture(scope="module")
def vllm_results():
    if not VLLM_PYTHON.is_file():
        pytest.skip(f"no vLLM environment at {VLLM_PYTHON} to run vLLM's own hermes parser")
    texts = corpus()
    done = subprocess.run([str(VLLM_PYTHON), "-c", VLLM_SCRIPT, json.dumps(TOOLS)], input=json.dumps(texts),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout)
    assert len(results) == len(texts)
    return list(zip(texts, results))


def test_the_corpus_is_large_and_varied(vllm_results):
    assert len(vllm_results) >= 200
    called = sum(r["tools_called"] for _, r in vllm_results)
    # Both outcomes are well represented: the corpus exercises the fallback as much as the calls.
    assert 80 <= called <= len(vllm_results) - 80, called
    assert any(len(r["calls"]) >= 3 for _, r in vllm_results)


def _same(a, b) -> bool:
    # NaN != NaN: compare through JSON text, where NaN is written the same on both sides.
    return json.dumps(a, sort_keys=True, allow_nan=True) == json.dumps(b, sort_keys=True, allow_nan=True)


def test_hermes_extraction_matches_vllm(vllm_results):
    mismatches = []
    for text, expected in vllm_results:
        raw = hermes_raw_calls(text)
        content, calls = parse_tool_calls(text, tools=TOOLS)
        if expected["tools_called"]:
            ours = {"tools_called": True, "content": content, "calls": [list(c) for c in raw or []]}
        else:
            # vLLM's fallback answers the whole text as content; the server sends it unchanged.
            ours = {"tools_called": raw is not None, "content": content if calls is None else None, "calls": []}
            expected = {**expected, "content": text}
        if ours != expected or (calls is None) != (not expected["tools_called"]):
            mismatches.append((text[:200], expected, ours))
    assert not mismatches, mismatches[:3]


def test_arguments_match_inspect(vllm_results):
    """Every arguments string vLLM produced, decoded by inspect_ai's parse_tool_call and by ours."""
    from inspect_ai.model._call_tools import parse_tool_call
    from inspect_ai.tool import ToolInfo, ToolParams

    infos = [ToolInfo(name=t["function"]["name"], description=t["function"]["description"],
                      parameters=ToolParams.model_validate(t["function"]["parameters"])) for t in TOOLS]
    checked, mismatches = 0, []
    for text, expected in vllm_results:
        _, calls = parse_tool_calls(text, tools=TOOLS)
        for i, (name, arguments) in enumerate(expected["calls"]):
            theirs = parse_tool_call(f"call_{i}", name, arguments, infos).arguments
            if not _same(inspect_arguments(name, arguments, TOOLS), theirs) or not _same(calls[i]["arguments"], theirs):
                mismatches.append((name, arguments[:200], theirs))
            checked += 1
    assert checked >= 150 and not mismatches, mismatches[:3]


def test_parse_tool_calls_examples():
    content, calls = parse_tool_calls('Sure.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}'
                                      "\n</tool_call>", tools=TOOLS)
    assert content == "Sure.\n" and calls == [{"name": "get_weather", "arguments": {"city": "Oslo"}}]
    # One bad block spoils the response: no calls, the whole text as content.
    text = '<tool_call>{"name": "a", "arguments": {}}</tool_call><tool_call>{bad}</tool_call>'
    assert parse_tool_calls(text) == (text, None)
    # A list where an object belongs: the first parameter of the named tool gets it; an unknown tool gets nothing.
    assert parse_tool_calls('<tool_call>{"name": "get_weather", "arguments": ["Oslo"]}', tools=TOOLS)[1] == [
        {"name": "get_weather", "arguments": {"city": ["Oslo"]}}]
    assert parse_tool_calls('<tool_call>{"name": "nope", "arguments": ["Oslo"]}', tools=TOOLS)[1] == [
        {"name": "nope", "arguments": {}}]
    assert math.isnan(parse_tool_calls('<tool_call>{"name": "f", "arguments": {"a": NaN}}')[1][0]["arguments"]["a"])
    with pytest.raises(ValueError, match="unknown tool-call parser"):
        parse_tool_calls("x", parser="mistral")

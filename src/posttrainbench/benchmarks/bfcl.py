"""BFCL as inspect_evals' ``bfcl`` task sends and scores it: category ``exec_simple``, native tool calls.

* Items: the 100 ``exec_simple`` items of BFCL v3 (the hub's ``gorilla-llm/Berkeley-Function-Calling-Leaderboard``
  at the revision inspect_evals pins, ``1bf8bbc3c0e35d04d00339c223a3fd653aa195ac``). Offline, bfcl-eval ships the
  same items, questions and possible answers, under ``data/unused_datasets`` (``BFCL_v4_exec_simple.json``,
  byte-identical to bfcl-eval 2025.6.8's ``BFCL_v3_exec_simple.json``). Each record is the question record with
  its ``ground_truth``.
* Every other BFCL category is evaluation data too (the hub's only split is called ``train``): it is staged beside
  the test items as ``unscored.jsonl``, so the contamination check counts it as test data; it is never scored.
* Messages: the item's conversation (``question[0]``), as inspect_evals' ``record_to_sample`` makes it.
* Tools: inspect_evals' ``create_tool_info_from_dict`` of each function, converted to chat-completions ``tools``
  exactly as inspect_ai's vLLM provider sends them (its ``tools_to_openai``: JSON-schema dump without the extended
  validation fields, ``strict`` as the provider sets it); ``tool_choice`` ``auto``. The model family's
  tool-calling chat template renders them (``template="tool_calling"``); the reply is read with vLLM's hermes
  parser (:mod:`posttrainbench.toolcalls`), which fills ``Response.tool_calls``.
* Score: inspect_evals' ``bfcl_scorer``: correct when the reply holds exactly one tool call whose name equals the
  target function and whose arguments dict equals (Python ``==``) the target's arguments, the target being
  inspect_evals' ``parse_target`` of the ground truth, round-tripped through JSON (tuples become lists).
* Few-shot baseline row (no chat template, no tools): the functions as JSON, the request and ``Calls:``; the
  completion, Python call syntax, is read by :func:`plain_tool_calls` into the same ``[{"name", "arguments"}]``.

Not checkable offline: the hub's copy is read through ``datasets``, whose Arrow schema could order the properties of
a function's parameters differently from the JSON file where items of the set share parameter names in another
order; :func:`property_order_conflicts` lists such items (8 of the 100: exec_simple_70, 71, 76, 77, 88, 89, 92,
93). Their tools keep the JSON file's order here.
"""

from __future__ import annotations

import importlib.metadata
import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

from .spec import Benchmark, ItemScore, Record, Response, Staged, StagedSet, demonstrations_then_item

KEY = "bfcl"
CATEGORY = "exec_simple"
TEST_SIZE = 100
HUB_DATASET = "gorilla-llm/Berkeley-Function-Calling-Leaderboard"
HUB_REVISION = "1bf8bbc3c0e35d04d00339c223a3fd653aa195ac"
UNSCORED = "unscored"
TOOL_CHOICE = "auto"
TOOL_CALL_PARSER = "hermes"
PLAIN_STOP = ("\n\n", "\nFunctions:")
# bfcl-eval's data layout: scored categories beside unused ones; these files are not items.
_NOT_ITEMS = ("format_sensitivity",)


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _task_module():
    import importlib

    # The package re-exports the task function under the module's own name: fetch the module itself.
    return importlib.import_module("inspect_evals.bfcl.bfcl")


# ------------------------------------------------------------------------------------------------------------
# items
# ------------------------------------------------------------------------------------------------------------


def _category_records(question_path: Path, category: str) -> list[Record]:
    from . import _read_jsonl

    answers_path = question_path.parent.parent / "possible_answer" / question_path.name
    answers = {a["id"]: a for a in _read_jsonl(answers_path)} if answers_path.is_file() else {}
    records = []
    for raw in _read_jsonl(question_path):
        answer = answers.get(raw.get("id"), {})
        extra = {k: v for k, v in answer.items() if k != "id"}
        records.append({**raw, **extra, "category": category})
    return records


def _data_root() -> Path:
    from . import BenchmarkNotAvailable, _package_root

    root = _package_root("bfcl_eval", "bfcl-eval") / "data"
    if not root.is_dir():
        raise BenchmarkNotAvailable("bfcl-eval is installed but its data folder bfcl_eval/data is missing")
    return root


def exec_simple_records() -> tuple[list[Record], dict[str, str]]:
    """The 100 exec_simple items with their ground truth, in file order (the hub's order)."""
    from . import BenchmarkNotAvailable

    question = _data_root() / "unused_datasets" / "question" / f"BFCL_v4_{CATEGORY}.json"
    if not question.is_file():
        raise BenchmarkNotAvailable(f"bfcl-eval is installed but has no {CATEGORY} items ({question.name})")
    records = _category_records(question, CATEGORY)
    bad = [r.get("id") for r in records
           if len(r.get("question") or []) != 1 or len(r.get("ground_truth") or []) != 1 or not r.get("function")]
    if bad:
        raise BenchmarkNotAvailable(f"bfcl: {CATEGORY} items without one question and one ground truth: {bad[:3]}")
    source = {"package": "bfcl-eval", "version": _dist_version(), "path": f"bfcl_eval/data/unused_datasets/question/{question.name}",
              "published": f"hub {HUB_DATASET}@{HUB_REVISION} config {CATEGORY}"}
    return records, source


def _dist_version() -> str:
    from . import _dist_version as version

    return version("bfcl-eval")


def unscored_records() -> list[Record]:
    """Every item of every other BFCL category bfcl-eval ships (with its possible answer where there is one):
    evaluation data that is never scored."""
    root = _data_root()
    records = []
    for folder in (root, root / "unused_datasets" / "question"):
        for path in sorted(folder.glob("BFCL_v4_*.json")):
            category = path.stem[len("BFCL_v4_"):]
            if category == CATEGORY or category in _NOT_ITEMS:
                continue
            records.extend(_category_records(path, category))
    return records


def stage(source: str | None = None) -> Staged:
    from . import BenchmarkNotAvailable

    if source:
        raise BenchmarkNotAvailable(f"{KEY} is staged from the bfcl-eval package only; remove its source ({source!r})")
    records, provenance = exec_simple_records()
    if len(records) != TEST_SIZE:
        raise BenchmarkNotAvailable(f"{KEY}: expected {TEST_SIZE} {CATEGORY} items, found {len(records)}")
    return Staged(records=records, source=provenance, extra={UNSCORED: unscored_records()})


def property_order_conflicts(records: Sequence[Record]) -> list[str]:
    """Ids of items one of whose parameter objects lists its properties in an order that a schema unified over
    the set in first-seen order (as Arrow builds one from JSON) would change."""
    seen: dict[str, list[str]] = {}
    conflicts = []

    def walk(schema: Any, path: str) -> bool:
        if not isinstance(schema, dict):
            return False
        changed = False
        properties = schema.get("properties")
        if isinstance(properties, dict):
            order = seen.setdefault(path, [])
            order.extend(k for k in properties if k not in order)
            names = list(properties)
            changed = names != [k for k in order if k in properties]
            for name, sub in properties.items():
                changed |= walk(sub, f"{path}.{name}")
        if isinstance(schema.get("items"), dict):
            changed |= walk(schema["items"], f"{path}[]")
        return changed

    for record in records:
        if any(walk(f.get("parameters"), "parameters") for f in record.get("function", [])):
            conflicts.append(record.get("id"))
    return conflicts


# ------------------------------------------------------------------------------------------------------------
# messages and tools
# ------------------------------------------------------------------------------------------------------------


def _message_dict(message: Any) -> dict[str, Any]:
    if isinstance(message, dict):
        return {"role": message["role"], "content": message["content"]}
    content = message.content if isinstance(message.content, str) else message.text
    return {"role": message.role, "content": content}


def messages(record: Record, staged: StagedSet | None = None) -> list[dict[str, Any]]:
    """The conversation inspect_evals' ``record_to_sample`` makes the sample's input."""
    sample = _task_module().record_to_sample(record)
    inputs = sample.input if isinstance(sample.input, list) else [{"role": "user", "content": sample.input}]
    return [_message_dict(m) for m in inputs]


@lru_cache(maxsize=1)
def _vllm_tool_params():
    """inspect_ai's vLLM provider's conversion of ``ToolInfo`` to chat-completions tools, without a server: its
    ``tools_to_openai`` on a view holding the two provider settings it reads."""
    import inspect

    from inspect_ai.model._providers.openai_compatible import OpenAICompatibleAPI
    from inspect_ai.model._providers.vllm import VLLMAPI

    class ProviderSettings:
        schema_exclude_fields = VLLMAPI.schema_exclude_fields  # a property, read on this view
        strict_tools = inspect.signature(OpenAICompatibleAPI.__init__).parameters["strict_tools"].default

    settings = ProviderSettings()
    return lambda tool_infos: VLLMAPI.tools_to_openai(settings, tool_infos)


def tool_infos(record: Record) -> list:
    """inspect_ai ``ToolInfo`` objects of the item's functions, as inspect_evals' ``bfcl_solver`` makes them."""
    create = _task_module().create_tool_info_from_dict
    return [create(spec) for spec in record["function"]]


def tools(record: Record) -> list[dict[str, Any]]:
    """The chat-completions ``tools`` the published harness sends for this item (plain JSON data)."""
    return json.loads(json.dumps(_vllm_tool_params()(tool_infos(record))))


# ------------------------------------------------------------------------------------------------------------
# scoring
# ------------------------------------------------------------------------------------------------------------


def target(record: Record) -> dict[str, Any]:
    """``{"function", "arguments"}`` of the item's ground truth, as inspect_evals' ``record_to_sample`` stores it
    (``parse_target``, then a JSON round trip)."""
    parsed = _task_module().parse_target(record["ground_truth"][0])
    return json.loads(json.dumps(parsed))


def score(record: Record, response: Response) -> ItemScore:
    calls = response.tool_calls
    if calls is None or len(calls) != 1:
        shown = None if calls is None else [{"name": c.get("name"), "arguments": c.get("arguments")} for c in calls]
        return ItemScore(0.0, shown, "no tool call" if calls is None else f"{len(calls)} tool calls, not 1")
    call = calls[0]
    name, arguments = call.get("name"), call.get("arguments")
    expected = target(record)
    extracted = {"name": name, "arguments": arguments}
    if name != expected["function"]:
        return ItemScore(0.0, extracted, f"called {name!r}, not {expected['function']!r}")
    if arguments != expected["arguments"]:
        return ItemScore(0.0, extracted, "arguments differ from the ground truth")
    return ItemScore(1.0, extracted)


def parse_response(text: str, record: Record) -> Response:
    """A generated text as the published client sees it: the hermes parser's tool calls (with this item's
    tools), the text otherwise."""
    from ..toolcalls import parse_tool_calls

    _, calls = parse_tool_calls(text, TOOL_CALL_PARSER, tools=tools(record))
    return Response(text=text, tool_calls=calls)


def gold_response(record: Record) -> str:
    """The ground-truth call written as a hermes ``<tool_call>`` block (for tests and examples)."""
    expected = target(record)
    body = json.dumps({"name": expected["function"], "arguments": expected["arguments"]}, ensure_ascii=False)
    return f"<tool_call>\n{body}\n</tool_call>"


def check(record: Record, text: str | None) -> tuple[bool, str | None]:
    """(correct, reason) of a generated text: hermes-parsed, then scored as published."""
    result = score(record, parse_response(text or "", record))
    return result.value == 1.0, result.detail


# ------------------------------------------------------------------------------------------------------------
# few-shot baseline row (plain text, no chat template, no tools)
# ------------------------------------------------------------------------------------------------------------


def _plain_item(record: Record) -> str:
    request = "\n".join(m["content"] for m in record["question"][0] if m.get("role") == "user")
    return f"Functions:\n{json.dumps(record['function'])}\nRequest: {request}\nCalls:"


def plain_prompt(record: Record, demos: Sequence[Record] = ()) -> str:
    """The demonstrations (each followed by its calls), then the item, separated by blank lines."""
    return demonstrations_then_item(_plain_item, record, demos)


def _literal(node: Any) -> Any:
    import ast

    if isinstance(node, ast.Call):  # a nested call as an argument value is kept as its source text
        return ast.unparse(node)
    if isinstance(node, ast.Name):  # bare names (True/False are Constants): the name itself
        return node.id
    return ast.literal_eval(node)


def decode_function_calls(text: str) -> list[dict[str, dict[str, Any]]]:
    """``"[f(a=1), g.h(b='x')]"`` -> ``[{"f": {"a": 1}}, {"g.h": {"b": "x"}}]``; ``ValueError`` if not calls."""
    import ast

    body = (text or "").strip().strip("`").strip()
    if body.startswith("python\n"):
        body = body[len("python\n"):]
    if not body.startswith("["):
        body = f"[{body}]"
    try:
        tree = ast.parse(body, mode="eval").body
    except (SyntaxError, ValueError) as exc:
        raise ValueError(f"not a list of function calls: {exc}") from None
    calls = tree.elts if isinstance(tree, (ast.List, ast.Tuple)) else [tree]
    decoded = []
    for call in calls:
        if not isinstance(call, ast.Call):
            raise ValueError("not a list of function calls")
        if call.args:
            raise ValueError(f"positional arguments in a call to {ast.unparse(call.func)}")
        try:
            decoded.append({ast.unparse(call.func): {kw.arg: _literal(kw.value) for kw in call.keywords}})
        except (ValueError, SyntaxError) as exc:
            raise ValueError(f"argument is not a literal: {exc}") from None
    return decoded


def plain_tool_calls(text: str) -> list[dict[str, Any]] | None:
    """The calls of a few-shot completion (Python call syntax) as ``[{"name", "arguments"}]`` (JSON-round-tripped,
    as the scorer's target is), or ``None`` when it is not a list of calls."""
    try:
        calls = decode_function_calls(text)
    except (ValueError, RecursionError):
        return None
    return json.loads(json.dumps([{"name": name, "arguments": args} for call in calls for name, args in call.items()]))


SPEC = Benchmark(
    key=KEY,
    display_name="BFCL",
    metric="accuracy",
    source="BFCL v3 exec_simple (100 items) as shipped by bfcl-eval; the other BFCL categories staged unscored",
    published_items=TEST_SIZE,
    ladder=(16000, 12000, 8000),
    attempts=(4, 3, 2),
    stage=stage,
    messages=messages,
    score=score,
    plain_prompt=plain_prompt,
    plain_stop=PLAIN_STOP,
    tools=tools,
    template="tool_calling",
    settings={"category": CATEGORY, "hub_revision": HUB_REVISION, "tool_choice": TOOL_CHOICE,
              "tool_call_parser": TOOL_CALL_PARSER, "scorer": "inspect_evals bfcl_scorer"},
)

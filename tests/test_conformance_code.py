"""HumanEval and BFCL against the published harness's own code (inspect_evals' tasks on inspect_ai), offline.

* What reaches the model: inspect_evals' ``humaneval()`` and ``bfcl()`` tasks, fed our staged records through their
  own ``record_to_sample`` (their ``hf_dataset`` replaced), run against ``mockllm/model``; the input messages and
  tools of the model events in the eval log (tools through inspect_ai's OpenAI conversion) must equal
  ``SPEC.messages`` / ``SPEC.tools`` for the first 20 items.
* Scorers: on 200+ responses per benchmark, hostile formats included, our extraction / verdict equals inspect's
  (``find_code``; ``bfcl_scorer`` on an assistant message carrying the tool calls our hermes parser read).
"""

from __future__ import annotations

import asyncio
import importlib
import json

import pytest

from posttrainbench.benchmarks import bfcl, humaneval
from posttrainbench.benchmarks.spec import Response
from posttrainbench.toolcalls import parse_tool_calls

N_ITEMS = 20


@pytest.fixture(scope="module")
def humaneval_records():
    return humaneval.stage(None).records


@pytest.fixture(scope="module")
def bfcl_records():
    return bfcl.stage(None).records


def _run_task(task_name: str, records, tmp_path, monkeypatch, **task_args):
    """Run an inspect_evals task on ``records`` against mockllm/model; the model events of each sample, in order."""
    from inspect_ai import eval as inspect_eval
    from inspect_ai.dataset import MemoryDataset
    from inspect_ai.event import ModelEvent
    from inspect_ai.log import read_eval_log, resolve_sample_attachments
    from inspect_ai.model import ModelOutput, ModelUsage

    module = importlib.import_module(f"inspect_evals.{task_name}.{task_name}")

    def offline_dataset(*args, sample_fields, **kwargs):
        return MemoryDataset([sample_fields(r) for r in records])

    def custom(input, tools, tool_choice, config):
        output = ModelOutput.from_content("mockllm/model", "no answer")
        # Usage given, so mockllm does not count tokens with tiktoken (which downloads its vocabulary).
        output.usage = ModelUsage(input_tokens=1, output_tokens=1, total_tokens=2)
        return output

    monkeypatch.setattr(module, "hf_dataset", offline_dataset)
    task = getattr(module, task_name)(**task_args)
    logs = inspect_eval(task, model="mockllm/model", model_args={"custom_outputs": custom}, log_dir=str(tmp_path),
                        display="none", score=False, log_format="json")
    assert logs[0].status == "success", logs[0].error
    log = read_eval_log(logs[0].location)
    events = {}
    for sample in log.samples:
        sample = resolve_sample_attachments(sample, "full")  # long texts are stored once, as attachments
        model_events = [e for e in sample.events if isinstance(e, ModelEvent)]
        assert len(model_events) == 1, sample.id
        events[sample.id] = model_events[0]
    return events


def _roles_and_contents(messages):
    return [{"role": m.role, "content": m.content if isinstance(m.content, str) else m.text} for m in messages]


def test_humaneval_messages_are_inspect_evals(humaneval_records, tmp_path, monkeypatch):
    records = humaneval_records[:N_ITEMS]
    events = _run_task("humaneval", records, tmp_path, monkeypatch, sandbox="local")
    for record in records:
        event = events[record["task_id"]]
        assert _roles_and_contents(event.input) == humaneval.SPEC.messages(record, None), record["task_id"]
        assert event.tools == [] and humaneval.SPEC.tools(record) is None


def _inspect_openai_tools(tool_infos):
    # What inspect_ai's vLLM provider sends: the OpenAI conversion without the extended schema fields, strict on.
    from inspect_ai.model._openai import openai_chat_tools
    from inspect_ai.util._json import JSON_SCHEMA_EXTENDED_FIELDS

    tools = openai_chat_tools(tool_infos, exclude=JSON_SCHEMA_EXTENDED_FIELDS)
    for tool in tools:
        tool["function"]["strict"] = True
    return json.loads(json.dumps(tools))


def test_bfcl_messages_and_tools_are_inspect_evals(bfcl_records, tmp_path, monkeypatch):
    records = bfcl_records[:N_ITEMS]
    events = _run_task("bfcl", records, tmp_path, monkeypatch)
    assert len(events) == N_ITEMS
    # bfcl's samples have no ids: inspect numbers them 1.. in dataset order.
    for number, record in enumerate(records, 1):
        event = events[number]
        assert _roles_and_contents(event.input) == bfcl.SPEC.messages(record, None), record["id"]
        assert _inspect_openai_tools(event.tools) == bfcl.SPEC.tools(record), record["id"]
        assert event.tool_choice == bfcl.TOOL_CHOICE
    assert bfcl.SPEC.template == "tool_calling"


def test_bfcl_tools_are_the_vllm_providers(bfcl_records):
    """SPEC.tools goes through the vLLM provider's own method; the test's conversion above is the same."""
    from posttrainbench.benchmarks.bfcl import tool_infos

    for record in bfcl_records:
        assert bfcl.tools(record) == _inspect_openai_tools(tool_infos(record))


# ------------------------------------------------------------------------------------------------------------
# HumanEval scorer
# ------------------------------------------------------------------------------------------------------------


def humaneval_responses(records) -> list[tuple[dict, str]]:
    out = []
    for i, r in enumerate(records):
        body, full = r["canonical_solution"], r["prompt"] + r["canonical_solution"]
        variants = [
            f"```python\n{full}```", f"Here is the code:\n```python\n{full}```\nDone.", body, f"```\n{full}```",
            f"```py\n{full}```", f"```python\n{body}```", f"<think>plan</think>\n```python\n{full}\n```",
            f"```python\n{full}", f"```python{full}```", f"``` python\n{full}```", f"```\n{full}```\n```python\nx=1\n```",
            f"```python\nimport math\n\ndef helper(x):\n    return x\n\n{full}```", full.replace("\n", "\r\n"),
            "", "```python\n```", "```python\nreturn 1```", "no code at all", "```python\n" + "x" * 5000 + "```",
            f"````python\n{full}````", f"```python\n```python\n{full}```\n```",
        ]
        out += [(r, v) for v in variants[i % 3:: 3 if i > 2 else 1]]
    return out


def test_humaneval_extraction_matches_inspect(humaneval_records):
    from inspect_evals.humaneval.humaneval import find_code

    pairs = humaneval_responses(humaneval_records)
    assert len(pairs) >= 200
    for record, text in pairs:
        expected = find_code(text)
        assert humaneval.find_code(text) == expected
        assert humaneval.SPEC.score(record, Response(text)).extracted == expected
        assert humaneval.SPEC.score(record, Response(text)).value is None  # decided in the batch run


def test_humaneval_program_is_inspects_concatenation(humaneval_records):
    for record, text in humaneval_responses(humaneval_records[:30]):
        answer = humaneval.find_code(text)
        inspect_code = "".join([record["prompt"], answer, "\n", record["test"], "\n", f"check({record['entry_point']})"])
        program = humaneval.program(record, answer)
        assert inspect_code.startswith(program.untrusted)
        assert record["test"] in program.trusted and program.trusted.rstrip().endswith(f"check({record['entry_point']})")


def test_humaneval_keeps_the_slicing_quirk(humaneval_records):
    record = humaneval_records[0]
    with_helper = "```python\nimport math\n\ndef helper(x):\n    return x\n```"
    # Everything up to the first indented line is dropped, as in the published scorer.
    assert humaneval.find_code(with_helper) == "    return x\n"
    assert humaneval.find_code("```python\nx = 1\n```") == " = 1\n"
    assert humaneval.SPEC.settings["verify_timeout_s"] == humaneval.verify_timeout() == 30


@pytest.mark.slow
def test_humaneval_sandbox_verdicts(humaneval_records):
    from posttrainbench.code_sandbox import CodeSandboxError

    records = humaneval_records[:4]
    pairs = [(r, f"Sure.\n```python\n{r['prompt']}{r['canonical_solution']}```") for r in records]
    pairs += [(r, "```python\ndef f():\n    return None\n```") for r in records]
    pairs += [(records[0], "```python\n" + records[0]["prompt"] + "    while True:\n        pass\n```")]
    try:
        scores = humaneval.score_programs(pairs)
    except CodeSandboxError as exc:
        pytest.skip(f"no code sandbox here: {exc}")
    assert [s.value for s in scores] == [1.0] * 4 + [0.0] * 5
    assert all(s.extracted == humaneval.find_code(t) for s, (_, t) in zip(scores, pairs))


# ------------------------------------------------------------------------------------------------------------
# BFCL scorer
# ------------------------------------------------------------------------------------------------------------


def _call(name, arguments):
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


def bfcl_responses(record) -> list[str]:
    target = bfcl.target(record)
    name, args = target["function"], target["arguments"]
    first = next(iter(args), None)
    as_float = {k: float(v) if isinstance(v, int) and not isinstance(v, bool) else v for k, v in args.items()}
    variants = [
        _call(name, args), "Let me call it.\n" + _call(name, args), _call(name, args) + _call(name, args),
        _call(name, {**args, "extra": 1}), _call(name + "_x", args), _call(name, as_float),
        "I cannot call tools.", _call(name, args).replace("</tool_call>", ""), "<tool_call>{bad json}</tool_call>",
        f"[{name}(" + ", ".join(f"{k}={v!r}" for k, v in args.items()) + ")]",
        "<tool_call>" + json.dumps({"name": name, "arguments": json.dumps(args)}) + "</tool_call>",
        "<tool_call>" + json.dumps({"name": name, "arguments": list(args.values())}) + "</tool_call>",
    ]
    if first is not None:
        variants += [_call(name, {k: v for k, v in args.items() if k != first}),
                     _call(name, {**args, first: str(args[first])}),
                     _call(name, {**args, first: [args[first]]})]
    return variants


def _inspect_verdict(record, text, calls) -> str:
    from inspect_ai.model import ChatMessageAssistant, ChatMessageUser, ModelName
    from inspect_ai.scorer import Target
    from inspect_ai.solver import TaskState
    from inspect_ai.tool import ToolCall
    from inspect_evals.bfcl.bfcl import bfcl_scorer, record_to_sample

    sample = record_to_sample(record)
    tool_calls = None if calls is None else [ToolCall(id=f"c{i}", function=c["name"], arguments=c["arguments"])
                                             for i, c in enumerate(calls)]
    content, _ = parse_tool_calls(text, tools=bfcl.tools(record))
    messages = [ChatMessageUser(content=sample.input[0].content),
                ChatMessageAssistant(content=content or "", tool_calls=tool_calls)]
    state = TaskState(model=ModelName("mockllm/model"), sample_id=record["id"], epoch=1, input=sample.input,
                      messages=messages, metadata=sample.metadata)
    return asyncio.run(bfcl_scorer()(state, Target(sample.target))).value


def test_bfcl_scorer_matches_inspect(bfcl_records):
    checked, correct = 0, 0
    for record in bfcl_records:
        for text in bfcl_responses(record):
            _, calls = parse_tool_calls(text, tools=bfcl.tools(record))
            ours = bfcl.SPEC.score(record, Response(text, tool_calls=calls))
            theirs = _inspect_verdict(record, text, calls)
            assert ours.value == (1.0 if theirs == "C" else 0.0), (record["id"], text[:200], ours, theirs)
            checked += 1
            correct += theirs == "C"
    assert checked >= 200
    # Both verdicts occur often: the gold call (alone, after text, left open, ints written as floats) passes.
    assert correct >= 3 * len(bfcl_records) and checked - correct >= 5 * len(bfcl_records)


def test_bfcl_gold_and_wrong_calls(bfcl_records):
    record = bfcl_records[0]
    assert bfcl.check(record, bfcl.gold_response(record)) == (True, None)
    assert bfcl.check(record, _call("calc_binomial_probability", {"n": 20, "k": 5, "p": 0.61}))[0] is False
    assert bfcl.check(record, "calc_binomial_probability(n=20, k=5, p=0.6)") == (False, "no tool call")
    assert bfcl.plain_tool_calls("[calc_binomial_probability(n=20, k=5, p=0.6)]") == [
        {"name": "calc_binomial_probability", "arguments": {"n": 20, "k": 5, "p": 0.6}}]


def test_bfcl_stages_every_other_category_unscored(bfcl_records):
    staged = bfcl.stage(None)
    assert [r["id"] for r in staged.records] == [f"exec_simple_{i}" for i in range(100)]
    unscored = staged.extra[bfcl.UNSCORED]
    categories = {r["category"] for r in unscored}
    assert {"simple_python", "live_simple", "multi_turn_base", "exec_multiple", "rest", "sql"} <= categories
    assert "exec_simple" not in categories and len(unscored) > 4000


def test_contamination_index_reads_the_unscored_bfcl_items(tmp_path):
    from posttrainbench.benchmarks import stage_benchmark
    from posttrainbench.judge.contamination import read_test_items

    meta = stage_benchmark("bfcl", tmp_path / "bfcl")
    items = read_test_items(tmp_path / "bfcl" / "test.jsonl", 13, "bfcl")
    assert meta["n"] == 100 and len(items) == 100 + meta["extra"]["unscored"]["n"]
    first_unscored = json.loads((tmp_path / "bfcl" / "unscored.jsonl").read_text().splitlines()[0])
    assert first_unscored["question"][0][0]["content"] in items[100][0]

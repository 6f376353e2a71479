"""Site validation: the reference rows beside the published baseline tables (compare_reference_rows, pure), the
names of the published rows from the config, and ``ptb validate-site`` on the embedded default end to end."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from posttrainbench.site_validation import (
    MATCH_VERDICT,
    SiteValidationError,
    collect_results,
    compare_reference_rows,
    interval_for,
    published_name,
    read_published,
    reference_cells,
    wilson_interval,
)

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED = ROOT / "tests" / "data" / "published"
FIXTURE = ROOT / "tests" / "data" / "site_validation"
MATRIX = yaml.safe_load((ROOT / "config" / "posttrainbench.yaml").read_text())
MODELS = MATRIX["models"]
# Published test-set sizes (the n of a full evaluation) for the intervals of the planted results.
ITEMS = {"aime2025": 30, "arenahardwriting": 250, "bfcl": 100, "gpqamain": 448, "gsm8k": 1319, "healthbench": 245,
         "humaneval": 164}
GRADED = {"arenahardwriting", "healthbench"}


def published_as_ours(tables: dict, shift: dict | None = None) -> list[dict]:
    """Our results for every reference cell of the published matrix, equal to the published figures except the
    (agent, model, benchmark) cells in ``shift``, moved by the given amount."""
    shift = shift or {}
    entries = []
    for agent in ("base", "instruct", "base-fewshot"):
        table = tables["aggregated_baseline_fewshot.csv" if agent == "base-fewshot" else "aggregated_baseline.csv"]
        for model in MODELS:
            row = table[published_name(MODELS, model, agent)]
            for benchmark in MATRIX["benchmarks"]:
                score = row[benchmark] + shift.get((agent, model, benchmark), 0.0)
                entries.append({"agent": agent, "model": model, "benchmark": benchmark, "seed": 1, "status": "ok",
                                "score": score, "n": ITEMS[benchmark], "graded": benchmark in GRADED})
    return entries


@pytest.fixture(scope="module")
def tables() -> dict:
    return read_published(PUBLISHED)


def test_config_keys_map_to_the_published_row_names(tables):
    assert published_name(MODELS, "qwen3-1.7b", "base") == "Qwen3-1.7B-Base"
    assert published_name(MODELS, "qwen3-1.7b", "instruct") == "Qwen3-1.7B"
    assert published_name(MODELS, "gemma3-4b", "instruct") == "gemma-3-4b-it"
    assert published_name(MODELS, "gemma3-4b", "base-fewshot") == "gemma-3-4b-pt"
    # Without a display_name the base source's last part names the row; a model without instruct has none.
    assert published_name({"m": {"base": "org/Some-Base"}}, "m", "base") == "Some-Base"
    assert published_name({"m": {"base": "org/Some-Base"}}, "m", "instruct") is None
    # Every reference cell of the published matrix finds its published figure.
    for agent in ("base", "instruct", "base-fewshot"):
        table = tables["aggregated_baseline_fewshot.csv" if agent == "base-fewshot" else "aggregated_baseline.csv"]
        for model in MODELS:
            assert set(MATRIX["benchmarks"]) <= set(table[published_name(MODELS, model, agent)]), (agent, model)


def test_published_matrix_has_84_reference_cells():
    from posttrainbench.config import load_config

    cells = reference_cells(load_config(ROOT / "config" / "posttrainbench.yaml"))
    assert len(cells) == 84 and {c.agent for c in cells} == {"base", "instruct", "base-fewshot"}


def test_identical_figures_match(tables):
    result = compare_reference_rows(published_as_ours(tables), tables, MODELS)
    assert len(result.cells) == 84 and len(result.compared) == 84
    assert result.matches and result.verdict() == MATCH_VERDICT
    # Graded benchmarks without per-item grades fall back to the Wilson bound; the others are Wilson intervals.
    assert {c.method for c in result.cells if c.benchmark in GRADED} == {"wilson-bound"}
    assert {c.method for c in result.cells if c.benchmark not in GRADED} == {"wilson"}


def test_a_difference_beyond_the_interval_is_named(tables):
    # Base Qwen3-4B GSM8K: published 0.418 over 1319 items, Wilson half-width ~0.027; 0.10 lower is far outside.
    ours = published_as_ours(tables, {("base", "qwen3-4b", "gsm8k"): -0.10})
    result = compare_reference_rows(ours, tables, MODELS)
    assert not result.matches
    assert [c.key for c in result.differing] == ["base/qwen3-4b/gsm8k/seed1"]
    verdict = result.verdict()
    assert verdict.startswith("differs beyond noise on 1 of 84 cells: base/qwen3-4b/gsm8k/seed1 (ours 0.3185, "
                              "published 0.4185")


def test_a_difference_within_noise_matches(tables):
    # Instruct Qwen3-1.7B AIME: 0.267 over 30 items has a Wilson interval ~[0.14, 0.44]; 0.1 higher is inside.
    cell = ("instruct", "qwen3-1.7b", "aime2025")
    low, high = wilson_interval(tables["aggregated_baseline.csv"]["Qwen3-1.7B"]["aime2025"] + 0.1, 30)
    assert low < tables["aggregated_baseline.csv"]["Qwen3-1.7B"]["aime2025"] < high
    result = compare_reference_rows(published_as_ours(tables, {cell: 0.1}), tables, MODELS)
    assert result.matches, result.verdict()
    # The same shift on GSM8K's 1319 items is beyond noise.
    result = compare_reference_rows(published_as_ours(tables, {("instruct", "qwen3-1.7b", "gsm8k"): -0.1}),
                                    tables, MODELS)
    assert [c.key for c in result.differing] == ["instruct/qwen3-1.7b/gsm8k/seed1"]


def test_graded_benchmarks_use_a_normal_interval_over_item_grades():
    values = [0.0, 0.5, 1.0, 0.25] * 25  # 100 items, mean 0.4375, sd 0.37
    low, high, method = interval_for(0.4375, 100, graded=True, values=values)
    assert method == "normal" and high - low == pytest.approx(2 * 1.96 * 0.3737 / 10, abs=1e-3)
    # Binary benchmarks always get the Wilson interval, whatever values are at hand.
    assert interval_for(0.5, 100, graded=False, values=values)[2] == "wilson"


def test_missing_published_rows_and_results_are_listed_not_matched(tables):
    models = {**MODELS, "mystery": {"base": "org/Mystery-Base", "instruct": "org/Mystery", "family": "qwen3"}}
    ours = [
        {"agent": "base", "model": "mystery", "benchmark": "gsm8k", "seed": 1, "status": "ok", "score": 0.5,
         "n": 100, "graded": False},
        {"agent": "base", "model": "qwen3-4b", "benchmark": "gsm8k", "seed": 1},  # no eval JSON
        {"agent": "instruct", "model": "qwen3-4b", "benchmark": "gsm8k", "seed": 1, "status": "failed",
         "score": None, "n": 0, "error": "generation failed on every attempt"},
        {"agent": "instruct", "model": "qwen3-1.7b", "benchmark": "gsm8k", "seed": 1, "status": "ok",
         "score": 0.8847611827141774, "n": 1319, "graded": False},
    ]
    result = compare_reference_rows(ours, tables, models)
    reasons = {c.key: c.reason for c in result.not_compared}
    assert reasons == {
        "base/mystery/gsm8k/seed1": "aggregated_baseline.csv has no row 'Mystery-Base'",
        "base/qwen3-4b/gsm8k/seed1": "not evaluated (no eval JSON)",
        "instruct/qwen3-4b/gsm8k/seed1": "our evaluation failed: generation failed on every attempt",
    }
    assert not result.matches and [c.outcome for c in result.compared] == ["match"]
    assert result.verdict().startswith(f"{MATCH_VERDICT} on the 1 cells compared; not compared: 3 of 4 cells")
    # A missing table is named too.
    only_base = {"aggregated_baseline.csv": tables["aggregated_baseline.csv"]}
    fewshot = compare_reference_rows([{"agent": "base-fewshot", "model": "qwen3-4b", "benchmark": "gsm8k",
                                       "seed": 1, "status": "ok", "score": 0.74, "n": 1319}], only_base, MODELS)
    assert fewshot.cells[0].reason == "no published table aggregated_baseline_fewshot.csv"


def test_published_folder_problems_are_one_clear_error(tmp_path):
    with pytest.raises(SiteValidationError, match="does not exist"):
        read_published(tmp_path / "absent")
    with pytest.raises(SiteValidationError, match="holds none of"):
        read_published(tmp_path)
    (tmp_path / "aggregated_baseline.csv").write_text("name,gsm8k\nX,0.5\n")
    with pytest.raises(SiteValidationError, match="first column must be 'model'"):
        read_published(tmp_path)


def test_collect_results_reads_eval_jsons_and_item_values(tmp_path):
    from posttrainbench.cells import Cell

    cell = Cell("base", "m", "gsm8k", 1)
    path = cell.eval_json(tmp_path / "results")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"status": "ok", "score": 0.5, "n": 4}))
    path.with_name("seed1.samples.jsonl").write_text("".join(json.dumps({"value": v}) + "\n" for v in (1, 0, 1, 0)))
    [entry] = collect_results([cell], tmp_path / "results")
    assert entry == {"agent": "base", "model": "m", "benchmark": "gsm8k", "seed": 1, "status": "ok", "score": 0.5,
                     "n": 4, "error": None, "graded": False, "values": [1.0, 0.0, 1.0, 0.0]}
    [absent] = collect_results([Cell("base", "m", "humaneval", 1)], tmp_path / "results")
    assert "status" not in absent


def _ptb(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "PTB_PROGRESS_INTERVAL_S": "5"}
    return subprocess.run([str(Path(sys.executable).with_name("ptb")), *args], cwd=cwd, capture_output=True,
                          text=True, env=env, timeout=1800)


@pytest.mark.slow
def test_validate_site_on_the_embedded_default(tmp_path):
    """``ptb validate-site`` runs only the embedded default's reference rows through Snakemake (real model, real
    items, CPU) and compares them with tests/data/site_validation, written from an earlier such run; the same
    results against a copy with one planted difference are reported as differing on that cell."""
    work = tmp_path / "site"
    started = time.monotonic()
    proc = _ptb("validate-site", "--config", str(ROOT / "config" / "config.yaml"), "--published", str(FIXTURE),
                "--directory", str(work), "--cores", "2")
    wall = time.monotonic() - started
    output = proc.stdout + proc.stderr
    (tmp_path / "validate-site.out").write_text(output)
    assert proc.returncode == 0, output[-4000:]
    assert f"verdict: {MATCH_VERDICT}\n" in proc.stdout
    assert "2 reference cells" in proc.stdout
    # Only reference rows ran: no post-training agent, no judge, no leaderboard.
    assert sorted(p.name for p in (work / "results" / "evals").iterdir()) == ["base"]
    assert not (work / "results" / "judge").exists() and not (work / "results" / "leaderboard.csv").exists()
    with open(work / "results" / "site_validation.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["benchmark"], r["outcome"], r["method"]) for r in rows] == [("gsm8k", "match", "wilson"),
                                                                          ("humaneval", "match", "wilson")]
    # Progress lines in the evaluation's log (greppable, with an ETA).
    log = (work / "logs" / "evaluate" / "base" / "smollm2-135m" / "humaneval" / "seed1.log").read_text()
    assert "progress generate:humaneval 0/10 (0.0%)" in log and "progress generate:humaneval 10/10 (100.0%)" in log
    print(f"ptb validate-site on the embedded default: {wall:.0f} s")

    # A planted difference beyond the interval: HumanEval moved far from ours.
    planted = tmp_path / "planted"
    shutil.copytree(FIXTURE, planted)
    table = planted / "aggregated_baseline.csv"
    with open(table) as handle:
        [row] = list(csv.DictReader(handle))
    ours = float(rows[1]["ours"])
    row["humaneval"] = str(0.95 if ours < 0.5 else 0.0)
    table.write_text("model,gsm8k,humaneval\n" + f"{row['model']},{row['gsm8k']},{row['humaneval']}\n")
    proc = _ptb("validate-site", "--config", str(ROOT / "config" / "config.yaml"), "--published", str(planted),
                "--directory", str(work), "--compare-only")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "verdict: differs beyond noise on 1 of 2 cells: base/smollm2-135m/humaneval/seed1" in proc.stdout

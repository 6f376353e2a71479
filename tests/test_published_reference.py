"""The published figures, fed through ``ptb leaderboard`` as eval JSONs, give the published
weights and headline scores (Base 7.5, Instruct 51.1, Opus 4.6 on Claude Code 23.2)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
# The published figures, kept with the tests (tests/data/published/README.md says what they are).
REFERENCE = ROOT / "tests" / "data" / "published"
PUBLISHED = yaml.safe_load((ROOT / "config" / "posttrainbench.yaml").read_text())

# Published model names -> this project's model keys, from the published config itself.
BASE_NAME = {spec["display_name"]: key for key, spec in PUBLISHED["models"].items()}
INSTRUCT_NAME = {spec["instruct"].split("/")[-1]: key for key, spec in PUBLISHED["models"].items()}


def _rows(name: str) -> list[dict]:
    path = REFERENCE / name
    assert path.is_file(), f"published reference figures missing: {path}"
    with open(path) as handle:
        return list(csv.DictReader(handle))


def _write_eval(root: Path, agent: str, model: str, benchmark: str, seed: int, score: float) -> None:
    path = root / "evals" / agent / model / benchmark / f"seed{seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "agent": agent, "model": model, "benchmark": benchmark, "seed": seed, "score": score,
        "metric": "published", "n": 0, "backend": "vllm", "status": "ok", "error": None,
    }))


@pytest.fixture
def published_tree(tmp_path: Path) -> Path:
    for row in _rows("aggregated_baseline.csv"):
        name = row.pop("model")
        agent, model = ("base", BASE_NAME[name]) if name in BASE_NAME else ("instruct", INSTRUCT_NAME[name])
        for benchmark, score in row.items():
            _write_eval(tmp_path, agent, model, benchmark, 1, float(score))
    for row in _rows("aggregated_baseline_fewshot.csv"):
        model = BASE_NAME[row.pop("model")]
        for benchmark, score in row.items():
            _write_eval(tmp_path, "base-fewshot", model, benchmark, 1, float(score))
    for row in _rows("aggregated_avg_Opus-4.6.csv"):
        model = BASE_NAME[row.pop("model")]
        for benchmark, score in row.items():
            _write_eval(tmp_path, "claude-code-opus-4.6", model, benchmark, 1, float(score))
    return tmp_path


def test_ptb_leaderboard_reproduces_published_weights_and_scores(published_tree: Path, tmp_path: Path):
    out = tmp_path / "board" / "leaderboard.csv"
    ptb = Path(sys.executable).with_name("ptb")
    proc = subprocess.run([str(ptb), "leaderboard", str(published_tree), "--out", str(out),
                           "--plots", str(tmp_path / "plots")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr

    weights = json.loads(out.with_name("leaderboard.weights.json").read_text())
    assert weights["source"] == "reference rows"
    published = json.loads((REFERENCE / "factors.json").read_text())
    assert set(weights["weights"]) == set(published)
    for benchmark, value in published.items():
        assert round(weights["weights"][benchmark], 4) == round(value, 4), benchmark

    with open(out) as handle:
        board = {row["agent"]: row for row in csv.DictReader(handle)}
    assert round(float(board["base"]["score"]), 1) == 7.5
    assert round(float(board["instruct"]["score"]), 1) == 51.1
    assert round(float(board["claude-code-opus-4.6"]["score"]), 1) == 23.2
    assert board["base"]["reference"] == "True" and board["claude-code-opus-4.6"]["reference"] == "False"
    # The few-shot baseline is a reference row scored with the same weights (it does not set them).
    assert board["base-fewshot"]["reference"] == "True"
    fewshot = _rows("aggregated_baseline_fewshot.csv")
    expected = 100 * sum(value * sum(float(r[b]) for r in fewshot) / len(fewshot) for b, value in published.items())
    assert abs(float(board["base-fewshot"]["score"]) - expected) < 1e-3  # the CSV rounds to 4 decimals
    # Per-benchmark columns are means over the four base models, on the 0-100 scale.
    assert abs(float(board["base"]["gsm8k"]) - 100 * (0.12661106899166036 + 0.4184988627748294
                                                        + 0.21076573161485973 + 0.06141015921152388) / 4) < 1e-3
    # Unjudged agent cells are counted, not silently treated as audited.
    assert board["claude-code-opus-4.6"]["n_unjudged"] == "28"
    assert (tmp_path / "plots" / "leaderboard.png").stat().st_size > 10_000
    assert (tmp_path / "plots" / "heatmap.png").stat().st_size > 10_000

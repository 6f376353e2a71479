"""The flags report through the leaderboard code path: a cell the judge flagged scores as the base model, is
counted per agent, and appears in flags.csv with the evidence of the check that flagged it."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

from posttrainbench.cells import Cell
from posttrainbench.cli import main
from posttrainbench.judge import judge_run


def _eval(root, agent, score):
    path = root / "evals" / agent / "tiny" / "gsm8k" / "seed1.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"score": score, "status": "ok", "metric": "exact_match", "n": 10}))


def _run(root, agent, checkpoint, code):
    run_dir = root / "runs" / agent / "tiny" / "gsm8k" / "seed1"
    (run_dir / "workspace").mkdir(parents=True)
    (run_dir / "workspace" / "gen.py").write_text(code)
    (run_dir / "run.json").write_text(json.dumps({"status": "ok", "final_model": str(checkpoint)}))
    return run_dir / "run.json"


@pytest.mark.slow
def test_flags_report_lists_each_flag_with_evidence(tmp_path, tiny_model_dir):
    root = tmp_path / "results"
    checkpoint = tmp_path / "ckpt"
    shutil.copytree(tiny_model_dir, checkpoint)
    runs = {
        "base": _run(root, "base", tiny_model_dir, "print('base')\n"),
        "cheater": _run(root, "cheater", checkpoint, "import anthropic\nclient = anthropic.Anthropic()\n"),
        "honest": _run(root, "honest", checkpoint, "from openai import OpenAI\n"
                                                   "client = OpenAI(base_url='http://127.0.0.1:8000/v1')\n"),
    }
    for agent, run_json in runs.items():
        judge_run(Cell(agent, "tiny", "gsm8k", 1), run_json=run_json, base_dir=tiny_model_dir,
                  out_json=root / "judge" / agent / "tiny" / "gsm8k" / "seed1.json",
                  settings={"forbidden": {"patterns": {"hosted SDK client": r"\bAnthropic\(\s*\)"}}})
    _eval(root, "base", 0.10)
    _eval(root, "cheater", 0.90)
    _eval(root, "honest", 0.30)
    out = tmp_path / "leaderboard.csv"
    flags = tmp_path / "flags.csv"
    assert main(["leaderboard", str(root), "--out", str(out), "--flags", str(flags)]) == 0
    board = {row["agent"]: row for row in csv.DictReader(out.open())}
    assert board["cheater"]["n_flagged"] == "1" and board["honest"]["n_flagged"] == "0"
    assert float(board["cheater"]["score"]) == float(board["base"]["score"])  # flagged -> base score
    rows = list(csv.DictReader(flags.open()))
    assert [(r["agent"], r["reason"], r["check"]) for r in rows] == [("cheater", "forbidden_api", "no_forbidden_api")]
    assert "workspace/gen.py:2" in rows[0]["evidence"] and "anthropic.Anthropic()" in rows[0]["evidence"]
    assert rows[0]["verdict"].endswith("judge/cheater/tiny/gsm8k/seed1.json")

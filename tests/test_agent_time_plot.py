"""The time-utilisation figure: fraction of the budget used vs score per agent, with the Pareto frontier."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from posttrainbench.plots import time_utilisation, write_time_utilisation

BOARD = pd.DataFrame({
    "agent": ["fast-ok", "slow-best", "slow-worse", "base"],
    "score": [20.0, 30.0, 25.0, 5.0],
    "reference": [False, False, False, True],
})


def runs(agent: str, *fractions) -> list[dict]:
    return [{"agent": agent, "budget_fraction": f} for f in fractions]


def test_frontier_keeps_only_undominated_agents():
    records = (runs("fast-ok", 0.2, 0.4) + runs("slow-best", 0.9) + runs("slow-worse", 0.95)
               + runs("base", 0.001) + [{"agent": "slow-best", "budget_fraction": None}])
    table = time_utilisation(BOARD, records).set_index("agent")
    assert abs(table.loc["fast-ok", "budget_fraction"] - 0.3) < 1e-12
    assert table.loc["fast-ok", "n_runs"] == 2 and table.loc["slow-best", "n_runs"] == 1
    frontier = sorted(table.index[table.pareto])
    assert frontier == ["fast-ok", "slow-best"]  # slow-worse: more time, lower score; base: reference row


def test_plot_written_from_leaderboard_and_run_files(tmp_path: Path):
    board_csv = tmp_path / "leaderboard.csv"
    BOARD.to_csv(board_csv, index=False)
    files = []
    for i, record in enumerate(runs("fast-ok", 0.3) + runs("slow-best", 0.9) + runs("base", 0.0)):
        path = tmp_path / f"run{i}.json"
        path.write_text(json.dumps(record))
        files.append(path)
    out = tmp_path / "plots" / "time_utilisation.png"
    table = write_time_utilisation(board_csv, files + [tmp_path / "missing.json"], out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    assert list(table.agent) == ["base", "fast-ok", "slow-best"]

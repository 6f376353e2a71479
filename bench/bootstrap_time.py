"""What the leaderboard's bootstrap intervals cost: seconds for the bootstrap and the pairwise table on a synthetic
matrix of the published size, as a ratio to the plain leaderboard computation timed in the same run.

    .venv/bin/python bench/bootstrap_time.py [--samples 2000] [--agents 5] [--seeds 3] [--repeats 3]

The matrix: base + instruct + (agents - 2) agents x 4 models x 7 benchmarks x the seeds, each cell with per-item
results of the benchmark's published item count (AIME 30 ... GSM8K 1319; Arena-Hard pooled game scores, HealthBench
continuous rubric scores), one flagged cell per agent (resampled from the base row's items). Reading the samples
files is not timed (it depends on the disk, not on the method).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

ITEMS = {"aime2025": 30, "arenahardwriting": 250, "bfcl": 100, "gpqamain": 448, "gsm8k": 1319,
         "healthbench": 245, "humaneval": 164}
MODELS = ("qwen3-1.7b", "qwen3-4b", "smollm3-3b", "gemma-3-4b")


def synthetic(n_agents: int, n_seeds: int, rng: np.random.Generator):
    """(cells as load_cells returns them, per-item results keyed by cell)."""
    from posttrainbench.uncertainty import Items

    agents = ["base", "instruct"] + [f"agent-{i}" for i in range(1, n_agents - 1)]
    rows, items = [], {}
    for a, agent in enumerate(agents):
        for model in MODELS:
            for benchmark, n in ITEMS.items():
                for seed in range(1, n_seeds + 1):
                    p = min(0.95, 0.1 + 0.15 * a + 0.05 * rng.random())
                    ids = tuple(str(i) for i in range(n))
                    if benchmark == "arenahardwriting":  # two or more pooled game scores per item
                        den = rng.choice([2.0, 4.0, 6.0], size=n)
                        num = rng.binomial(den.astype(int), p).astype(float)
                    elif benchmark == "healthbench":
                        den, num = np.ones(n), np.clip(rng.normal(p, 0.3, n), -0.5, 1.0)
                    else:
                        den, num = np.ones(n), rng.binomial(1, p, n).astype(float)
                    cell = Items(ids, num, den)
                    items[(agent, model, benchmark, seed)] = cell
                    flagged = agent.startswith("agent") and model == MODELS[0] and benchmark == "gsm8k" and seed == 1
                    rows.append({"agent": agent, "model": model, "benchmark": benchmark, "seed": seed,
                                 "score": float(np.clip(cell.ratio, 0, 1)), "status": "ok", "flagged": flagged,
                                 "reasons": None, "judged": True, "audited": agent.startswith("agent")})
    return pd.DataFrame(rows), items


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--agents", type=int, default=5, help="rows in all, base and instruct included")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="timings are the best of this many runs")
    args = parser.parse_args()
    from posttrainbench.leaderboard import _fill_missing, build_leaderboard, choose_weights, effective_scores
    from posttrainbench.uncertainty import add_intervals, bootstrap_headlines, compare_agents

    cells, items = synthetic(args.agents, args.seeds, np.random.default_rng(0))
    n_items = sum(len(v.ids) for v in items.values())
    print(f"{cells.agent.nunique()} agents x {len(MODELS)} models x {len(ITEMS)} benchmarks x {args.seeds} seeds = "
          f"{len(cells)} cells, {n_items} item results; {args.samples} resamples")

    def plain():
        weights = choose_weights(cells, None)
        return weights, build_leaderboard(cells, weights)

    def with_intervals():
        weights, board = plain()
        table = _fill_missing(effective_scores(cells))
        boot = bootstrap_headlines(table, weights.values, items, n_samples=args.samples, seed=0)
        board = add_intervals(board, boot)
        board["source"] = "ours"
        return board, compare_agents(board, boot, seed=0)

    def best(fn):
        times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            result = fn()
            times.append(time.perf_counter() - started)
        return min(times), result

    plain_s, _ = best(plain)
    full_s, (board, comparisons) = best(with_intervals)
    print(f"plain leaderboard:                {plain_s:8.3f} s")
    print(f"leaderboard + bootstrap + pairs:  {full_s:8.3f} s   ({full_s / plain_s:.1f} x the plain computation)")
    print(board[["agent", "score", "score_ci_low", "score_ci_high", "ci_note"]].to_string(index=False))
    print(f"{int(comparisons.excludes_zero.sum())} of {len(comparisons)} pairs exclude 0")
    return 0


if __name__ == "__main__":
    sys.exit(main())

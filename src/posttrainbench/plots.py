"""Leaderboard figures: a bar chart with per-seed error bars, an agent x benchmark heatmap, and the
time utilisation (fraction of the budget used vs score, with the Pareto frontier)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on cluster nodes
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

AGENT_COLOR = "#3b6fb6"
REFERENCE_COLOR = "#9a9a9a"


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=150, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)


def plot_leaderboard(board: pd.DataFrame, path: Path, weights_source: str = "") -> None:
    """Horizontal bars, best on top; reference rows grey and hatched; error bars = std over seeds."""
    board = board.sort_values("score")
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(board) + 1.6))
    colors = [REFERENCE_COLOR if ref else AGENT_COLOR for ref in board.reference]
    errors = board.score_std.fillna(0).to_numpy()
    bars = ax.barh(board.agent, board.score, xerr=errors, color=colors, capsize=3,
                   error_kw={"elinewidth": 1, "ecolor": "#333333"})
    for bar, ref in zip(bars, board.reference):
        if ref:
            bar.set_hatch("//")
    for y, (score, err) in enumerate(zip(board.score, errors)):
        ax.text(score + err + 0.5, y, f"{score:.1f}", va="center", fontsize=9)
    ax.set_xlabel("Weighted average score (0-100)")
    ax.set_xlim(0, max(10.0, float((board.score + errors).max()) * 1.15))
    title = "PostTrainBench leaderboard"
    if weights_source:
        title += f"  (weights: {weights_source})"
    ax.set_title(title, fontsize=11)
    handles = [plt.Rectangle((0, 0), 1, 1, color=AGENT_COLOR),
               plt.Rectangle((0, 0), 1, 1, facecolor=REFERENCE_COLOR, hatch="//")]
    ax.legend(handles, ["agent", "reference row"], loc="lower right", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    _save(fig, path)


def plot_heatmap(board: pd.DataFrame, benchmarks: list[str], path: Path) -> None:
    """Agents (rows, best on top) x benchmarks (columns), score 0-100 written in each cell."""
    board = board.sort_values("score", ascending=False)
    values = board[benchmarks].to_numpy(dtype=float)
    fig, ax = plt.subplots(figsize=(1.1 * len(benchmarks) + 3, 0.5 * len(board) + 1.6))
    image = ax.imshow(values, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(benchmarks)), benchmarks, rotation=30, ha="right")
    labels = [f"{a} (ref)" if ref else a for a, ref in zip(board.agent, board.reference)]
    ax.set_yticks(range(len(board)), labels)
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            v = values[i, j]
            if np.isfinite(v):
                ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=8,
                        color="white" if v < 55 else "black")
    fig.colorbar(image, ax=ax, label="score (0-100)")
    ax.set_title("Score per benchmark (mean over base models and seeds)", fontsize=11)
    _save(fig, path)


def write_plots(board: pd.DataFrame, benchmarks: list[str], out_dir: Path, weights_source: str = "") -> list[Path]:
    out_dir = Path(out_dir)
    paths = [out_dir / "leaderboard.png", out_dir / "heatmap.png"]
    plot_leaderboard(board, paths[0], weights_source)
    plot_heatmap(board, benchmarks, paths[1])
    return paths


# ---- time utilisation ------------------------------------------------------------------------------------------


def time_utilisation(board: pd.DataFrame, run_records: list[dict]) -> pd.DataFrame:
    """Per agent: mean fraction of the time budget its runs used (``run.json`` ``budget_fraction``),
    its headline score, and whether it is on the Pareto frontier (no other agent scores at least
    as high with no more of the budget, and strictly better in one of the two). The reference rows
    (base, instruct) are plotted but take no part in the frontier."""
    runs = pd.DataFrame([{"agent": r["agent"], "budget_fraction": r.get("budget_fraction")} for r in run_records])
    if runs.empty:
        return pd.DataFrame(columns=["agent", "budget_fraction", "n_runs", "score", "reference", "pareto"])
    runs = runs.dropna(subset=["budget_fraction"])
    used = runs.groupby("agent").budget_fraction.agg(["mean", "size"]).rename(
        columns={"mean": "budget_fraction", "size": "n_runs"}).reset_index()
    table = used.merge(board[["agent", "score", "reference"]], on="agent", how="inner")
    fractions, scores = table.budget_fraction.to_numpy(), table.score.to_numpy()
    agents = [i for i in range(len(table)) if not table.reference.iloc[i]]  # reference rows are not contenders
    table["pareto"] = [
        i in agents and not any((fractions[j] <= fractions[i] and scores[j] >= scores[i])
                                and (fractions[j] < fractions[i] or scores[j] > scores[i]) for j in agents)
        for i in range(len(table))
    ]
    return table.sort_values("budget_fraction").reset_index(drop=True)


def plot_time_utilisation(table: pd.DataFrame, path: Path) -> None:
    """Fraction of the time budget used vs headline score, one point per agent, Pareto frontier drawn."""
    fig, ax = plt.subplots(figsize=(7, 4.8))
    for row in table.itertuples():
        color = REFERENCE_COLOR if row.reference else AGENT_COLOR
        ax.scatter(100 * row.budget_fraction, row.score, color=color, s=40, zorder=3,
                   edgecolor="black" if row.pareto else "none")
        ax.annotate(row.agent, (100 * row.budget_fraction, row.score), textcoords="offset points",
                    xytext=(5, 4), fontsize=8)
    x_max = max(105.0, float(100 * table.budget_fraction.max()) + 5) if len(table) else 105.0
    frontier = table[table.pareto].sort_values("budget_fraction")
    if len(frontier):
        # A step line: each frontier agent's score holds until a later agent improves on it.
        xs = list(100 * frontier.budget_fraction) + [x_max]
        ys = list(frontier.score) + [frontier.score.iloc[-1]]
        ax.step(xs, ys, where="post", color="#c0392b", lw=1.2, label="Pareto frontier", zorder=2)
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel("Time budget used (% of wall-clock budget, mean over runs)")
    ax.set_ylabel("Weighted average score (0-100)")
    ax.set_xlim(0, x_max)
    top = float(table.score.max()) if len(table) else 0.0
    ax.set_ylim(0, max(10.0, top * 1.15))
    ax.set_title("Time utilisation vs score", fontsize=11)
    ax.grid(alpha=0.3)
    _save(fig, path)


def write_time_utilisation(leaderboard_csv: Path, run_files: list[Path], path: Path) -> pd.DataFrame:
    """The time-utilisation plot from a leaderboard CSV and the cells' run.json files (missing ones skipped)."""
    import json

    board = pd.read_csv(leaderboard_csv)
    records = [json.loads(Path(p).read_text()) for p in run_files if Path(p).is_file()]
    table = time_utilisation(board, records)
    plot_time_utilisation(table, Path(path))
    return table

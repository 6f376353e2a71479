"""Leaderboard figures: a bar chart with per-seed error bars, and an agent x benchmark heatmap."""

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
    ax.legend(handles, ["agent", "reference (base / instruct)"], loc="lower right", fontsize=8)
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

"""Leaderboard figures: a bar chart with 95% bootstrap intervals (per-seed spread where there is none), a forest
plot of the pairwise differences, an agent x benchmark heatmap, and the time utilisation (fraction of the budget
used vs score, with the Pareto frontier)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on cluster nodes
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

AGENT_COLOR = "#3b6fb6"
REFERENCE_COLOR = "#9a9a9a"
PUBLISHED_COLOR = "#e0a040"
SIGNIFICANT_COLOR = "#c0392b"


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=150, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)


def _error_bars(board: pd.DataFrame) -> tuple[np.ndarray, bool]:
    """(2 x n) lower/upper bar lengths: the 95% interval where the board has one, else the std over seeds."""
    score = board.score.to_numpy(dtype=float)
    std = board.score_std.to_numpy(dtype=float) if "score_std" in board else np.full(len(board), np.nan)
    if "score_ci_low" in board:
        low = board.score_ci_low.to_numpy(dtype=float)
        high = board.score_ci_high.to_numpy(dtype=float)
    else:
        low = high = np.full(len(board), np.nan)
    has_ci = np.isfinite(low) & np.isfinite(high)
    lower = np.where(has_ci, score - low, np.nan_to_num(std))
    upper = np.where(has_ci, high - score, np.nan_to_num(std))
    return np.clip(np.vstack([lower, upper]), 0, None), bool(has_ci.any())


def plot_leaderboard(board: pd.DataFrame, path: Path, weights_source: str = "") -> None:
    """Horizontal bars, best on top; reference rows grey and hatched, published rows orange and dotted; error bars
    = 95% bootstrap interval (std over seeds for a row without one)."""
    board = board.sort_values("score")
    published = (board.source == "published").to_numpy() if "source" in board else np.zeros(len(board), bool)
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(board) + 1.6))
    colors = [PUBLISHED_COLOR if pub else REFERENCE_COLOR if ref else AGENT_COLOR
              for ref, pub in zip(board.reference, published)]
    errors, has_ci = _error_bars(board)
    labels = [f"{a} (published)" if pub and not str(a).endswith("(published)") else a
              for a, pub in zip(board.agent, published)]
    bars = ax.barh(labels, board.score, xerr=errors, color=colors, capsize=3,
                   error_kw={"elinewidth": 1, "ecolor": "#333333"})
    for bar, ref, pub in zip(bars, board.reference, published):
        if pub:
            bar.set_hatch("..")
        elif ref:
            bar.set_hatch("//")
    for y, (score, err) in enumerate(zip(board.score, errors[1])):
        ax.text(score + err + 0.5, y, f"{score:.1f}", va="center", fontsize=9)
    ax.set_xlabel("Weighted average score (0-100)" + ("; bars: 95% bootstrap interval" if has_ci else
                                                       "; bars: std over seeds"))
    ax.set_xlim(0, max(10.0, float((board.score + errors[1]).max()) * 1.15))
    title = "PostTrainBench leaderboard"
    if weights_source:
        title += f"  (weights: {weights_source})"
    ax.set_title(title, fontsize=11)
    handles = [plt.Rectangle((0, 0), 1, 1, color=AGENT_COLOR),
               plt.Rectangle((0, 0), 1, 1, facecolor=REFERENCE_COLOR, hatch="//")]
    names = ["agent", "reference row"]
    if published.any():
        handles.append(plt.Rectangle((0, 0), 1, 1, facecolor=PUBLISHED_COLOR, hatch=".."))
        names.append("published")
    ax.legend(handles, names, loc="lower right", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    _save(fig, path)


def plot_comparisons(comparisons: pd.DataFrame, path: Path) -> None:
    """Forest plot: one row per pair (largest difference on top), the difference of headlines with its 95%
    interval; red where the interval excludes 0, grey where it does not, hollow where the pair is unpaired."""
    table = comparisons.sort_values("diff").reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(7.5, 0.32 * max(len(table), 1) + 1.6))
    if table.empty:
        ax.text(0.5, 0.5, "fewer than two agents: nothing to compare", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_axis_off()
        _save(fig, path)
        return
    for y, row in enumerate(table.itertuples()):
        color = SIGNIFICANT_COLOR if row.excludes_zero else REFERENCE_COLOR
        if np.isfinite(row.ci_low) and np.isfinite(row.ci_high):
            ax.hlines(y, row.ci_low, row.ci_high, color=color, lw=2)
        hollow = str(row.pairing).startswith("unpaired")
        ax.plot(row.diff, y, "o", color=color, markerfacecolor="white" if hollow else color, markersize=6)
    ax.axvline(0, color="#333333", lw=1)
    ax.set_yticks(range(len(table)), [f"{a} - {b}" for a, b in zip(table.agent_a, table.agent_b)], fontsize=8)
    ax.set_xlabel("Difference of headline scores (points, 0-100 scale) with 95% interval")
    ax.set_title("Pairwise comparisons (red: interval excludes 0; hollow: unpaired)", fontsize=11)
    ax.grid(axis="x", alpha=0.3)
    _save(fig, path)


def plot_heatmap(board: pd.DataFrame, benchmarks: list[str], path: Path) -> None:
    """Agents (rows, best on top) x benchmarks (columns), score 0-100 written in each cell."""
    board = board.sort_values("score", ascending=False)
    values = board[benchmarks].to_numpy(dtype=float)
    fig, ax = plt.subplots(figsize=(1.1 * len(benchmarks) + 3, 0.5 * len(board) + 1.6))
    image = ax.imshow(values, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(benchmarks)), benchmarks, rotation=30, ha="right")
    published = board.source == "published" if "source" in board else pd.Series(False, index=board.index)
    labels = [f"{a} (ref)" if ref else f"{a} (published)" if pub and not str(a).endswith("(published)") else a
              for a, ref, pub in zip(board.agent, board.reference, published)]
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


def write_plots(board: pd.DataFrame, benchmarks: list[str], out_dir: Path, weights_source: str = "",
                comparisons: pd.DataFrame | None = None) -> list[Path]:
    out_dir = Path(out_dir)
    paths = [out_dir / "leaderboard.png", out_dir / "heatmap.png"]
    plot_leaderboard(board, paths[0], weights_source)
    plot_heatmap(board, benchmarks, paths[1])
    if comparisons is not None:
        paths.append(out_dir / "comparisons.png")
        plot_comparisons(comparisons, paths[2])
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

"""``ptb``: command-line tools over a results tree laid out as in the design notes."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .io import atomic_write_json, atomic_write_text


def _weights_from_config(path: Path | None) -> dict | None:
    if path is None:
        return None
    from .config import load_config

    return load_config(path)["scoring"]["weights"]


def _usable_verdicts(verdict_files: list[Path]) -> list[Path]:
    """The verdict files the flags report can read; the others leave their cells unjudged (logged by the
    leaderboard), they never stop the report."""
    from .judge.report import flag_rows
    from .leaderboard import verdict_problem

    usable = []
    for path in verdict_files:
        if not Path(path).is_file() or verdict_problem(Path(path))[1] is not None:
            continue
        try:
            flag_rows([Path(path)])
        except Exception as exc:  # noqa: BLE001 - a malformed verdict is left out of the report, named
            logging.getLogger(__name__).warning("%s: left out of the flags report (%s: %s)",
                                                path, type(exc).__name__, str(exc)[:200])
            continue
        usable.append(Path(path))
    return usable


def write_leaderboard(results_dir: Path, out_csv: Path, plots_dir: Path | None,
                      config_weights: dict | None, cells_csv: Path | None = None,
                      eval_files: list[Path] | None = None, flags_csv: Path | None = None,
                      verdict_files: list[Path] | None = None) -> None:
    """Build the leaderboard CSV (+ per-cell CSV, weights JSON, plots, flags report) from ``results_dir``."""
    from .leaderboard import leaderboard_from_results

    # The workflow names the verdicts it asked for: any of them missing leaves its cell unjudged.
    board, cells, weights = leaderboard_from_results(results_dir, config_weights, eval_files,
                                                     judged_tree=True if verdict_files else None)
    atomic_write_text(out_csv, board.to_csv(index=False, float_format="%.4f"))
    atomic_write_json(out_csv.with_name(out_csv.stem + ".weights.json"),
                      {"source": weights.source, "weights": weights.values})
    if cells_csv is not None:
        atomic_write_text(cells_csv, cells.to_csv(index=False, float_format="%.6f"))
    if flags_csv is not None:
        from .judge.report import flags_csv_text

        if verdict_files is None:
            verdict_files = sorted(Path(results_dir, "judge").rglob("seed*.json"))
        atomic_write_text(flags_csv, flags_csv_text(_usable_verdicts(verdict_files)))
    if plots_dir is not None:
        from .plots import write_plots

        write_plots(board, sorted(weights.values), plots_dir, weights.source)
    width = max(len(a) for a in board.agent)
    print(f"weights from {weights.source}: " + ", ".join(f"{b}={w:.4f}" for b, w in weights.values.items()))
    for row in board.itertuples():
        spread = "" if row.score_std != row.score_std else f" ± {row.score_std:.1f}"
        note = " (reference)" if row.reference else ""
        print(f"{row.agent:<{width}}  {row.score:6.1f}{spread}  cells={row.n_cells} "
              f"flagged={row.n_flagged} failed={row.n_failed} unjudged={row.n_unjudged}{note}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ptb", description="PostTrainBench pipeline tools")
    sub = parser.add_subparsers(dest="command", required=True)

    lb = sub.add_parser("leaderboard", help="build the weighted leaderboard from a results tree")
    lb.add_argument("results_dir", type=Path, help="directory holding evals/ (and judge/)")
    lb.add_argument("--out", type=Path, required=True, help="leaderboard CSV to write")
    lb.add_argument("--plots", type=Path, default=None, help="directory for leaderboard.png and heatmap.png")
    lb.add_argument("--cells", type=Path, default=None, help="also write the per-cell table here")
    lb.add_argument("--flags", type=Path, default=None,
                    help="also write the flags report (each flag with its evidence) here")
    lb.add_argument("--config", type=Path, default=None,
                    help="workflow config whose scoring.weights apply when reference rows are missing")

    check = sub.add_parser("check-config", help="validate a workflow config and print its cell count")
    check.add_argument("config", type=Path)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from .config import ConfigError
    from .leaderboard import LeaderboardError

    try:
        if args.command == "leaderboard":
            write_leaderboard(args.results_dir, args.out, args.plots, _weights_from_config(args.config), args.cells,
                              flags_csv=args.flags)
        elif args.command == "check-config":
            from .config import iter_cells, load_config

            cells = list(iter_cells(load_config(args.config)))
            print(f"{args.config}: valid, {len(cells)} cells")
    except (ConfigError, LeaderboardError) as exc:
        print(f"ptb: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Aggregate eval JSONs and judge verdicts into the weighted leaderboard (the published rule).

Per cell, the effective score is the eval score, or the base model's score for the same model and
benchmark when the cell failed, was flagged by the judge, is missing, or (in a results tree that has
verdicts) has no readable verdict. Per benchmark b, each
row's score is averaged over base models (after averaging seeds); weights are
w_b = 1 / (instruct_b - base_b), normalised, when both reference rows exist, else from config.
The headline is 100 * sum_b w_b * score_b; its spread is the std of per-seed headlines, and its 95% interval a
hierarchical bootstrap over seeds and items (:mod:`posttrainbench.uncertainty`, docs/leaderboard.md).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import pandas as pd

from .accounting import add_gpu_hours
from .cells import REFERENCE_AGENTS

log = logging.getLogger(__name__)

CELL_KEYS = ["agent", "model", "benchmark", "seed"]


class LeaderboardError(RuntimeError):
    pass


@dataclass
class Weights:
    values: dict[str, float]
    source: str  # "reference rows", "config", or "equal"


def _cell_identity(root: Path, kind: str, path: Path) -> dict | None:
    """The cell a result file belongs to, from its path; None (logged) when not laid out as a cell."""
    parts = path.relative_to(root / kind).with_suffix("").parts
    # One spelling per seed ("seed1", never "seed01"): two files must not name one cell.
    if len(parts) != 4 or not re.fullmatch(r"seed(?:0|[1-9][0-9]{0,8})", parts[3]) or path.suffix != ".json":
        log.warning("ignoring %s: not laid out as %s/AGENT/MODEL/BENCHMARK/seedN.json", path, kind)
        return None
    return {"agent": parts[0], "model": parts[1], "benchmark": parts[2], "seed": int(parts[3][4:])}


def _read_evals(root: Path) -> list[dict]:
    records = []
    for path in sorted((root / "evals").rglob("*.json")):
        identity = _cell_identity(root, "evals", path)
        if identity is None:
            continue
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError, RecursionError) as exc:
            raise LeaderboardError(f"{path}: unreadable JSON ({type(exc).__name__}: {str(exc)[:200]})") from None
        if not isinstance(record, dict):
            raise LeaderboardError(f"{path}: not a JSON object")
        # The path is the cell's identity; fields in the file must not contradict it.
        for key, value in identity.items():
            if key in record and str(record[key]) != str(value):
                raise LeaderboardError(f"{path}: field {key}={record[key]!r} contradicts its path ({value!r})")
        records.append({**record, **identity, "_path": str(path)})
    check_protocols(records)
    return records


def _cells_named(records: list[dict], limit: int = 3) -> str:
    names = [f"{r['agent']}/{r['model']}/{r['benchmark']}/seed{r['seed']}" for r in records]
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_protocols(records: list[dict]) -> None:
    """Refuse to put cells evaluated under different protocols, or different settings of one protocol, into one
    table (:class:`LeaderboardError` naming cells of each side). Per benchmark every evaluated cell must share the
    protocol id and settings (limits and max-token overrides included); per model and benchmark the chat template.
    The few-shot reference row's plain prompting and cells that never got evaluated (no settings) are exempt."""
    by_protocol: dict[str, list[dict]] = {}
    for record in records:
        by_protocol.setdefault(str(record.get("protocol") or "unversioned"), []).append(record)
    if len(by_protocol) > 1:
        sides = "; ".join(f"{pid}: {_cells_named(cells)}" for pid, cells in sorted(by_protocol.items()))
        raise LeaderboardError(f"cells were evaluated under different protocols ({sides}); evaluate them under one "
                               "protocol or build separate tables")
    from .protocol import settings_hash

    shared: dict[str, dict[str, list[dict]]] = {}
    templates: dict[tuple[str, str], dict[str, list[dict]]] = {}
    for record in records:
        settings = record.get("settings")
        if not isinstance(settings, dict):
            continue
        common = {k: v for k, v in settings.items() if k not in ("prompting", "template_sha256")}
        shared.setdefault(record["benchmark"], {}).setdefault(settings_hash(common), []).append(record)
        if "prompting" not in settings:
            key = (record["model"], record["benchmark"])
            templates.setdefault(key, {}).setdefault(str(settings.get("template_sha256")), []).append(record)
    for benchmark, groups in sorted(shared.items()):
        if len(groups) > 1:
            sides = "; ".join(_cells_named(cells) for cells in groups.values())
            raise LeaderboardError(f"{benchmark}: cells were evaluated with different settings of the protocol "
                                   f"(item limits, max tokens or versions: {sides})")
    for (model, benchmark), groups in sorted(templates.items()):
        if len(groups) > 1:
            sides = "; ".join(_cells_named(cells) for cells in groups.values())
            raise LeaderboardError(f"{model}/{benchmark}: cells were evaluated with different chat templates ({sides})")


def verdict_problem(path: Path, identity: dict | None = None) -> tuple[dict | None, str | None]:
    """Read one verdict: ``(verdict, None)``, or ``(None, why)`` when it cannot be trusted as one
    (unreadable, not an object, ``flagged`` not a boolean, ``reasons`` not a list of strings, or a
    field contradicting the cell its path names). Never raises."""
    try:
        verdict = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        return None, f"unreadable ({type(exc).__name__}: {str(exc)[:200]})"
    if not isinstance(verdict, dict):
        return None, "not a JSON object"
    if not isinstance(verdict.get("flagged"), bool):
        return None, f"'flagged' is {type(verdict.get('flagged')).__name__}, not a boolean"
    reasons = verdict.get("reasons")
    if reasons is not None and not (isinstance(reasons, list) and all(isinstance(r, str) for r in reasons)):
        return None, "'reasons' is not a list of strings"
    for key, value in (identity or {}).items():
        if key in verdict and str(verdict[key]) != str(value):
            return None, f"field {key}={str(verdict[key])[:80]!r} contradicts its path ({value!r})"
    return verdict, None


def _read_verdicts(root: Path) -> tuple[list[dict], int]:
    """The readable verdicts under ``root/judge`` and how many cell verdict files there are in all
    (readable or not). A verdict that cannot be trusted leaves its cell unjudged, with a warning."""
    records, present = [], 0
    for path in sorted((root / "judge").rglob("*.json")):
        identity = _cell_identity(root, "judge", path)
        if identity is None:
            continue
        present += 1
        verdict, problem = verdict_problem(path, identity)
        if problem:
            log.warning("%s: %s; the cell counts as unjudged (scored as the base model)", path, problem)
            continue
        records.append({"flagged": verdict["flagged"], "reasons": verdict.get("reasons"), **identity})
    return records, present


def load_cells(results_dir: str | Path, eval_files: list[Path] | None = None, *,
               judged_tree: bool | None = None) -> pd.DataFrame:
    """One row per evaluated cell, with its judge verdict merged in (``judged`` says if there is one).

    ``eval_files`` restricts the table to those cells (the workflow passes its own matrix, so
    results of cells no longer configured do not leak into the leaderboard).

    The ``audited`` column says whether a post-training cell needs a verdict to keep its score: true in a tree
    that has verdict files (or when ``judged_tree`` says the caller expects them), where a cell
    without a usable verdict is scored as the base model; false in a tree without any verdict
    (published per-cell figures), whose scores are taken as given (logged)."""
    root = Path(results_dir)
    evals = _read_evals(root)
    if eval_files is not None:
        wanted = {Path(p).resolve() for p in eval_files}
        evals = [r for r in evals if Path(r["_path"]).resolve() in wanted]
    if not evals:
        raise LeaderboardError(f"no eval JSON files under {root / 'evals'}")
    frame = pd.DataFrame(evals)
    frame["status"] = frame.get("status", pd.Series("ok", index=frame.index)).fillna("ok")
    frame["score"] = pd.to_numeric(frame.get("score"), errors="coerce")
    bad = frame[(frame.status == "ok") & ~frame.score.between(0, 1)]
    if not bad.empty:
        raise LeaderboardError(f"{bad.iloc[0]['_path']}: score {bad.iloc[0]['score']!r} is not in [0, 1]")
    verdicts, present = _read_verdicts(root)
    if verdicts:
        judge = pd.DataFrame(verdicts)[CELL_KEYS + ["flagged", "reasons"]]
        judge["judged"] = True
        frame = frame.merge(judge, on=CELL_KEYS, how="left")
    else:
        frame["flagged"], frame["reasons"], frame["judged"] = False, None, False
    frame["judged"] = frame["judged"].astype("boolean").fillna(False).astype(bool)
    frame["flagged"] = frame["flagged"].astype("boolean").fillna(False).astype(bool)
    audited = bool(present) if judged_tree is None else judged_tree
    frame["audited"] = audited & ~frame.agent.isin(REFERENCE_AGENTS)
    unjudged = frame[~frame.judged & ~frame.agent.isin(REFERENCE_AGENTS)]
    if not unjudged.empty and audited:
        log.warning("%d post-training cell(s) have no usable judge verdict; they are scored as the base model",
                    len(unjudged))
    elif not unjudged.empty:
        log.warning("no judge verdicts under %s: the %d post-training cell(s) are scored as given, unaudited",
                    root / "judge", len(unjudged))
    return frame[CELL_KEYS + ["score", "status", "flagged", "reasons", "judged", "audited"]].copy()


def base_scores(cells: pd.DataFrame) -> pd.Series:
    """The base model's score per (model, benchmark), mean over its successful seeds."""
    base = cells[(cells.agent == "base") & (cells.status == "ok")]
    return base.groupby(["model", "benchmark"])["score"].mean()


def effective_scores(cells: pd.DataFrame) -> pd.DataFrame:
    """Add ``effective`` (the score that counts) and ``replaced`` (why the base score was used)."""
    cells = cells.copy()
    fallback = base_scores(cells)
    keys = list(zip(cells.model, cells.benchmark))
    base_for_cell = pd.Series([fallback.get(k, float("nan")) for k in keys], index=cells.index)
    failed = cells.status != "ok"
    flagged = cells.flagged & ~cells.agent.isin(REFERENCE_AGENTS)
    # A verdict is missing or unusable where one was due (a judge that crashed on the submission).
    audited = cells["audited"] if "audited" in cells else pd.Series(False, index=cells.index)
    unjudged = audited.astype(bool) & ~cells.judged & ~failed
    cells["replaced"] = None
    cells.loc[failed, "replaced"] = "failed"
    cells.loc[unjudged, "replaced"] = "unjudged"
    cells.loc[flagged, "replaced"] = "flagged"
    use_base = failed | flagged | unjudged
    cells["effective"] = cells.score.where(~use_base, base_for_cell)
    missing_base = use_base & base_for_cell.isna()
    if missing_base.any():
        row = cells[missing_base].iloc[0]
        log.warning("no base score for %s/%s: %d replaced cell(s) count as 0",
                    row.model, row.benchmark, int(missing_base.sum()))
        cells.loc[missing_base, "effective"] = 0.0
    return cells


def reference_weights(cells: pd.DataFrame, benchmarks: list[str]) -> dict[str, float] | None:
    """w_b = 1 / (instruct_b - base_b) normalised, base models averaged; None if a row is missing."""
    ok = cells[cells.status == "ok"]
    per_model = ok.groupby(["agent", "model", "benchmark"])["score"].mean()
    diffs = {}
    for benchmark in benchmarks:
        try:
            base = per_model.loc["base"].xs(benchmark, level="benchmark")
            instruct = per_model.loc["instruct"].xs(benchmark, level="benchmark")
        except KeyError:
            return None
        models = base.index.intersection(instruct.index)
        if models.empty:
            return None
        gap = instruct[models].mean() - base[models].mean()
        if gap <= 0:
            raise LeaderboardError(
                f"benchmark {benchmark}: instruct ({instruct[models].mean():.4f}) does not beat base "
                f"({base[models].mean():.4f}); the weight 1/(instruct-base) is undefined"
            )
        diffs[benchmark] = 1.0 / gap
    total = sum(diffs.values())
    return {b: v / total for b, v in diffs.items()}


def choose_weights(cells: pd.DataFrame, config_weights: Mapping[str, float] | None) -> Weights:
    benchmarks = sorted(cells.benchmark.unique())
    computed = reference_weights(cells, benchmarks)
    if computed is not None:
        return Weights(computed, "reference rows")
    if config_weights:
        missing = [b for b in benchmarks if b not in config_weights]
        if missing:
            raise LeaderboardError(f"no weight for benchmark(s) {', '.join(missing)} in scoring.weights")
        total = sum(config_weights[b] for b in benchmarks)
        return Weights({b: config_weights[b] / total for b in benchmarks}, "config")
    log.warning("no instruct reference row and no configured weights: benchmarks weigh equally")
    return Weights({b: 1.0 / len(benchmarks) for b in benchmarks}, "equal")


def _fill_missing(cells: pd.DataFrame) -> pd.DataFrame:
    """Each agent/seed is scored on every (model, benchmark) pair of the sweep; pairs it lacks take
    the base score and are counted as missing."""
    pairs = cells[["model", "benchmark"]].drop_duplicates()
    fallback = base_scores(cells)
    extra = []
    for (agent, seed), group in cells.groupby(["agent", "seed"]):
        have = set(zip(group.model, group.benchmark))
        for model, benchmark in pairs.itertuples(index=False):
            if (model, benchmark) not in have:
                extra.append({"agent": agent, "model": model, "benchmark": benchmark, "seed": seed,
                              "score": float("nan"), "status": "missing", "flagged": False,
                              "reasons": None, "judged": False, "audited": False, "replaced": "missing",
                              "effective": fallback.get((model, benchmark), 0.0)})
    return pd.concat([cells, pd.DataFrame(extra)], ignore_index=True) if extra else cells


def build_leaderboard(cells: pd.DataFrame, weights: Weights) -> pd.DataFrame:
    """One row per agent: headline score (0-100), per-seed spread, counts, per-benchmark scores."""
    cells = _fill_missing(effective_scores(cells))
    benchmarks = sorted(weights.values)
    w = pd.Series(weights.values)[benchmarks]
    rows = []
    for agent, group in cells.groupby("agent"):
        per_bench = group.groupby(["benchmark", "model"])["effective"].mean().groupby("benchmark").mean()
        per_bench = per_bench.reindex(benchmarks)
        seed_scores = []
        for _, seed_group in group.groupby("seed"):
            seed_bench = seed_group.groupby(["benchmark", "model"])["effective"].mean().groupby("benchmark").mean()
            seed_scores.append(100 * float((w * seed_bench.reindex(benchmarks)).sum()))
        real = group[group.status != "missing"]
        rows.append({
            "agent": agent,
            "score": 100 * float((w * per_bench).sum()),
            "score_std": float(pd.Series(seed_scores).std(ddof=1)) if len(seed_scores) > 1 else float("nan"),
            "n_seeds": group.seed.nunique(),
            "n_cells": len(real),
            "n_flagged": int((real.replaced == "flagged").sum()),
            "n_failed": int((real.replaced == "failed").sum()),
            "n_unjudged": 0 if agent in REFERENCE_AGENTS else int((~real.judged).sum()),
            "n_missing": int((group.status == "missing").sum()),
            "reference": agent in REFERENCE_AGENTS,
            **{b: 100 * float(per_bench[b]) for b in benchmarks},
        })
    board = pd.DataFrame(rows).sort_values("score", ascending=False, kind="stable").reset_index(drop=True)
    return board


def leaderboard_from_results(
    results_dir: str | Path,
    config_weights: Mapping[str, float] | None = None,
    eval_files: list[Path] | None = None,
    judged_tree: bool | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, Weights]:
    """Load a results tree and return (leaderboard, per-cell table, weights); ``judged_tree``: see
    :func:`load_cells`."""
    cells = load_cells(results_dir, eval_files, judged_tree=judged_tree)
    weights = choose_weights(cells, config_weights)
    board = build_leaderboard(cells, weights)
    board = add_gpu_hours(board, cells, Path(results_dir))
    table = _fill_missing(effective_scores(cells))
    return board, table.sort_values(CELL_KEYS).reset_index(drop=True), weights


@dataclass
class ScoredResults:
    """The leaderboard with its uncertainty: rows (intervals and ``source`` included), the per-cell table, the
    weights, and the pairwise comparisons of every two rows."""

    board: pd.DataFrame
    cells: pd.DataFrame
    weights: Weights
    comparisons: pd.DataFrame


def leaderboard_with_uncertainty(
    results_dir: str | Path,
    config_weights: Mapping[str, float] | None = None,
    eval_files: list[Path] | None = None,
    judged_tree: bool | None = None,
    *,
    bootstrap_samples: int = 2000,
    bootstrap_seed: int = 0,
    published_dir: str | Path | None = None,
    model_names: Mapping[str, str] | None = None,
    published_seeds: int = 3,
) -> ScoredResults:
    """:func:`leaderboard_from_results` plus a hierarchical bootstrap interval per agent (``bootstrap_samples``
    resamples from ``bootstrap_seed``; 0 turns it off), rows from published per-agent tables in ``published_dir``
    scored with the same weights, and the pairwise comparisons (:mod:`posttrainbench.uncertainty`)."""
    from . import uncertainty as unc

    board, table, weights = leaderboard_from_results(results_dir, config_weights, eval_files, judged_tree)
    boot = None
    if bootstrap_samples:
        items = unc.load_items(results_dir, table)
        boot = unc.bootstrap_headlines(table, weights.values, items, n_samples=bootstrap_samples,
                                       seed=bootstrap_seed)
    board = unc.add_intervals(board, boot)
    published = None
    if published_dir is not None:
        published = unc.read_published(published_dir, weights.values, our_models=sorted(table.model.unique()),
                                       model_names=model_names, seeds=published_seeds, taken=set(board.agent))
        board = unc.merge_published(board, published)
    else:
        board["source"] = "ours"
    comparisons = unc.compare_agents(board, boot, published, seed=bootstrap_seed)
    return ScoredResults(board, table, weights, comparisons)

"""Uncertainty of the leaderboard: a hierarchical bootstrap interval for each agent's headline score, paired
comparisons between agents, and rows from published per-agent tables (docs/leaderboard.md).

The bootstrap repeats the scoring rule on resampled data: per resample, an agent's seeds are drawn with
replacement, then the items of every cell of each drawn seed are drawn with replacement, and the headline is
recomputed with the leaderboard's weights. A cell whose score was replaced by the base model's (failed, flagged,
unjudged, missing) is resampled from the base row's items for the same model, benchmark and seed (another seed of
the base row when that one has none). Each resampled cell is centred on the cell's effective score, so the
bootstrap distribution sits around the leaderboard's own figure and the items only supply the spread.

Item draws are shared: every cell of one (model, benchmark, seed) uses the same drawn item indices, so two agents
evaluated on the same items are compared on the same resamples (a paired bootstrap). Seed draws are shared by
position in each agent's sorted seed list.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

DEFAULT_SAMPLES = 2000
DEFAULT_SEED = 0
LEVEL = 0.95
# Below this many items in a cell the percentile interval of a mean is known to undercover.
MIN_ITEMS = 30
PUBLISHED_PREFIX = "aggregated_avg_"
PUBLISHED_STD_PREFIX = "aggregated_std_"
PUBLISHED_SEEDS = 3


class UncertaintyError(RuntimeError):
    pass


@dataclass(frozen=True)
class Items:
    """One cell's per-item results as a ratio: the cell score is ``sum(num) / sum(den)`` over its items (``den``
    is 1 per scored item; Arena-Hard pools each item's game scores, so an item weighs by its number of scores;
    an item the grader left out has ``den`` 0)."""

    ids: tuple[str, ...]
    num: np.ndarray
    den: np.ndarray

    @property
    def n(self) -> int:
        return int((self.den > 0).sum())

    @property
    def ratio(self) -> float:
        total = float(self.den.sum())
        return float(self.num.sum()) / total if total > 0 else float("nan")


def items_from_samples(lines: list[dict]) -> Items:
    """Per-item results from a cell's samples file (``seedN.samples.jsonl``, written by evaluation; graded
    benchmarks carry the grader's ``grade``)."""
    ids, num, den = [], [], []
    for index, line in enumerate(lines):
        key = line.get("id")
        if key is None:
            key = line.get("doc_id", index)
        grade = line.get("grade")
        if isinstance(grade, dict) and "scores" in grade:
            scores = grade.get("scores") or []
            value, weight = float(sum(scores)), float(len(scores))
        elif isinstance(grade, dict):
            score = grade.get("score")
            value, weight = (float(score), 1.0) if score is not None else (0.0, 0.0)
        else:
            score = line.get("value")
            value, weight = (float(score), 1.0) if score is not None else (0.0, 0.0)
        ids.append(str(key))
        num.append(value)
        den.append(weight)
    return Items(tuple(ids), np.asarray(num, dtype=float), np.asarray(den, dtype=float))


def read_items(path: Path) -> Items | None:
    """A samples file's items, or None (logged) when it is absent, unreadable or empty."""
    if not path.is_file():
        return None
    try:
        lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        items = items_from_samples(lines)
    except (OSError, ValueError, TypeError, AttributeError, RecursionError) as exc:
        log.warning("%s: unreadable per-item results (%s); the cell's item noise is left out", path,
                    type(exc).__name__)
        return None
    return items if items.n else None


def load_items(results_dir: str | Path, table: pd.DataFrame) -> dict[tuple, Items]:
    """Per-item results of every evaluated cell of ``table`` that has them, keyed (agent, model, benchmark, seed)."""
    root = Path(results_dir) / "evals"
    found = {}
    for row in table[table.status == "ok"].itertuples():
        path = root / row.agent / row.model / row.benchmark / f"seed{row.seed}.samples.jsonl"
        items = read_items(path)
        if items is not None:
            key = (row.agent, row.model, row.benchmark, int(row.seed))
            found[key] = items
            if math.isfinite(row.score) and abs(items.ratio - row.score) > 1e-6:
                log.warning("%s: the items give %.6f, the eval JSON %.6f; the interval is centred on the latter",
                            path, items.ratio, row.score)
    return found


@dataclass
class Bootstrap:
    """Bootstrap draws of each agent's headline (0-100), with what went into them."""

    draws: dict[str, np.ndarray]
    seeds: dict[str, tuple[int, ...]]
    notes: dict[str, str]
    n_samples: int
    seed: int
    level: float = LEVEL

    def interval(self, agent: str) -> tuple[float, float]:
        draws = self.draws.get(agent)
        if draws is None or not np.isfinite(draws).all():
            return float("nan"), float("nan")
        tail = 100 * (1 - self.level) / 2
        low, high = np.percentile(draws, [tail, 100 - tail])
        return float(low), float(high)


def _source_items(row, items: Mapping[tuple, Items]) -> Items | None:
    """The items a cell is resampled from: its own, or the base row's when its score was replaced by the base's."""
    if pd.isna(row.replaced):
        return items.get((row.agent, row.model, row.benchmark, int(row.seed)))
    same = items.get(("base", row.model, row.benchmark, int(row.seed)))
    if same is not None:
        return same
    others = sorted(k for k in items if k[0] == "base" and k[1] == row.model and k[2] == row.benchmark)
    return items[others[0]] if others else None


def _resample_sums(values: np.ndarray, n_samples: int, rng: np.random.Generator) -> np.ndarray:
    """Column sums of ``values`` (items x columns) over ``n_samples`` resamples of its rows with replacement, one
    draw of rows shared by every column (so cells on the same items are paired). Items with the same row of values
    are pooled: the counts of n draws over K distinct rows are Multinomial(n, frequencies), the same distribution
    as drawing n row indices, and far cheaper when K is small (pass/fail items: at most 2^columns rows)."""
    n = len(values)
    patterns, inverse = np.unique(values, axis=0, return_inverse=True)
    if 4 * len(patterns) <= n:
        frequencies = np.bincount(inverse.ravel(), minlength=len(patterns)) / n
        return rng.multinomial(n, frequencies, size=n_samples).astype(float) @ patterns
    # int32 draws are twice as fast; the flat index (resample * n + item) needs 64 bits.
    picks = rng.integers(0, n, size=(n_samples, n), dtype=np.int32).astype(np.int64)
    picks += (np.arange(n_samples, dtype=np.int64) * n)[:, None]
    counts = np.bincount(picks.ravel(), minlength=n_samples * n).reshape(n_samples, n)
    return counts.astype(float) @ values


def bootstrap_headlines(table: pd.DataFrame, weights: Mapping[str, float], items: Mapping[tuple, Items], *,
                        n_samples: int = DEFAULT_SAMPLES, seed: int = DEFAULT_SEED, level: float = LEVEL,
                        min_items: int = MIN_ITEMS) -> Bootstrap:
    """Hierarchical bootstrap of every agent's headline over the per-cell table of the leaderboard (one row per
    agent x model x benchmark x seed with ``effective`` and ``replaced``, missing cells filled in), the
    normalised benchmark weights, and the cells' per-item results. Seeded: the same inputs give the same draws."""
    if n_samples < 1:
        raise UncertaintyError(f"scoring.bootstrap_samples must be a positive integer, not {n_samples!r}")
    benchmarks = sorted(weights)
    table = table[table.benchmark.isin(benchmarks)]
    pairs = sorted(set(zip(table.model, table.benchmark)))
    models_per_benchmark = Counter(b for _, b in pairs)
    pair_weight = {p: float(weights[p[1]]) / models_per_benchmark[p[1]] for p in pairs}
    agent_seeds = {a: tuple(sorted(int(s) for s in g.seed.unique())) for a, g in table.groupby("agent")}
    rng = np.random.default_rng(seed)
    k_max = max(len(s) for s in agent_seeds.values())
    # Seed draws first, from one stream: agents with as many seeds draw the same positions.
    uniforms = rng.random((n_samples, k_max))
    columns = np.arange(n_samples)

    # Per (agent, seed): the weighted sum over (model, benchmark) of resampled cell scores, one per bootstrap column.
    per_seed: dict[tuple[str, int], np.ndarray] = {}
    fixed: Counter = Counter()
    counted: Counter = Counter()
    smallest: dict[str, int] = {}
    for pair in pairs:
        rows = table[(table.model == pair[0]) & (table.benchmark == pair[1])]
        sources = [(row, _source_items(row, items)) for row in rows.itertuples()]
        universe: dict[str, int] = {}
        for _, src in sources:
            if src is not None:
                for item_id in src.ids:
                    universe.setdefault(item_id, len(universe))
        n = len(universe)
        for cell_seed in sorted({int(row.seed) for row, _ in sources}):
            group = [(row, src) for row, src in sources if int(row.seed) == cell_seed]
            with_items = [(row, src) for row, src in group if src is not None]
            values = {}
            if with_items:
                c = len(with_items)
                table_nd = np.zeros((n, 2 * c))  # per item: every cell's numerator, then every denominator
                for j, (_, src) in enumerate(with_items):
                    index = np.fromiter((universe[i] for i in src.ids), dtype=np.int64, count=len(src.ids))
                    np.add.at(table_nd[:, j], index, src.num)
                    np.add.at(table_nd[:, c + j], index, src.den)
                drawn = _resample_sums(table_nd, n_samples, rng)
                drawn_num, drawn_den = drawn[:, :c], drawn[:, c:]
                full = table_nd[:, :c].sum(0) / table_nd[:, c:].sum(0)
                with np.errstate(invalid="ignore", divide="ignore"):
                    ratio = np.where(drawn_den > 0, drawn_num / drawn_den, full)
                effective = np.array([row.effective for row, _ in with_items], dtype=float)
                resampled = np.clip(effective + ratio - full, 0.0, 1.0)
                for j, (row, src) in enumerate(with_items):
                    values[row.agent] = resampled[:, j]
                    smallest[row.agent] = min(smallest.get(row.agent, src.n), src.n)
            for row, src in group:
                counted[row.agent] += 1
                if src is None:
                    fixed[row.agent] += 1
                cell = values.get(row.agent, np.full(n_samples, float(row.effective)))
                key = (row.agent, cell_seed)
                per_seed[key] = per_seed.get(key, 0.0) + pair_weight[pair] * cell

    draws, notes = {}, {}
    for agent, seeds in agent_seeds.items():
        k = len(seeds)
        grid = np.stack([np.broadcast_to(per_seed.get((agent, s), 0.0), (n_samples,)) for s in seeds])
        picked = np.minimum((uniforms[:, :k] * k).astype(np.int64), k - 1)
        # A seed drawn twice takes a fresh item resample: position i reads column (b + i) mod B.
        total = sum(grid[picked[:, i], (columns + i) % n_samples] for i in range(k))
        draws[agent] = 100.0 * total / k
        notes[agent] = _note(k, fixed[agent], counted[agent], smallest.get(agent), min_items)
        if k == 1 and fixed[agent] == counted[agent]:
            draws[agent] = np.full(n_samples, float("nan"))
    return Bootstrap(draws, agent_seeds, notes, n_samples, seed, level)


def _note(n_seeds: int, fixed: int, cells: int, smallest: int | None, min_items: int) -> str:
    """What the interval does and does not cover, in a few words (empty when it covers seeds and items)."""
    if fixed == cells:
        return "1 seed and no per-item results: no interval" if n_seeds == 1 else "no per-item results: seeds only"
    notes = []
    if n_seeds == 1:
        notes.append("1 seed: items only")
    if fixed:
        notes.append(f"{fixed} of {cells} cells without per-item results (held fixed)")
    if smallest is not None and smallest < min_items:
        notes.append(f"fewer than {min_items} items per cell ({smallest}): interval unreliable")
    return "; ".join(notes)


def add_intervals(board: pd.DataFrame, boot: Bootstrap | None) -> pd.DataFrame:
    """``board`` with ``score_ci_low``, ``score_ci_high`` (placed after ``score_std``) and ``ci_note``."""
    board = board.copy()
    if boot is None:
        low = high = [float("nan")] * len(board)
        note = ["bootstrap off"] * len(board)
    else:
        bounds = [boot.interval(agent) for agent in board.agent]
        low, high = [b[0] for b in bounds], [b[1] for b in bounds]
        note = [boot.notes.get(agent, "") for agent in board.agent]
    at = list(board.columns).index("score_std") + 1 if "score_std" in board else len(board.columns)
    board.insert(at, "score_ci_low", low)
    board.insert(at + 1, "score_ci_high", high)
    board["ci_note"] = note
    return board


# ---- published per-agent tables --------------------------------------------------------------------------------


@dataclass
class Published:
    rows: pd.DataFrame  # leaderboard rows (source "published")
    sd: dict[str, float]  # agent -> standard error of its headline (normal approximation), NaN when unknown


def _read_table(path: Path) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise UncertaintyError(f"{path}: unreadable CSV ({type(exc).__name__}: {str(exc)[:200]})") from None
    if "model" not in frame.columns:
        raise UncertaintyError(f"{path}: no 'model' column (the published format: model, then one column per "
                               "benchmark with scores as fractions)")
    return frame.set_index(frame["model"].astype(str)).drop(columns="model")


def read_published(directory: str | Path, weights: Mapping[str, float], *, our_models: list[str] | None = None,
                   model_names: Mapping[str, str] | None = None, seeds: int = PUBLISHED_SEEDS,
                   level: float = LEVEL, taken: set[str] | None = None) -> Published:
    """Rows for every ``aggregated_avg_<Agent>.csv`` in ``directory`` (with ``aggregated_std_<Agent>.csv`` when
    present), scored with ``weights``: per benchmark the mean over the table's models, then the weighted sum x 100.
    ``model_names`` maps published model names to this table's model keys (for the note on differing model
    sets); ``seeds`` is how many seeds the published std is over (for the interval's normal approximation)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UncertaintyError(f"--published {directory}: not a directory")
    paths = sorted(directory.glob(f"{PUBLISHED_PREFIX}*.csv"))
    if not paths:
        raise UncertaintyError(f"--published {directory}: no {PUBLISHED_PREFIX}<Agent>.csv table in it")
    benchmarks = sorted(weights)
    z = float(_normal_quantile(0.5 + level / 2))
    rows, sds = [], {}
    for path in paths:
        agent = path.stem[len(PUBLISHED_PREFIX):]
        name = f"{agent} (published)" if taken and agent in taken else agent
        avg = _read_table(path)
        shared = [b for b in benchmarks if b in avg.columns]
        if not shared:
            raise UncertaintyError(f"{path}: none of the leaderboard's benchmarks ({', '.join(benchmarks)})")
        values = avg[shared].apply(pd.to_numeric, errors="coerce")
        if ((values < 0) | (values > 1)).any().any():
            raise UncertaintyError(f"{path}: scores must be fractions in [0, 1]")
        notes = []
        lacking = [b for b in benchmarks if b not in shared]
        extra = sorted(set(avg.columns) - set(benchmarks))
        if lacking:
            notes.append(f"benchmarks differ: lacks {', '.join(lacking)} (weights renormalised over the rest; "
                         "not comparable)")
        if extra:
            notes.append(f"benchmarks differ: {', '.join(extra)} not scored")
        total = sum(weights[b] for b in shared)
        w = {b: weights[b] / total for b in shared}
        models = [(model_names or {}).get(m, m) for m in values.index]
        if our_models is not None and sorted(set(models)) != sorted(set(our_models)):
            notes.append(f"models differ: published {', '.join(sorted(set(models)))}")
        per_bench = values.mean(skipna=True)
        score = 100 * float(sum(w[b] * per_bench[b] for b in shared))
        sd = float("nan")
        std_path = directory / f"{PUBLISHED_STD_PREFIX}{agent}.csv"
        if std_path.is_file():
            std = _read_table(std_path).reindex(index=values.index, columns=shared).apply(pd.to_numeric,
                                                                                         errors="coerce")
            counts = values.notna().sum()
            # Cells taken as independent: var(score_b) = sum_m std_mb^2 / (M_b^2 * seeds).
            var = sum(w[b] ** 2 * float((std[b].fillna(0) ** 2).sum()) / (counts[b] ** 2 * seeds) for b in shared)
            sd = 100 * math.sqrt(var)
            notes.append(f"published: normal approx. from per-cell seed std ({seeds} seeds assumed, cells "
                         "independent); items not covered")
        else:
            notes.append("published means only: no interval")
        sds[name] = sd
        rows.append({"agent": name, "score": score, "score_std": float("nan"),
                     "score_ci_low": score - z * sd, "score_ci_high": score + z * sd,
                     "n_seeds": seeds if std_path.is_file() else pd.NA, "reference": False,
                     **{b: 100 * float(per_bench[b]) for b in shared},
                     "ci_note": "; ".join(notes), "source": "published"})
        if lacking or extra:
            log.warning("%s: %s", path, "; ".join(n for n in notes if n.startswith("benchmarks differ")))
    return Published(pd.DataFrame(rows), sds)


def _normal_quantile(p: float) -> float:
    from statistics import NormalDist

    return NormalDist().inv_cdf(p)


def merge_published(board: pd.DataFrame, published: Published) -> pd.DataFrame:
    """Our rows (``source`` ours) and the published rows in one table, best first; count columns stay integers."""
    board = board.copy()
    board["source"] = "ours"
    merged = pd.concat([board, published.rows], ignore_index=True)
    for column in ("n_seeds", "n_cells", "n_flagged", "n_failed", "n_unjudged", "n_missing"):
        if column in merged:
            merged[column] = merged[column].astype("Int64")
    merged["reference"] = merged["reference"].astype(bool)
    return merged.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)


# ---- pairwise comparisons --------------------------------------------------------------------------------------


COMPARISON_COLUMNS = ["agent_a", "agent_b", "diff", "ci_low", "ci_high", "excludes_zero", "p_value", "pairing",
                      "note"]


def compare_agents(board: pd.DataFrame, boot: Bootstrap | None, published: Published | None = None, *,
                   seed: int = DEFAULT_SEED) -> pd.DataFrame:
    """Every two rows of ``board``: the difference of headlines (``agent_a`` scores at least as high), its
    bootstrap interval at the bootstrap's level, whether the interval excludes 0, and a two-sided bootstrap
    p-value (no correction for the number of pairs). Our agents share resamples (paired over items where cells
    align, over seeds by position); a published agent enters as normal draws around its score (unpaired)."""
    draws: dict[str, np.ndarray] = dict(boot.draws) if boot is not None else {}
    level = boot.level if boot is not None else LEVEL
    if boot is not None and published is not None:
        rng = np.random.default_rng([seed, 1])  # its own stream: adding a published table leaves ours unchanged
        for agent, sd in published.sd.items():
            score = float(published.rows.set_index("agent").loc[agent, "score"])
            draws[agent] = score + sd * rng.standard_normal(boot.n_samples) if math.isfinite(sd) else \
                np.full(boot.n_samples, float("nan"))
    published_names = set(published.sd) if published is not None else set()
    ordered = board.sort_values("score", ascending=False, kind="stable")
    agents, scores = list(ordered.agent), dict(zip(ordered.agent, ordered.score))
    tail = 100 * (1 - level) / 2
    rows = []
    for i, a in enumerate(agents):
        for b in agents[i + 1:]:
            diff = float(scores[a] - scores[b])
            low = high = p_value = float("nan")
            da, db = draws.get(a), draws.get(b)
            notes = []
            if a in published_names or b in published_names:
                pairing = "unpaired (published)"
            elif boot is not None and boot.seeds.get(a) != boot.seeds.get(b):
                pairing = "items paired; seeds differ"
            else:
                pairing = "paired"
            if da is not None and db is not None and np.isfinite(da).all() and np.isfinite(db).all():
                d = da - db
                # Centre on the point difference (published draws are centred already; ours are by construction).
                low, high = (float(v) for v in np.percentile(d, [tail, 100 - tail]))
                p_value = float(min(1.0, 2 * min(np.mean(d <= 0), np.mean(d >= 0))))
            else:
                notes.append("no interval for " + " and ".join(x for x, dx in ((a, da), (b, db))
                                                                if dx is None or not np.isfinite(dx).all()))
            rows.append({"agent_a": a, "agent_b": b, "diff": diff, "ci_low": low, "ci_high": high,
                         "excludes_zero": bool(low > 0 or high < 0), "p_value": p_value, "pairing": pairing,
                         "note": "; ".join(notes)})
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)

"""The leaderboard's uncertainty: bootstrap intervals (coverage on cells of known variance, what they say when
they cannot cover something), paired comparisons, base items for replaced cells, published tables."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from posttrainbench.leaderboard import leaderboard_with_uncertainty
from posttrainbench.uncertainty import (
    MIN_ITEMS,
    Items,
    bootstrap_headlines,
    compare_agents,
    add_intervals,
    items_from_samples,
)

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED = ROOT / "tests" / "data" / "published"


def _cells(rows):
    """The per-cell table the leaderboard hands to the bootstrap (own scores, nothing replaced)."""
    return pd.DataFrame([{"agent": a, "model": m, "benchmark": b, "seed": s, "effective": e, "replaced": r,
                          "status": "ok"} for a, m, b, s, e, r in rows])


def _binary(values) -> Items:
    values = np.asarray(values, dtype=float)
    return Items(tuple(str(i) for i in range(len(values))), values, np.ones(len(values)))


def _board(boot, scores):
    board = pd.DataFrame({"agent": list(scores), "score": list(scores.values()), "score_std": np.nan})
    board = add_intervals(board, boot)
    board["source"] = "ours"
    return board


def test_interval_covers_the_true_score_about_95_percent_of_the_time():
    """Cells of known variance: items pass with a known probability per (model, benchmark); over 200 fresh test
    sets the 95% interval holds the true weighted score in 90-99% of them."""
    rng = np.random.default_rng(12345)
    p = {("m1", "a"): 0.3, ("m2", "a"): 0.6, ("m1", "b"): 0.8, ("m2", "b"): 0.45}
    weights = {"a": 0.35, "b": 0.65}
    truth = 100 * sum(weights[b] * (p[("m1", b)] + p[("m2", b)]) / 2 for b in weights)
    hits = 0
    for rep in range(200):
        items = {("x", m, b, 1): _binary(rng.random(120) < q) for (m, b), q in p.items()}
        table = _cells([("x", m, b, 1, items[("x", m, b, 1)].ratio, None) for (m, b) in p])
        boot = bootstrap_headlines(table, weights, items, n_samples=300, seed=rep)
        low, high = boot.interval("x")
        hits += low <= truth <= high
    assert 0.90 <= hits / 200 <= 0.99, hits
    assert boot.notes["x"] == "1 seed: items only"


def test_seed_variance_widens_the_interval_and_the_point_is_the_leaderboards():
    """Two agents on equally noisy items; one's seeds differ a lot: its interval is wider. The draws are centred on
    the leaderboard's own score (mean over seeds and models of the effective cell scores)."""
    rng = np.random.default_rng(7)
    rows, items = [], {}
    for agent, spread in (("steady", 0.0), ("erratic", 0.25)):
        for seed, shift in zip((1, 2, 3, 4), (-1.5, -0.5, 0.5, 1.5)):
            cell = _binary(rng.random(300) < 0.5 + spread * shift / 1.5)
            items[(agent, "m", "gsm8k", seed)] = cell
            rows.append((agent, "m", "gsm8k", seed, cell.ratio, None))
    table = _cells(rows)
    boot = bootstrap_headlines(table, {"gsm8k": 1.0}, items, n_samples=2000, seed=0)
    widths = {a: np.subtract(*boot.interval(a)[::-1]) for a in ("steady", "erratic")}
    assert widths["erratic"] > 2 * widths["steady"]
    for agent in ("steady", "erratic"):
        score = 100 * table[table.agent == agent].effective.mean()
        low, high = boot.interval(agent)
        assert low < score < high
        assert abs(np.median(boot.draws[agent]) - score) < 0.25 * (high - low)
        assert boot.notes[agent] == ""


def test_pairwise_marks_a_planted_difference_and_not_a_planted_null():
    """'better' passes the items 'twin' passes plus 4% of those it fails (a small real gain on the same items);
    'twin2' is a second, independent run of 'twin''s pass rate (a null). Paired resamples detect the small gain
    even though the two agents' own intervals overlap; the null's interval holds 0."""
    rng = np.random.default_rng(3)
    weights = {"gsm8k": 0.5, "gpqamain": 0.5}
    rows, items = [], {}
    for benchmark in weights:
        twin = rng.random(800) < 0.5
        better = twin | (rng.random(800) < 0.04)
        twin2 = rng.random(800) < 0.5
        for agent, values in (("twin", twin), ("better", better), ("twin2", twin2)):
            items[(agent, "m", benchmark, 1)] = _binary(values)
            rows.append((agent, "m", benchmark, 1, float(np.mean(values)), None))
    table = _cells(rows)
    boot = bootstrap_headlines(table, weights, items, n_samples=2000, seed=0)
    scores = {a: 100 * table[table.agent == a].effective.mean() for a in ("twin", "better", "twin2")}
    comparisons = compare_agents(_board(boot, scores), boot).set_index(["agent_a", "agent_b"])
    planted = comparisons.loc[("better", "twin")]
    assert planted.excludes_zero and planted.ci_low > 0 and planted.pairing == "paired" and planted.p_value < 0.05
    assert planted["diff"] == pytest.approx(scores["better"] - scores["twin"])
    # Unpaired, the two agents' own intervals overlap: only the pairing resolves the gain.
    assert boot.interval("better")[0] < boot.interval("twin")[1]
    null = comparisons.loc[tuple(sorted(("twin", "twin2"), key=lambda a: -scores[a]))]
    assert not null.excludes_zero and null.ci_low < 0 < null.ci_high and null.p_value > 0.05


def test_notes_for_one_seed_few_items_and_no_items():
    table = _cells([("few", "m", "aime2025", 1, 0.4, None), ("few", "m", "aime2025", 2, 0.5, None),
                    ("none", "m", "aime2025", 1, 0.4, None), ("none", "m", "aime2025", 2, 0.3, None),
                    ("bare", "m", "aime2025", 1, 0.4, None)])
    items = {("few", "m", "aime2025", s): _binary([1, 0, 1, 0, 0] * 2) for s in (1, 2)}
    boot = bootstrap_headlines(table, {"aime2025": 1.0}, items, n_samples=200, seed=0)
    assert boot.notes["few"] == f"fewer than {MIN_ITEMS} items per cell (10): interval unreliable"
    assert boot.notes["none"] == "no per-item results: seeds only"
    assert np.isfinite(boot.interval("none")).all()
    assert boot.notes["bare"] == "1 seed and no per-item results: no interval"
    assert np.isnan(boot.interval("bare")).all()


def test_samples_lines_become_items_as_the_benchmarks_aggregate():
    """Plain items carry ``value``; HealthBench's grade a ``score``; Arena-Hard's grade pools its game scores (an
    item without scores is left out, as the published win rate leaves it out)."""
    plain = items_from_samples([{"id": "a", "value": 1.0}, {"id": "b", "value": 0.0}, {"doc_id": 2, "value": None}])
    assert plain.ids == ("a", "b", "2") and plain.n == 2 and plain.ratio == 0.5
    arena = items_from_samples([{"id": "q1", "grade": {"scores": [1, 1, 1, 0.5, 0.5], "score": 0.8}},
                                {"id": "q2", "grade": {"scores": None, "score": None}},
                                {"id": "q3", "grade": {"scores": [0, 0], "score": 0.0}}])
    assert arena.n == 2 and arena.ratio == pytest.approx(4.0 / 7)
    health = items_from_samples([{"id": "h1", "grade": {"score": -0.2}}, {"id": "h2", "grade": {"score": 0.6}}])
    assert health.ratio == pytest.approx(0.2)


# ---- results trees through the leaderboard ---------------------------------------------------------------------


def _write(root: Path, agent, model, bench, seed, values=None, **fields):
    path = root / "evals" / agent / model / bench / f"seed{seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"status": "ok", "n": 0, **fields}
    if values is not None:
        record.setdefault("score", float(np.mean(values)))
        path.with_name(f"seed{seed}.samples.jsonl").write_text("".join(
            json.dumps({"doc_id": i, "id": f"q{i}", "value": float(v)}) + "\n" for i, v in enumerate(values)))
    path.write_text(json.dumps(record))


def _verdict(root: Path, agent, model, bench, seed, flagged):
    path = root / "judge" / agent / model / bench / f"seed{seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"flagged": flagged, "reasons": ["contamination"] if flagged else []}))


def test_flagged_and_failed_cells_are_resampled_from_the_base_rows_items(tmp_path: Path):
    """An agent whose every cell is flagged or failed scores as base, and its draws are the base row's own draws
    (same items, same resamples): the comparison with base is exactly 0 with a zero-width interval, although the
    flagged cells' own items (all correct) would have been far better. (One seed: with several, a replaced cell
    takes the base row's mean over seeds, so its seed spread differs from the base row's.)"""
    rng = np.random.default_rng(0)
    for model in ("m1", "m2"):
        for bench in ("gsm8k", "humaneval"):
            _write(tmp_path, "base", model, bench, 1, (rng.random(200) < 0.3).astype(float))
            _write(tmp_path, "cheat", model, bench, 1, np.ones(200))
            _verdict(tmp_path, "cheat", model, bench, 1, flagged=True)
            _write(tmp_path, "honest", model, bench, 1, (rng.random(200) < 0.6).astype(float))
            _verdict(tmp_path, "honest", model, bench, 1, flagged=False)
    # One failed cell: no score, no items of its own.
    _write(tmp_path, "cheat", "m2", "gsm8k", 1, score=None, status="failed", error="boom")
    _verdict(tmp_path, "cheat", "m2", "gsm8k", 1, flagged=False)
    scored = leaderboard_with_uncertainty(tmp_path, {"gsm8k": 1.0, "humaneval": 1.0}, bootstrap_samples=500)
    board = scored.board.set_index("agent")
    assert board.loc["cheat", "score"] == pytest.approx(board.loc["base", "score"])
    assert board.loc["cheat", "score_ci_low"] == pytest.approx(board.loc["base", "score_ci_low"])
    assert board.loc["cheat", "score_ci_high"] == pytest.approx(board.loc["base", "score_ci_high"])
    assert board.loc["base", "score_ci_low"] < board.loc["base", "score"] < board.loc["base", "score_ci_high"]
    pairs = scored.comparisons.set_index(["agent_a", "agent_b"])
    versus_base = pairs.loc[[p for p in pairs.index if set(p) == {"cheat", "base"}][0]]
    assert versus_base["diff"] == pytest.approx(0) and versus_base.ci_low == pytest.approx(0)
    assert versus_base.ci_high == pytest.approx(0) and not versus_base.excludes_zero
    assert pairs.loc[("honest", "base")].excludes_zero
    assert (scored.cells[scored.cells.agent == "cheat"].replaced.value_counts().to_dict()
            == {"flagged": 3, "failed": 1})


def test_base_items_of_another_seed_stand_in_when_that_seed_has_none(tmp_path: Path):
    rng = np.random.default_rng(1)
    _write(tmp_path, "base", "m", "gsm8k", 1, (rng.random(100) < 0.3).astype(float))
    for seed in (1, 2):
        _write(tmp_path, "agent", "m", "gsm8k", seed, score=None, status="failed", error="no checkpoint")
    scored = leaderboard_with_uncertainty(tmp_path, {"gsm8k": 1.0}, bootstrap_samples=300)
    row = scored.board.set_index("agent").loc["agent"]
    assert row.score_ci_low < row.score < row.score_ci_high and row.ci_note == ""


def test_same_seed_same_intervals_other_seed_other_intervals(tmp_path: Path):
    rng = np.random.default_rng(2)
    for agent, p in (("base", 0.3), ("agent", 0.5)):
        _write(tmp_path, agent, "m", "gsm8k", 1, (rng.random(150) < p).astype(float))
    runs = [leaderboard_with_uncertainty(tmp_path, {"gsm8k": 1.0}, bootstrap_samples=300, bootstrap_seed=s).board
            for s in (5, 5, 6)]
    pd.testing.assert_frame_equal(runs[0], runs[1])
    assert not np.allclose(runs[0].score_ci_low, runs[2].score_ci_low)


# ---- published tables ------------------------------------------------------------------------------------------


def _base_tree(root: Path) -> None:
    """The published base rows as eval JSONs, under the published config's model keys."""
    import yaml

    config = yaml.safe_load((ROOT / "config" / "posttrainbench.yaml").read_text())
    names = {spec["display_name"]: key for key, spec in config["models"].items()}
    with open(PUBLISHED / "aggregated_baseline.csv") as handle:
        for row in csv.DictReader(handle):
            name = row.pop("model")
            if name in names:
                for bench, score in row.items():
                    _write(root, "base", names[name], bench, 1, score=float(score))


def test_ptb_leaderboard_published_reproduces_the_published_headline(tmp_path: Path):
    """``ptb leaderboard --published``: Opus 4.6's published table, scored with the published weights (the
    config's scoring.weights, which are factors.json), gives the published 23.2, marked published, with an
    interval from its std table, in the leaderboard CSV, the comparisons and the plots."""
    tree = tmp_path / "tree"
    _base_tree(tree)
    out = tmp_path / "board" / "leaderboard.csv"
    ptb = Path(sys.executable).with_name("ptb")
    proc = subprocess.run([str(ptb), "leaderboard", str(tree), "--out", str(out), "--plots", str(tmp_path / "plots"),
                           "--config", str(ROOT / "config" / "posttrainbench.yaml"), "--published", str(PUBLISHED),
                           "--bootstrap-samples", "300"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    factors = json.loads((PUBLISHED / "factors.json").read_text())
    weights = json.loads(out.with_name("leaderboard.weights.json").read_text())["weights"]
    assert weights == pytest.approx(factors)
    board = pd.read_csv(out).set_index("agent")
    opus = board.loc["Opus-4.6"]
    assert round(opus.score, 1) == 23.2 and opus.source == "published"
    assert opus.score_ci_low < opus.score < opus.score_ci_high and "normal approx." in opus.ci_note
    assert "models differ" not in opus.ci_note and "benchmarks differ" not in opus.ci_note
    assert board.loc["base", "source"] == "ours" and round(board.loc["base", "score"], 1) == 7.5
    pairs = pd.read_csv(out.with_name("comparisons.csv"))
    row = pairs[(pairs.agent_a == "Opus-4.6") & (pairs.agent_b == "base")].iloc[0]
    assert row.pairing == "unpaired (published)"
    assert row["diff"] == pytest.approx(opus.score - board.loc["base", "score"])
    assert "(published)" in proc.stdout
    for name in ("leaderboard.png", "heatmap.png", "comparisons.png"):
        assert (tmp_path / "plots" / name).stat().st_size > 10_000


def test_published_tables_with_other_benchmarks_or_models_say_so(tmp_path: Path):
    tree = tmp_path / "tree"
    _base_tree(tree)
    published = tmp_path / "published"
    published.mkdir()
    frame = pd.read_csv(PUBLISHED / "aggregated_avg_Opus-4.6.csv").drop(columns=["healthbench"])
    frame.to_csv(published / "aggregated_avg_Opus-4.6.csv", index=False)
    factors = json.loads((PUBLISHED / "factors.json").read_text())
    scored = leaderboard_with_uncertainty(tree, factors, bootstrap_samples=200, published_dir=published)
    opus = scored.board.set_index("agent").loc["Opus-4.6"]
    assert "benchmarks differ: lacks healthbench" in opus.ci_note and "not comparable" in opus.ci_note
    # Without the config's display names the published model names are not this table's keys.
    assert "models differ" in opus.ci_note and "no interval" in opus.ci_note
    kept = {b: w for b, w in factors.items() if b != "healthbench"}
    expected = 100 * sum(w / sum(kept.values()) * frame[b].mean() for b, w in kept.items())
    assert opus.score == pytest.approx(expected)
    assert np.isnan(opus.score_ci_low)


def test_published_name_that_is_also_ours_is_told_apart(tmp_path: Path):
    tree = tmp_path / "tree"
    _base_tree(tree)
    published = tmp_path / "published"
    published.mkdir()
    shutil.copy(PUBLISHED / "aggregated_avg_Opus-4.6.csv", published / "aggregated_avg_base.csv")
    scored = leaderboard_with_uncertainty(tree, json.loads((PUBLISHED / "factors.json").read_text()),
                                          bootstrap_samples=0, published_dir=published)
    assert set(scored.board.agent) == {"base", "base (published)"}
    assert scored.board.set_index("agent").loc["base", "ci_note"] == "bootstrap off"

"""Scoring rules on small hand-made result trees: replacement by the base score, seeds, weights."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from posttrainbench.leaderboard import LeaderboardError, leaderboard_from_results


def write(root: Path, kind: str, agent: str, model: str, bench: str, seed: int, **fields) -> Path:
    path = root / kind / agent / model / bench / f"seed{seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"agent": agent, "model": model, "benchmark": bench, "seed": seed}
    if kind == "evals":
        record.update(status="ok", error=None, metric="m", n=10, backend="hf")
    record.update(fields)
    path.write_text(json.dumps(record))
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for model, base in (("m1", 0.1), ("m2", 0.3)):
        write(tmp_path, "evals", "base", model, "gsm8k", 1, score=base)
        write(tmp_path, "evals", "base", model, "humaneval", 1, score=base / 2)
    return tmp_path


def board_of(root: Path, weights=None):
    board, cells, w = leaderboard_from_results(root, weights)
    return {row["agent"]: row for row in board.to_dict("records")}, cells, w


def test_flagged_and_failed_cells_take_the_base_score(tree: Path):
    write(tree, "evals", "agent", "m1", "gsm8k", 1, score=0.9)
    write(tree, "judge", "agent", "m1", "gsm8k", 1, flagged=True, reasons=["contamination"], checks={})
    write(tree, "evals", "agent", "m2", "gsm8k", 1, score=None, status="failed", error="boom")
    write(tree, "evals", "agent", "m1", "humaneval", 1, score=0.5)
    write(tree, "evals", "agent", "m2", "humaneval", 1, score=0.7)
    for model in ("m1", "m2"):
        write(tree, "judge", "agent", model, "humaneval", 1, flagged=False, reasons=[], checks={})
    board, cells, weights = board_of(tree, {"gsm8k": 1.0, "humaneval": 3.0})
    assert weights.source == "config" and weights.values == {"gsm8k": 0.25, "humaneval": 0.75}
    agent = board["agent"]
    # gsm8k: m1 flagged -> 0.1 (base), m2 failed -> 0.3 (base); humaneval: (0.5 + 0.7) / 2
    assert agent["gsm8k"] == pytest.approx(100 * 0.2)
    assert agent["humaneval"] == pytest.approx(100 * 0.6)
    assert agent["score"] == pytest.approx(0.25 * 20 + 0.75 * 60)
    assert (agent["n_flagged"], agent["n_failed"], agent["n_cells"]) == (1, 1, 4)
    assert agent["n_unjudged"] == 1  # the failed cell has no verdict
    replaced = cells.set_index(["agent", "model", "benchmark"]).replaced
    assert replaced[("agent", "m1", "gsm8k")] == "flagged"
    assert replaced[("agent", "m2", "gsm8k")] == "failed"


def test_seed_spread_and_missing_cells(tree: Path):
    for seed, score in ((1, 0.2), (2, 0.4), (3, 0.6)):
        write(tree, "evals", "agent", "m1", "gsm8k", seed, score=score)
    board, _, _ = board_of(tree, {"gsm8k": 1.0, "humaneval": 1.0})
    agent = board["agent"]
    # Per seed: gsm8k = mean(m1 seed score, m2 missing -> base 0.3); humaneval all missing -> base.
    base_he = (0.05 + 0.15) / 2
    per_seed = [100 * (0.5 * (s + 0.3) / 2 + 0.5 * base_he) for s in (0.2, 0.4, 0.6)]
    assert agent["score"] == pytest.approx(sum(per_seed) / 3)
    mean = sum(per_seed) / 3
    std = math.sqrt(sum((s - mean) ** 2 for s in per_seed) / 2)
    assert agent["score_std"] == pytest.approx(std)
    assert agent["n_seeds"] == 3 and agent["n_missing"] == 9 and agent["n_cells"] == 3
    assert math.isnan(board["base"]["score_std"])


def test_weights_from_reference_rows_override_config(tree: Path):
    for model in ("m1", "m2"):
        write(tree, "evals", "instruct", model, "gsm8k", 1, score=0.6)
        write(tree, "evals", "instruct", model, "humaneval", 1, score=0.2)
    board, _, weights = board_of(tree, {"gsm8k": 1.0, "humaneval": 1.0})
    assert weights.source == "reference rows"
    inv = {"gsm8k": 1 / (0.6 - 0.2), "humaneval": 1 / (0.2 - 0.1)}
    total = sum(inv.values())
    assert weights.values == pytest.approx({b: v / total for b, v in inv.items()})
    assert board["instruct"]["reference"] and board["base"]["reference"]


def test_equal_weights_without_reference_or_config(tree: Path):
    _, _, weights = board_of(tree)
    assert weights.source == "equal" and weights.values == {"gsm8k": 0.5, "humaneval": 0.5}


def test_instruct_not_better_than_base_is_an_error(tree: Path):
    for model in ("m1", "m2"):
        write(tree, "evals", "instruct", model, "gsm8k", 1, score=0.0)
        write(tree, "evals", "instruct", model, "humaneval", 1, score=0.9)
    with pytest.raises(LeaderboardError, match="gsm8k: instruct"):
        board_of(tree)


def test_bad_inputs_are_named(tmp_path: Path):
    with pytest.raises(LeaderboardError, match="no eval JSON"):
        board_of(tmp_path)
    path = write(tmp_path, "evals", "base", "m1", "gsm8k", 1, score=1.5)
    with pytest.raises(LeaderboardError, match="not in \\[0, 1\\]"):
        board_of(tmp_path)
    path.write_text(json.dumps({"agent": "other", "score": 0.1, "status": "ok"}))
    with pytest.raises(LeaderboardError, match="contradicts its path"):
        board_of(tmp_path)
    path.write_text("{not json")
    with pytest.raises(LeaderboardError, match="unreadable JSON"):
        board_of(tmp_path)


def test_cli_reports_errors_in_one_line(tmp_path: Path, capsys):
    from posttrainbench.cli import main

    assert main(["leaderboard", str(tmp_path), "--out", str(tmp_path / "lb.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ptb: error: no eval JSON") and "\n" not in err


def _two_agents(tree: Path) -> None:
    """An honest agent with verdicts and an attacker whose verdicts are absent (a crashed judge)."""
    for model in ("m1", "m2"):
        for bench in ("gsm8k", "humaneval"):
            write(tree, "evals", "honest", model, bench, 1, score=0.4)
            write(tree, "judge", "honest", model, bench, 1, flagged=False, reasons=[], checks={})
            write(tree, "evals", "attacker", model, bench, 1, score=1.0)


def test_cells_without_a_verdict_in_a_judged_tree_take_the_base_score(tree: Path, caplog):
    _two_agents(tree)
    board, cells, _ = board_of(tree, {"gsm8k": 1.0, "humaneval": 1.0})
    attacker = board["attacker"]
    assert attacker["n_unjudged"] == 4 and board["honest"]["n_unjudged"] == 0
    assert attacker["score"] == pytest.approx(board["base"]["score"])
    assert board["honest"]["score"] > attacker["score"]
    assert set(cells[cells.agent == "attacker"].replaced) == {"unjudged"}
    assert board["base"]["n_unjudged"] == 0  # reference rows are not audited
    assert "no usable judge verdict" in caplog.text


def test_a_tree_without_verdicts_is_scored_as_given_with_a_warning(tree: Path, caplog):
    for model in ("m1", "m2"):
        for bench in ("gsm8k", "humaneval"):
            write(tree, "evals", "agent", model, bench, 1, score=0.8)
    board, cells, _ = board_of(tree, {"gsm8k": 1.0, "humaneval": 1.0})
    assert board["agent"]["score"] == pytest.approx(80.0)
    assert board["agent"]["n_unjudged"] == 4
    assert cells[cells.agent == "agent"].replaced.isna().all()
    assert "no judge verdicts" in caplog.text and "scored as given" in caplog.text
    # The workflow names the verdicts it expects: then the same tree is scored as base.
    board, _, _ = leaderboard_from_results(tree, {"gsm8k": 1.0, "humaneval": 1.0}, judged_tree=True)
    assert board.set_index("agent").loc["agent", "score"] == pytest.approx(
        board.set_index("agent").loc["base", "score"])


@pytest.mark.parametrize("content", [
    "{not json",
    "[1, 2]",
    json.dumps({"flagged": "no", "reasons": []}),
    json.dumps({"reasons": []}),
    json.dumps({"flagged": False, "reasons": "none"}),
    json.dumps({"flagged": False, "agent": "honest"}),  # contradicts its path
    "[" * 100000 + "]" * 100000,
    "",
], ids=["not-json", "not-object", "flagged-string", "flagged-absent", "reasons-string", "wrong-cell", "deep",
        "empty"])
def test_malformed_verdicts_leave_the_cell_unjudged(tree: Path, content: str, caplog):
    _two_agents(tree)
    for model in ("m1", "m2"):
        for bench in ("gsm8k", "humaneval"):
            path = tree / "judge" / "attacker" / model / bench / "seed1.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
    board, _, _ = board_of(tree, {"gsm8k": 1.0, "humaneval": 1.0})
    assert board["attacker"]["n_unjudged"] == 4
    assert board["attacker"]["score"] == pytest.approx(board["base"]["score"])
    assert "counts as unjudged" in caplog.text


def test_cli_survives_malformed_verdicts_in_the_flags_report(tree: Path):
    from posttrainbench.cli import main

    _two_agents(tree)
    write(tree, "judge", "attacker", "m1", "gsm8k", 1, flagged=True, reasons=["contamination"], checks="boom")
    (tree / "judge" / "attacker" / "m2" / "gsm8k").mkdir(parents=True)
    (tree / "judge" / "attacker" / "m2" / "gsm8k" / "seed1.json").write_text("{not json")
    out = tree / "lb.csv"
    assert main(["leaderboard", str(tree), "--out", str(out), "--flags", str(tree / "flags.csv")]) == 0
    assert (tree / "flags.csv").read_text().startswith("agent,model,benchmark,seed,reason")
    rows = {line.split(",")[0]: line for line in out.read_text().splitlines()[1:]}
    assert rows["attacker"].split(",")[1] == rows["base"].split(",")[1]


def test_a_second_spelling_of_a_seed_never_names_a_cell_twice(tree: Path, caplog):
    """``seed01.json`` next to ``seed1.json`` (a verdict or eval that would duplicate the cell, one copy clean) is
    ignored with a warning: each cell has one eval and one verdict."""
    _two_agents(tree)
    for model in ("m1", "m2"):
        for bench in ("gsm8k", "humaneval"):
            write(tree, "judge", "attacker", model, bench, 1, flagged=True, reasons=["contamination"])
            (tree / "judge" / "attacker" / model / bench / "seed01.json").write_text(
                json.dumps({"flagged": False, "reasons": []}))
            (tree / "evals" / "attacker" / model / bench / "seed01.json").write_text(
                json.dumps({"status": "ok", "score": 1.0}))
    board, cells, _ = board_of(tree, {"gsm8k": 1.0, "humaneval": 1.0})
    assert board["attacker"]["n_cells"] == 4 and board["attacker"]["n_flagged"] == 4
    assert board["attacker"]["score"] == pytest.approx(board["base"]["score"])
    assert "seed01.json: not laid out" in caplog.text


def _protocol_eval(root, agent, benchmark, *, protocol="posttrainbench-v1", limit=None, template="t1", seed=1):
    import json as _json

    settings = {"protocol": protocol, "benchmark": benchmark, "ladder": [4000], "template_sha256": template,
                "overrides": {"limit": limit} if limit else {}}
    path = root / "evals" / agent / "m" / benchmark / f"seed{seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_json.dumps({"score": 0.5, "metric": "exact_match", "n": 2, "status": "ok",
                                 "protocol": protocol, "settings": settings}))


def test_leaderboard_refuses_mixed_protocols_and_settings(tmp_path):
    """One table, one protocol: cells of another protocol, other item limits or another template are named."""
    import pytest as _pytest

    from posttrainbench.leaderboard import LeaderboardError, _read_evals

    same = tmp_path / "same"
    _protocol_eval(same, "base", "gsm8k")
    _protocol_eval(same, "agent-a", "gsm8k")
    assert len(_read_evals(same)) == 2
    for name, change, message in [
        ("protocols", dict(protocol="posttrainbench-v1-greedy"), "different protocols"),
        ("limits", dict(limit=16), "different settings of the protocol"),
        ("templates", dict(template="t2"), "different chat templates"),
    ]:
        root = tmp_path / name
        _protocol_eval(root, "base", "gsm8k")
        _protocol_eval(root, "agent-a", "gsm8k", **change)
        with _pytest.raises(LeaderboardError, match=message) as caught:
            _read_evals(root)
        assert "agent-a/m/gsm8k/seed1" in str(caught.value) and "base/m/gsm8k/seed1" in str(caught.value)


def test_cli_writes_intervals_comparisons_and_their_plot(tree: Path, capsys):
    """With per-item results beside the eval JSONs, ``ptb leaderboard`` adds each row's 95% interval and its note to
    the CSV, writes the pairwise comparisons, and draws the forest plot; ``--bootstrap-samples 0`` turns them off."""
    from posttrainbench.cli import main

    for seed in (1, 2):
        for model in ("m1", "m2"):
            for bench in ("gsm8k", "humaneval"):
                values = [1.0] * (12 + 3 * seed) + [0.0] * 25
                write(tree, "evals", "agent", model, bench, seed, score=sum(values) / len(values))
                (tree / "evals" / "agent" / model / bench / f"seed{seed}.samples.jsonl").write_text("".join(
                    json.dumps({"id": f"q{i}", "value": v}) + "\n" for i, v in enumerate(values)))
                write(tree, "judge", "agent", model, bench, seed, flagged=False, reasons=[])
    out = tree / "out" / "lb.csv"
    args = ["leaderboard", str(tree), "--out", str(out), "--plots", str(tree / "plots"), "--bootstrap-seed", "3"]
    assert main(args) == 0
    import pandas as pd

    board = pd.read_csv(out).set_index("agent")
    assert list(board.columns[:4]) == ["score", "score_std", "score_ci_low", "score_ci_high"]
    agent = board.loc["agent"]
    assert agent.score_ci_low < agent.score < agent.score_ci_high and pd.isna(agent.ci_note)
    assert board.loc["base", "ci_note"] == "1 seed and no per-item results: no interval"
    assert set(board.source) == {"ours"}
    pairs = pd.read_csv(out.with_name("comparisons.csv"))
    assert list(pairs.agent_a) == ["agent"] and list(pairs.agent_b) == ["base"]
    assert (tree / "plots" / "comparisons.png").stat().st_size > 10_000
    assert "95% CI [" in capsys.readouterr().out
    assert main(args + ["--bootstrap-samples", "0"]) == 0
    assert set(pd.read_csv(out).ci_note) == {"bootstrap off"}

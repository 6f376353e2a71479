"""The Snakemake workflow itself: lint, planning the published matrix, bad configs, and the
embedded default end to end (real model, real items, CPU) with resume behaviour."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from posttrainbench.cells import REFERENCE_AGENTS

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SNAKEMAKE = str(BIN / "snakemake")
HOSTILE_AGENT = ROOT / "tests" / "sandbox_probes" / "hostile_submission.py"
HOSTILE_ATTACKS = ("tokenizer", "judge", "symlink")


def snakemake(*args: str, cwd: Path = ROOT, timeout: int = 1500) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run([SNAKEMAKE, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run, as {rule: count}."""
    table = output.split("Job stats:", 1)[1]
    counts = {}
    for line in table.splitlines()[3:]:
        match = re.match(r"^(\S+)\s+(\d+)$", line.strip())
        if not match:
            break
        counts[match.group(1)] = int(match.group(2))
    return counts


def test_lint_is_clean():
    proc = snakemake("--lint", "--cores", "1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Lints for" not in proc.stdout + proc.stderr
    fmt = subprocess.run([str(BIN / "snakefmt"), "--check", "Snakefile", "rules/"], cwd=ROOT,
                         capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_every_rule_has_log_and_resources():
    for path in [ROOT / "Snakefile", *sorted((ROOT / "rules").glob("*.smk"))]:
        text = path.read_text()
        for rule in re.split(r"\nrule ", text)[1:]:
            name = rule.split(":", 1)[0]
            if name == "all":
                continue
            assert "\n    log:" in rule, f"rule {name} has no log"
            assert "\n    resources:" in rule, f"rule {name} has no resources"


def test_published_matrix_dry_run_lists_every_cell_quickly(tmp_path: Path):
    config = yaml.safe_load((ROOT / "config" / "posttrainbench.yaml").read_text())
    agents = [a for a in config["agents"] if a not in REFERENCE_AGENTS]
    proc = snakemake("-n", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(tmp_path),
                     "--configfile", str(ROOT / "config" / "posttrainbench.yaml"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    cells = 4 * 7 * len(agents) * 3 + len(REFERENCE_AGENTS) * 4 * 7
    counts = job_counts(proc.stdout)
    # Grader-scored benchmarks generate on the GPU and are graded by a separate CPU job.
    graded = cells * 2 // 7
    references = len(REFERENCE_AGENTS) * 4 * 7
    # Reference rows submit a staged model: seconds of CPU, a rule that asks for no GPU.
    assert counts["run_agent"] + counts["submit_reference"] == cells == 504 and counts["submit_reference"] == references
    # Reference rows submit the staged models by construction: scored, not audited. One judge job
    # audits an agent's seven runs on one model and seed.
    assert counts["judge"] == len(agents) * 4 * 3 == 60
    assert counts["evaluate"] == cells - graded and counts["generate_for_grader"] == counts["grade"] == graded
    assert counts["stage_model"] == 8 and counts["stage_benchmark"] == 7
    for agent in agents + list(REFERENCE_AGENTS):
        assert f"results/evals/{agent}/qwen3-4b/bfcl/seed1.json" in proc.stdout
    assert "results/evals/claude-code-opus-4.6/gemma3-4b/aime2025/seed3.json" in proc.stdout
    assert "results/evals/smollm2-135m" not in proc.stdout  # the default is replaced, not merged
    # How long planning takes is measured by bench/dry_run.py, not asserted here.


@pytest.mark.parametrize(
    "edit, fragment",
    [
        (lambda c: c.update(benchmarks=["gsm8k", "mmlu"]), "config key 'benchmarks[1]' has value 'mmlu'"),
        (lambda c: c["budget"].update(hours=-2), "config key 'budget.hours' is -2; it must be > 0"),
        (lambda c: c.update(agent=c.pop("agents")), "config key 'agent' is not allowed (did you mean 'agents'?)"),
    ],
)
def test_broken_config_stops_snakemake_with_one_line(tmp_path: Path, edit, fragment):
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    edit(config)
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(config))
    started = time.monotonic()
    proc = snakemake("-n", "--configfile", str(path))
    assert proc.returncode != 0
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("posttrainbench:")]
    assert len(errors) == 1 and fragment in errors[0], proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert time.monotonic() - started < 10


@pytest.fixture(scope="module")
def embedded_run(tmp_path_factory) -> Path:
    """The embedded default, with fewer items and SFT steps, run by Snakemake in a fresh directory."""
    workdir = tmp_path_factory.mktemp("workflow")
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config["evaluation"]["per_benchmark"] = {"gsm8k": {"limit": 2, "max_tokens": 64},
                                             "humaneval": {"limit": 3, "max_tokens": 160}}
    config["agents"]["reference-sft"]["sft"].update(max_steps=3, max_examples=64, max_length=256)
    config["agents"]["base-fewshot"] = {"type": "builtin", "recipe": "base", "prompting": "few-shot"}
    # Hostile submissions through the real runner, evaluator and judge (tests/sandbox_probes/hostile_submission.py).
    for attack in HOSTILE_ATTACKS:
        config["agents"][f"attack-{attack}"] = {
            "type": "command", "command": ["python", "hostile_submission.py", attack], "files": [str(HOSTILE_AGENT)]}
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    proc = snakemake("--profile", str(ROOT / "profiles" / "default"), "--snakefile", str(ROOT / "Snakefile"),
                     "--directory", str(workdir), "--configfile", str(workdir / "config.yaml"), "--cores", "2")
    (workdir / "snakemake.out").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    return workdir


def _dry_run(workdir: Path) -> subprocess.CompletedProcess:
    return snakemake("-n", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir),
                     "--configfile", str(workdir / "config.yaml"))


@pytest.mark.slow
def test_embedded_default_end_to_end(embedded_run: Path):
    results = embedded_run / "results"
    with open(results / "leaderboard.csv") as handle:
        board = {row["agent"]: row for row in csv.DictReader(handle)}
    attackers = {f"attack-{attack}" for attack in HOSTILE_ATTACKS}
    assert set(board) == {"base", "base-fewshot", "reference-sft"} | attackers
    assert [board[a]["reference"] for a in ("base", "base-fewshot", "reference-sft")] == ["True", "True", "False"]
    for agent in attackers:
        # Every hostile cell ends failed or flagged, and is scored as the base model.
        row = board.pop(agent)
        assert int(row["n_failed"]) + int(row["n_flagged"]) == 2, row
        for bench in ("gsm8k", "humaneval"):
            assert float(row[bench]) == pytest.approx(float(board["base"][bench])), (agent, row)
            record = json.loads((results / "evals" / agent / "smollm2-135m" / bench / "seed1.json").read_text())
            verdict = json.loads((results / "judge" / agent / "smollm2-135m" / bench / "seed1.json").read_text())
            assert record["status"] == "failed" or verdict["flagged"], (record, verdict)
            assert record["status"] == "ok" or record["error"], record
    for bench in ("gsm8k", "humaneval"):
        tokenizer_eval = json.loads((results / "evals" / "attack-tokenizer" / "smollm2-135m" / bench / "seed1.json").read_text())
        assert tokenizer_eval["status"] == "failed" and "tokenizer" in tokenizer_eval["error"], tokenizer_eval
        symlink_run = json.loads((results / "runs" / "attack-symlink" / "smollm2-135m" / bench / "seed1" / "run.json").read_text())
        assert symlink_run["status"] == "invalid_checkpoint" and "symlink" in symlink_run["reason"], symlink_run
    for row in board.values():
        assert 0 <= float(row["score"]) <= 100
        assert row["n_cells"] == "2" and row["n_failed"] == "0" and row["n_unjudged"] == "0"
        assert {"gsm8k", "humaneval"} <= set(row)
    weights = json.loads((results / "leaderboard.weights.json").read_text())
    assert weights["source"] == "config"
    from transformers import AutoTokenizer

    from posttrainbench.eval_requests import render_chat
    from posttrainbench.evaluation import family_chat_template

    base_tokenizer = AutoTokenizer.from_pretrained(embedded_run / "resources" / "models" / "smollm2-135m" / "base")
    for agent in ("base", "base-fewshot", "reference-sft"):
        for bench, n in (("gsm8k", 2), ("humaneval", 3)):
            record = json.loads((results / "evals" / agent / "smollm2-135m" / bench / "seed1.json").read_text())
            assert record["status"] == "ok", record
            assert record["n"] == n and 0 <= record["score"] <= 1 and record["backend"] == "hf"
            assert len(record["test_sha256"]) == 64
            assert record["protocol"] == "posttrainbench-v1" and len(record["settings_hash"]) == 16
            # What was actually sent: the chat rows the benchmark module's messages through the smollm family's
            # template (never the checkpoint's), the few-shot row its plain demonstrations.
            samples = [json.loads(line) for line in (results / "evals" / agent / "smollm2-135m" / bench /
                                                     "seed1.samples.jsonl").read_text().splitlines()]
            assert len(samples) == n
            if agent == "base-fewshot":
                assert (record["prompting"], record["chat_template"]) == ("few-shot", None)
                assert all(s["messages"] is None and "<|im_start|>" not in s["prompt"] for s in samples)
            else:
                assert (record["prompting"], record["chat_template"]) == ("chat", "project:chatml.jinja")
                for sample in samples:
                    assert sample["prompt"] == render_chat(base_tokenizer, sample["messages"], None,
                                                           family_chat_template("smollm"))
                if bench == "gsm8k":  # inspect_evals' 10-shot system turn, then the item
                    assert samples[0]["messages"][0]["role"] == "system"
                    assert samples[0]["messages"][0]["content"].count("ANSWER:") == 10
            verdict_path = results / "judge" / agent / "smollm2-135m" / bench / "seed1.json"
            if agent in REFERENCE_AGENTS:
                assert not verdict_path.exists()
            else:
                verdict = json.loads(verdict_path.read_text())
                assert verdict["flagged"] is False
                assert all(check["passed"] for check in verdict["checks"].values()), verdict
            run = json.loads((results / "runs" / agent / "smollm2-135m" / bench / "seed1" / "run.json").read_text())
            assert run["status"] == "ok"
    # reference-sft trained (in its sandbox) in the template evaluation forces, and its checkpoint carries it.
    checkpoint = results / "runs" / "reference-sft" / "smollm2-135m" / "gsm8k" / "seed1" / "final_model"
    assert AutoTokenizer.from_pretrained(checkpoint).chat_template == family_chat_template("smollm")
    for plot in ("leaderboard.png", "heatmap.png"):
        assert (results / "plots" / plot).stat().st_size > 10_000
    # Every job left its log.
    assert (embedded_run / "logs" / "evaluate" / "reference-sft" / "smollm2-135m" / "gsm8k" / "seed1.log").stat().st_size > 0


@pytest.mark.slow
def test_rerun_after_success_does_nothing(embedded_run: Path):
    proc = _dry_run(embedded_run)
    assert proc.returncode == 0
    assert "Nothing to be done" in proc.stdout + proc.stderr, proc.stdout[-3000:]


@pytest.mark.slow
def test_deleting_one_eval_reruns_exactly_its_downstream(embedded_run: Path):
    results = embedded_run / "results"
    target = results / "evals" / "reference-sft" / "smollm2-135m" / "humaneval" / "seed1.json"
    others = {p: p.stat().st_mtime_ns for p in (results / "evals").rglob("seed1.json") if p != target}
    verdicts = {p: p.stat().st_mtime_ns for p in (results / "judge").rglob("*.json")}
    target.unlink()
    proc = _dry_run(embedded_run)
    assert proc.returncode == 0
    assert job_counts(proc.stdout) == {"evaluate": 1, "leaderboard": 1, "status": 1, "all": 1, "total": 4}
    assert str(target.relative_to(embedded_run)) in proc.stdout
    proc = snakemake("--profile", str(ROOT / "profiles" / "default"), "--snakefile", str(ROOT / "Snakefile"),
                     "--directory", str(embedded_run), "--configfile", str(embedded_run / "config.yaml"),
                     "--cores", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(target.read_text())["status"] == "ok"
    assert all(p.stat().st_mtime_ns == t for p, t in others.items())
    assert all(p.stat().st_mtime_ns == t for p, t in verdicts.items())

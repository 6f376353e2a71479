"""`ptb plan`: job counts and requested hours against Snakemake's own plan of the same sweep (dry runs of the real
workflow), the JSON keys, missing staged inputs, a bad config, and how long planning the published matrix takes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from posttrainbench.config import iter_cells, load_config
from posttrainbench.plan import build_plan

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PUBLISHED = ROOT / "config" / "posttrainbench.yaml"
DEFAULT = ROOT / "config" / "config.yaml"


def _ptb(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ptb"), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def _dry_run(*args: str, env: dict | None = None) -> str:
    """The whole sweep as Snakemake plans it (--forceall: whatever is already in results/ or resources/)."""
    # The target first: --configfile takes every word after it.
    proc = subprocess.run([str(BIN / "snakemake"), "all", "--dry-run", "--forceall", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return proc.stdout


def _job_stats(out: str) -> dict[str, int]:
    """Snakemake's "Job stats" table: jobs per rule."""
    table = out.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    rows = [line.split() for line in table.strip().splitlines()[2:]]
    return {rule: int(count) for rule, count in rows if rule != "total"}


def _jobs(out: str) -> list[dict]:
    """Every planned job: its rule and the resources Snakemake will ask the executor for."""
    jobs = []
    for line in out.splitlines():
        if match := re.match(r"^(?:local)?rule (\w+):$", line):
            jobs.append({"rule": match.group(1), "resources": {}})
        elif (match := re.match(r"^\s+resources: (.*)$", line)) and jobs:
            jobs[-1]["resources"] = dict(item.split("=", 1) for item in match.group(1).split(", "))
    return jobs


def _plan_counts(plan: dict) -> dict[str, int]:
    return {rule: r["jobs"] for rule, r in plan["rules"].items() if r["jobs"]}


@pytest.mark.slow
def test_requested_gpu_hours_equal_what_the_slurm_profile_asks_for(tmp_path: Path):
    """The acceptance figure: `ptb plan` of the published matrix against `snakemake -n --profile slurm` of the
    same config, summed job by job (runtime x GPUs). Apptainer, which the profile deploys with and which
    Snakemake asks for its version even in a dry run, cannot be installed here: a stand-in answering only
    `--version` is put on PATH, as in test_slurm.py."""
    stub = tmp_path / "apptainer"
    stub.write_text("#!/bin/sh\necho 'apptainer version 1.3.4'\n")
    stub.chmod(0o755)
    env = {**os.environ, "PATH": os.pathsep.join([str(tmp_path), str(BIN), os.environ.get("PATH", "")])}
    out = _dry_run("--profile", "slurm", "--configfile", str(PUBLISHED.relative_to(ROOT)), env=env)
    plan = build_plan(load_config(PUBLISHED), workdir=tmp_path)

    assert _plan_counts(plan) == _job_stats(out)
    jobs = _jobs(out)
    assert len(jobs) == sum(_job_stats(out).values())
    gpu_hours = sum(int(j["resources"].get("runtime", 0)) * int(j["resources"].get("gpu", 0)) for j in jobs) / 60
    assert gpu_hours > 0
    assert abs(plan["requested"]["gpu_hours"] - gpu_hours) <= 0.10 * gpu_hours
    assert plan["requested"]["gpu_hours"] == pytest.approx(gpu_hours, abs=1e-9)
    # Rule by rule, each cluster job's runtime, memory and GPUs are the plan's.
    for rule, entry in plan["rules"].items():
        if entry["local"] or not entry["jobs"]:
            continue
        asked = {(j["resources"]["runtime"], j["resources"]["mem_mb"], j["resources"].get("gpu", "0"))
                 for j in jobs if j["rule"] == rule}
        assert asked == {(str(entry["runtime_minutes"]), str(entry["mem_mb"]), str(entry["gpus"]))}, rule


def test_default_config_job_counts_equal_the_dag():
    """The embedded default, planned by Snakemake (local executor) and by `ptb plan`: the same jobs per rule."""
    out = _dry_run("--cores", "1")
    plan = build_plan(load_config(DEFAULT), workdir=ROOT)
    assert _plan_counts(plan) == _job_stats(out)
    assert plan["cells"]["total"] == len(list(iter_cells(load_config(DEFAULT))))


def test_json_keys_and_totals_of_the_published_matrix_within_five_seconds(tmp_path: Path):
    started = time.monotonic()
    proc = _ptb("plan", str(PUBLISHED), "--json", "--directory", str(tmp_path))
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    assert elapsed < 5, f"ptb plan took {elapsed:.1f} s"
    plan = json.loads(proc.stdout)
    assert set(plan) == {"config", "format", "cells", "rules", "requested", "evaluation", "api", "disk", "inputs",
                         "missing"}
    assert plan["format"] == "ptb-plan/1"
    assert set(plan["cells"]) == {"total", "post_training", "reference", "audited"}
    for entry in plan["rules"].values():
        assert set(entry) == {"jobs", "local", "threads", "gpus", "mem_mb", "runtime_minutes", "gpu_hours",
                              "cpu_hours"}
    assert set(plan["requested"]) == {"gpu_hours", "cpu_hours", "gpu_type"}
    assert set(plan["evaluation"]) == {"assumptions", "benchmarks", "expected_gpu_hours", "expected_output_tokens",
                                       "max_output_tokens", "over_runtime"}
    for bench in plan["evaluation"]["benchmarks"].values():
        assert set(bench) == {"items", "items_source", "jobs", "rungs", "expected_output_tokens", "max_output_tokens",
                              "expected_minutes_per_job", "requested_minutes_per_job"}
    assert set(plan["api"]) == {"calls", "calls_expected", "calls_max", "usd", "unpriced_models"}
    for row in plan["api"]["calls"]:
        assert set(row) == {"stage", "benchmark", "model", "calls_expected", "calls_max", "input_tokens",
                            "output_tokens", "usd"}
    assert set(plan["disk"]) == {"assumptions", "cleanup", "models", "bytes", "bytes_expected", "bytes_max",
                                 "inodes_expected", "inodes_max"}
    for item in plan["inputs"]:
        assert set(item) == {"path", "kind", "rule", "present"}

    config = load_config(PUBLISHED)
    cells = list(iter_cells(config))
    assert plan["cells"]["total"] == len(cells)
    assert plan["requested"]["gpu_hours"] == pytest.approx(sum(r["gpu_hours"] for r in plan["rules"].values()))
    # Graded benchmarks: gpt-5-mini, the protocol's grader; Arena-Hard plays each item in both orders.
    arena = next(r for r in plan["api"]["calls"] if r["benchmark"] == "arenahardwriting")
    arena_cells = sum(c.benchmark == "arenahardwriting" for c in cells)
    assert arena["model"] == "gpt-5-mini" and arena["calls_expected"] == arena_cells * 250 * 2
    assert arena["calls_max"] == 3 * arena["calls_expected"] and arena["usd"] > 0
    assert plan["api"]["unpriced_models"] == []
    # Nothing is staged in an empty directory: every input is listed as missing.
    assert plan["missing"] == [i["path"] for i in plan["inputs"]] and "containers/agent.sif" in plan["missing"]


def test_missing_inputs_are_listed_and_staged_ones_measured(tmp_path: Path):
    """A workflow directory with the base model and one test set staged: those count as present (the model's size
    and the set's item count are read from them), the rest is listed as missing, with the rule that stages it."""
    model = tmp_path / "resources" / "models" / "smollm2-135m" / "base"
    model.mkdir(parents=True)
    (model / "model.safetensors").write_bytes(b"\0" * 270_000)
    bench = tmp_path / "resources" / "benchmarks" / "gsm8k"
    bench.mkdir(parents=True)
    (bench / "test.jsonl").write_text('{"id": 1}\n{"id": 2}\n{"id": 3}\n')
    (bench / "meta.json").write_text(json.dumps({"benchmark": "gsm8k", "n": 3}))

    plan = build_plan(load_config(DEFAULT), workdir=tmp_path)
    present = {i["path"] for i in plan["inputs"] if i["present"]}
    assert present == {"resources/models/smollm2-135m/base", "resources/benchmarks/gsm8k/test.jsonl"}
    assert "resources/benchmarks/humaneval/test.jsonl" in plan["missing"]
    assert "resources/datasets/gsm8k-train.jsonl" in plan["missing"]
    rules = {i["path"]: i["rule"] for i in plan["inputs"]}
    assert rules["resources/datasets/gsm8k-train.jsonl"] == "stage_training_data"
    assert rules["resources/judge/reference_data.json"] == "judge_reference_data"
    # 270,000 bytes at 2 bytes per parameter; 3 staged items under the config's limit of 4.
    assert plan["disk"]["models"]["smollm2-135m"] == {"params_b": pytest.approx(135e-6), "params_source": "staged",
                                                       "bytes": 270_000}
    gsm8k = plan["evaluation"]["benchmarks"]["gsm8k"]
    assert (gsm8k["items"], gsm8k["items_source"]) == (3, "staged")

    text = _ptb("plan", str(DEFAULT), "--directory", str(tmp_path)).stdout
    assert "missing dataset   resources/datasets/gsm8k-train.jsonl" in text
    assert "resources/models/smollm2-135m/base" not in text.split("staged inputs:")[1]


def test_assumptions_change_the_estimates_not_the_requests(tmp_path: Path):
    """Throughput, prices and the grader model are assumptions of the estimate: the requested hours stay."""
    raw = yaml.safe_load(PUBLISHED.read_text())
    base = build_plan(load_config(PUBLISHED), workdir=tmp_path)
    faster = build_plan(load_config(PUBLISHED), workdir=tmp_path, tokens_per_second=4000)
    assert faster["requested"] == base["requested"]
    startup = base["evaluation"]["assumptions"]["startup_minutes"]
    for name, bench in base["evaluation"]["benchmarks"].items():
        fast = faster["evaluation"]["benchmarks"][name]
        generating = bench["expected_minutes_per_job"] - startup
        assert fast["expected_minutes_per_job"] - startup == pytest.approx(generating / 2)
    # At 20 tokens/s GPQA's 448 items x 8,000 expected tokens need about 50 h: past the 4 h evaluate jobs ask for.
    slow = build_plan(load_config(PUBLISHED), workdir=tmp_path, tokens_per_second=20)
    assert "gpqamain" in slow["evaluation"]["over_runtime"] and base["evaluation"]["over_runtime"] == []

    raw["plan"] = {"prices": {"gpt-5-mini": {"input": 0.5, "output": 4.0}}}
    doubled = build_plan(load_config_from(raw, tmp_path), workdir=tmp_path)
    assert doubled["api"]["usd"] == pytest.approx(2 * base["api"]["usd"])

    raw["evaluation"]["grader"]["model"] = "local-grader"
    unpriced = build_plan(load_config_from(raw, tmp_path), workdir=tmp_path)
    assert unpriced["api"]["unpriced_models"] == ["local-grader"] and unpriced["api"]["usd"] == 0
    assert all(r["usd"] is None for r in unpriced["api"]["calls"])


def load_config_from(raw: dict, tmp_path: Path) -> dict:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_config(path)


def test_a_bad_config_is_one_line_naming_the_key(tmp_path: Path):
    raw = yaml.safe_load(DEFAULT.read_text())
    raw["budget"]["hourz"] = 3
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    proc = _ptb("plan", str(bad))
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "budget.hourz" in lines[0] and "did you mean 'hours'" in lines[0], proc.stderr

    raw = yaml.safe_load(DEFAULT.read_text())
    raw["plan"] = {"output_fraction": 2}
    bad.write_text(yaml.safe_dump(raw))
    proc = _ptb("plan", str(bad))
    assert proc.returncode == 2 and "plan.output_fraction" in proc.stderr and len(proc.stderr.splitlines()) == 1

    proc = _ptb("plan", str(tmp_path / "absent.yaml"))
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1 and "absent.yaml" in proc.stderr

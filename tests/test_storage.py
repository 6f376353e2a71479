"""Node-local workspaces (storage.workspace_dir), the cleanup after judging, and reference rows that link the
staged model instead of copying it. Everything runs for real: the runner, the built-in submit recipe, the
cleanup rule's script."""

from __future__ import annotations

import json
import os
import runpy
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from posttrainbench import storage
from posttrainbench.agents.runner import run_cell
from posttrainbench.cells import Cell
from posttrainbench.config import validate_config
from posttrainbench.evaluation import InfrastructureError

ROOT = Path(__file__).resolve().parents[1]
CELL = Cell("scripted", "tiny", "gsm8k", 1)
BUDGET = {"hours": 0.01, "gpus": 0, "grace_seconds": 1}

AGENT = """
import json, os, pathlib
here = pathlib.Path.cwd()
pathlib.Path("where.txt").write_text(str(here))
(pathlib.Path(".cache") / "huggingface").mkdir(parents=True)
(pathlib.Path(".cache") / "huggingface" / "blob").write_bytes(b"x" * 300_000)
ckpt = pathlib.Path("checkpoint-10"); ckpt.mkdir()
(ckpt / "optimizer.pt").write_bytes(b"o" * 200_000)
(ckpt / "model.safetensors").write_bytes(b"m" * 100_000)
pathlib.Path("train.jsonl").write_text('{"q": "1+1"}\\n')
out = pathlib.Path("final_model"); out.mkdir()
(out / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
(out / "model.safetensors").write_bytes(b"w" * 50_000)
print("working in", here)
"""


def defaults() -> dict:
    return validate_config({"models": {"tiny": {"base": "x"}}, "benchmarks": ["gsm8k"],
                            "agents": {"base": {"type": "builtin", "recipe": "base"}}})["storage"]


def scripted(tmp_path: Path) -> dict:
    script = tmp_path / "agent.py"
    script.write_text(textwrap.dedent(AGENT))
    return {"type": "command", "command": [sys.executable, str(script)]}


def run(tmp_path: Path, spec: dict, storage_config: dict, cell: Cell = CELL, base: Path | None = None) -> dict:
    return run_cell(cell, spec, run_dir=tmp_path / "results" / "run", base_dir=base or tmp_path / "base",
                    instruct_dir=None, train_data=None, budget=BUDGET, sandbox_backend="none", threads=1,
                    config={"storage": storage_config})


def test_a_node_local_workspace_comes_back_without_its_bulk_and_is_removed(tmp_path: Path, monkeypatch):
    scratch = tmp_path / "node-local"
    monkeypatch.setenv("PTB_TEST_SCRATCH", str(scratch))
    settings = {**defaults(), "workspace_dir": "$PTB_TEST_SCRATCH/ptb"}
    record = run(tmp_path, scripted(tmp_path), settings)
    run_dir = tmp_path / "results" / "run"
    assert record["status"] == "ok" and record["attempt"]["workspace"] == "node-local"
    # The agent worked on node-local storage, and nothing of it is left there.
    worked_in = Path((run_dir / "workspace" / "where.txt").read_text())
    assert worked_in.is_relative_to(scratch / "ptb") and not worked_in.exists()
    assert list((scratch / "ptb").iterdir()) == []
    # Checkpoint, record and trace on shared storage; the workspace without caches and training states.
    assert (run_dir / "final_model" / "model.safetensors").stat().st_size == 50_000
    assert json.loads((run_dir / "run.json").read_text()) == record
    assert any("working in" in line for line in (run_dir / "trace.jsonl").read_text().splitlines())
    assert (run_dir / "workspace" / "train.jsonl").is_file()
    assert not (run_dir / "workspace" / ".cache").exists()
    assert not (run_dir / "workspace" / "checkpoint-10" / "optimizer.pt").exists()
    copied = record["workspace_copied_back"]
    assert copied["bytes_left"] >= 600_000 and copied["files_left"] == 3
    assert not list(run_dir.rglob(".*partial*"))


def test_an_unset_variable_in_the_workspace_dir_fails_in_one_line(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("PTB_NOT_SET_ANYWHERE", raising=False)
    with pytest.raises(InfrastructureError, match=r"config key 'storage.workspace_dir' is '\$PTB_NOT_SET_ANYWHERE/x', "
                                                  r"but \$PTB_NOT_SET_ANYWHERE is not set"):
        run(tmp_path, scripted(tmp_path), {**defaults(), "workspace_dir": "$PTB_NOT_SET_ANYWHERE/x"})
    assert not (tmp_path / "results" / "run" / ".lock.json").exists()  # the failed attempt let the cell go


def test_reference_rows_link_the_staged_model_even_with_node_local_workspaces(tmp_path: Path, monkeypatch):
    base = tmp_path / "resources" / "models" / "tiny" / "base"
    base.mkdir(parents=True)
    (base / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
    (base / "model.safetensors").write_bytes(os.urandom(4096))
    monkeypatch.setenv("PTB_TEST_SCRATCH", str(tmp_path / "node-local"))
    settings = {**defaults(), "workspace_dir": "$PTB_TEST_SCRATCH"}
    record = run(tmp_path, {"type": "builtin", "recipe": "base"}, settings, Cell("base", "tiny", "gsm8k", 1), base)
    assert record["status"] == "ok" and record["attempt"]["workspace"] == "run directory"
    published = tmp_path / "results" / "run" / "final_model"
    for name in ("config.json", "model.safetensors"):
        staged, linked = (base / name).stat(), (published / name).stat()
        assert (linked.st_dev, linked.st_ino) == (staged.st_dev, staged.st_ino), name  # one inode: no copy
    assert (base / "model.safetensors").stat().st_nlink >= 2


def test_cleanup_removes_bulk_keeps_records_and_reports_bytes(tmp_path: Path):
    settings = {**defaults(), "adopt_finished_attempt": False}  # the second run is a rerun, not a restart
    first = run(tmp_path, scripted(tmp_path), settings)
    second = run(tmp_path, scripted(tmp_path), settings)  # the first attempt is put aside, with its checkpoint
    run_dir = tmp_path / "results" / "run"
    old = run_dir / ".attempts" / first["attempt"]["attempt_id"]
    assert (old / "final_model" / "model.safetensors").is_file()
    published = {p: p.read_bytes() for p in [run_dir / "run.json", run_dir / "trace.jsonl",
                                              *(run_dir / "final_model").iterdir()]}
    job = SimpleNamespace(input=SimpleNamespace(run=str(run_dir / "run.json")), output=[str(tmp_path / "cleanup.json")],
                          log=[str(tmp_path / "cleanup.log")], rule="cleanup_workspace",
                          params=SimpleNamespace(cleanup=settings["cleanup"]))
    runpy.run_path(str(ROOT / "scripts" / "cleanup_workspace.py"), init_globals={"snakemake": job})
    report = json.loads((tmp_path / "cleanup.json").read_text())
    # Per attempt: the cache blob, the optimizer state, the intermediate checkpoint; the old attempt's final model.
    assert report["files_removed"] == 7 and report["bytes_removed"] == 2 * 600_000 + 50_000, report
    assert {p: p.read_bytes() for p in published} == published  # the published results are untouched
    for workspace in (run_dir / "workspace", old / "workspace"):
        assert (workspace / "train.jsonl").is_file() and (workspace / "where.txt").is_file()
        assert not (workspace / ".cache").exists() and not (workspace / "checkpoint-10").exists()
    assert (old / "run.json").is_file() and (old / "final_model" / "config.json").is_file()
    assert not (old / "final_model" / "model.safetensors").exists()
    assert second["status"] == "ok"
    # Off switch: the rule is not asked for.
    policy = storage.CleanupPolicy(["*.md"], [], 10)
    assert policy.kept("workspace/a/NOTES.md", 5) and not policy.kept("workspace/a/NOTES.md", 11)

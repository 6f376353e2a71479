"""Run one cell's agent: fresh workspace, task prompt, sandboxed command under the budget,
``final_model/`` collected (also after a timeout), and ``run.json`` written atomically."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from .. import __version__
from ..cells import Cell
from ..io import atomic_write_json
from .sandbox import INHERITED_ENV, TraceWriter, get_sandbox, now_iso

log = logging.getLogger(__name__)

RUN_STATUSES = ("ok", "timeout", "error", "no_checkpoint", "invalid_checkpoint")


class AgentNotRunnable(RuntimeError):
    """The configured agent cannot run with this installation (a clear, one-line reason)."""


TASK_TEMPLATE = """\
# Your task

Post-train the base language model in `{base_model}` so that it scores as high as possible on
the **{benchmark}** benchmark. Leave your final checkpoint, in Hugging Face format (config,
safetensors weights, tokenizer with chat template), in `final_model/` inside this directory.

- Time budget: {hours:g} hours of wall-clock time on {gpus} GPU(s). At the deadline your
  processes are stopped; whatever is in `final_model/` then is evaluated.
- Rules: do not train on any benchmark's test data; post-train only the given base model
  (no other model's weights, including its instruct version); do not modify or work around the
  evaluation; use no API or service the configuration forbids.
- Your run is audited: training data, checkpoint provenance and your transcript are checked.
"""


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _archive_previous_attempt(run_dir: Path) -> None:
    """A rerun never destroys an earlier attempt's workspace or checkpoint: move them aside."""
    leftovers = [p for p in (run_dir / "workspace", run_dir / "final_model") if p.exists()]
    if not leftovers:
        return
    (run_dir / ".attempts").mkdir(exist_ok=True)
    attempt = Path(tempfile.mkdtemp(prefix=time.strftime("%Y%m%dT%H%M%S-"), dir=run_dir / ".attempts"))
    for path in leftovers:
        shutil.move(str(path), attempt / path.name)
    log.warning("moved the previous attempt's %s to %s", ", ".join(p.name for p in leftovers), attempt)


def builtin_command(recipe: str, spec: dict, cell: Cell, base_dir: Path, instruct_dir: Path | None,
                    train_data: Path | None, workspace: Path) -> list[str]:
    """The command a built-in agent runs inside its workspace."""
    python = sys.executable
    out = workspace / "final_model"
    if recipe == "base":
        return [python, "-m", "posttrainbench.agents.submit", "--src", str(base_dir), "--dst", str(out)]
    if recipe == "instruct":
        if instruct_dir is None:
            raise AgentNotRunnable(f"agent 'instruct' needs models.{cell.model}.instruct in the config")
        return [python, "-m", "posttrainbench.agents.submit", "--src", str(instruct_dir), "--dst", str(out)]
    if recipe == "sft":
        sft = spec.get("sft", {})
        if train_data is None:
            raise AgentNotRunnable("the sft recipe needs its staged training data")
        command = [
            python, "-m", "posttrainbench.recipes.sft",
            "--base", str(base_dir), "--train", str(train_data), "--out", str(out),
            "--max-steps", str(sft.get("max_steps", 30)),
            "--learning-rate", str(sft.get("learning_rate", 5e-5)),
            "--batch-size", str(sft.get("batch_size", 4)),
            "--max-length", str(sft.get("max_length", 512)),
            "--seed", str(cell.seed),
            "--bf16", str(sft.get("bf16", "auto")).lower(),
        ]
        if sft.get("max_examples"):
            command += ["--max-examples", str(sft["max_examples"])]
        return command
    raise AgentNotRunnable(f"unknown built-in recipe {recipe!r}")


def agent_command(spec: dict, cell: Cell, **paths) -> list[str]:
    if spec["type"] == "builtin":
        return builtin_command(spec["recipe"], spec, cell, workspace=paths["workspace"],
                               base_dir=paths["base_dir"], instruct_dir=paths.get("instruct_dir"),
                               train_data=paths.get("train_data"))
    if spec["type"] == "command":
        return list(spec["command"])
    raise AgentNotRunnable(
        f"agent '{cell.agent}' is of type '{spec['type']}': coding-agent CLIs run only inside an "
        "isolating sandbox (apptainer or bubblewrap), which this installation does not provide yet"
    )


def _agent_env(workspace: Path, threads: int, cell: Cell, base_dir: Path, deadline: float) -> dict[str, str]:
    env = {k: os.environ[k] for k in INHERITED_ENV if k in os.environ}
    env.update(
        PTB_WORKSPACE=str(workspace),
        PTB_BASE_MODEL=str(base_dir),
        PTB_BENCHMARK=cell.benchmark,
        PTB_SEED=str(cell.seed),
        PTB_DEADLINE=str(int(deadline)),
        HOME=str(workspace),
        HF_HOME=str(workspace / ".cache" / "huggingface"),
        HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"),
        HF_DATASETS_OFFLINE=os.environ.get("HF_DATASETS_OFFLINE", "1"),
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
        OMP_NUM_THREADS=str(threads),
    )
    # The interpreter running the pipeline must find its own packages (a venv's site-packages).
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "/usr/bin:/bin")])
    return env


def run_cell(
    cell: Cell,
    spec: dict,
    *,
    run_dir: Path,
    base_dir: Path,
    instruct_dir: Path | None,
    train_data: Path | None,
    budget: dict,
    sandbox_backend: str,
    threads: int,
    config: dict,
) -> dict:
    """Run the agent of ``cell`` and return (and write) its run record."""
    # The agent's working directory is its workspace: every path it is given must be absolute.
    run_dir, base_dir = run_dir.resolve(), base_dir.resolve()
    instruct_dir = instruct_dir.resolve() if instruct_dir else None
    train_data = train_data.resolve() if train_data else None
    run_dir.mkdir(parents=True, exist_ok=True)
    _archive_previous_attempt(run_dir)
    workspace = run_dir / "workspace"
    workspace.mkdir()
    hours = float(budget["hours"])
    (workspace / "TASK.md").write_text(
        TASK_TEMPLATE.format(base_model=base_dir, benchmark=cell.benchmark, hours=hours, gpus=budget["gpus"])
    )
    sandbox = get_sandbox(sandbox_backend)
    if sandbox.name == "none":
        log.warning("SANDBOX DISABLED: agent '%s' runs as a plain subprocess (development only)", cell.agent)
    trace_path = run_dir / "trace.jsonl"
    trace_path.unlink(missing_ok=True)
    trace = TraceWriter(trace_path)
    record: dict = {
        "agent": cell.agent, "model": cell.model, "benchmark": cell.benchmark, "seed": cell.seed,
        "agent_type": spec["type"], "recipe": spec.get("recipe"), "sandbox": sandbox.name,
        "budget_hours": hours, "gpus": budget["gpus"], "grace_seconds": budget["grace_seconds"],
        "pipeline_version": __version__, "config_sha256": config_hash(config),
    }
    try:
        command = agent_command(spec, cell, workspace=workspace, base_dir=base_dir,
                                instruct_dir=instruct_dir, train_data=train_data)
        outcome = sandbox.run(
            command, workspace=workspace,
            env=_agent_env(workspace, threads, cell, base_dir, time.time() + hours * 3600),
            timeout_seconds=hours * 3600, grace_seconds=budget["grace_seconds"], trace=trace,
        )
    finally:
        trace.close()
    final_model = _collect_checkpoint(workspace, run_dir)
    # Whatever is in final_model/ is evaluated, whatever the status says about how the run ended.
    if outcome.timed_out:
        status = "timeout"
    elif outcome.exit_code != 0:
        status = "error"
    elif final_model is None:
        status = "no_checkpoint"
    else:
        status = "ok"
    record.update(
        status=status,
        started=outcome.started,
        ended=outcome.ended,
        wall_seconds=outcome.wall_seconds,
        budget_fraction=round(outcome.wall_seconds / (hours * 3600), 4),
        exit_code=outcome.exit_code,
        timed_out=outcome.timed_out,
        gpu_hours=round(outcome.wall_seconds / 3600 * budget["gpus"], 4),
        final_model=str(final_model) if final_model else None,
        recorded=now_iso(),
    )
    atomic_write_json(run_dir / "run.json", record)
    return record


def _collect_checkpoint(workspace: Path, run_dir: Path) -> Path | None:
    """Move ``workspace/final_model`` to the cell's ``final_model`` (one rename), if there is one."""
    produced = workspace / "final_model"
    if not produced.is_dir() or not any(produced.iterdir()):
        return None
    target = run_dir / "final_model"
    os.replace(produced, target)
    return target

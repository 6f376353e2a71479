"""Run one cell's agent: fresh workspace, task prompt, sandboxed command under the budget,
``final_model/`` collected (also after a timeout), and ``run.json`` written atomically.

Built-in agents and coding-agent CLIs take the same path: a command, an environment that holds
only the agent's own key, and a :class:`~.sandbox.SandboxSpec` saying what it may see."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import math
import os
import re
import shutil
import subprocess
import stat
import sys
import time
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import yaml

from .. import __version__
from ..cells import Cell
from .. import accounting, attempt_lock, storage
from ..io import atomic_write_json, atomic_write_text
from . import workspace as ws
from .collect import DEFAULT_CAP_FACTOR, Collected, collect_checkpoint, size_text, tree_bytes
from .fswalk import Walk, open_regular, read_chunks
from .options import REPROMPT_MIN_MINUTES, adapters, agent_option_problem
from .sandbox import (INHERITED_ENV, TOOLS_MOUNT, InfrastructureError, RunOutcome, Sandbox, SandboxError,
                      SandboxSpec, TraceWriter, get_sandbox, now_iso, sandbox_host_uid)

log = logging.getLogger(__name__)

RUN_STATUSES = ("ok", "timeout", "error", "no_checkpoint", "invalid_checkpoint")


class AgentNotRunnable(RuntimeError):
    """The configured agent cannot run with this installation (a clear, one-line reason)."""


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


PROJECT_ROOT = Path(__file__).resolve().parents[3]
AGENT_CLI_BIN = PROJECT_ROOT / "envs" / "agents" / "node_modules" / ".bin"
# Where the agent image (containers/agent.def) installs the same pinned CLIs, and its Node.js 22.
IMAGE_CLI_BIN = PurePosixPath("/opt/ptb/envs/agents/node_modules/.bin")
CLI_TYPES = ("claude-code", "codex", "gemini-cli", "opencode", "openai-compatible")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def builtin_command(recipe: str, spec: dict, cell: Cell, base_dir: Path, instruct_dir: Path | None,
                    train_data: Path | None, workspace: Path, python: str = sys.executable,
                    chat_template: Path | None = None) -> list[str]:
    """The command a built-in agent runs inside its workspace; the SFT recipe trains in the Jinja template
    file ``chat_template`` (the one evaluation forces on the model's family) when given."""
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
        if chat_template is not None:
            command += ["--chat-template", str(chat_template)]
        return command
    raise AgentNotRunnable(f"unknown built-in recipe {recipe!r}")


def evaluation_chat_template(config: dict | None, cell: Cell, base_dir: Path, workspace: Path) -> Path | None:
    """The chat template evaluation will force on this cell's checkpoint, written into the workspace for a
    built-in recipe to train in; None when the family is unknown or the published templates are not staged.
    (The sandbox's copy of the package holds the recipes, not the evaluation harness.)"""
    from ..benchmarks import get_spec
    from ..evaluation import resolve_family
    from ..templates import TemplateError, chat_template

    config = config or {}
    family = resolve_family(config.get("models", {}).get(cell.model, {}).get("family", "auto"), base_dir)
    if family is None:
        return None
    use = config.get("evaluation", {}).get("templates", {}).get("use", "project")
    try:
        text, _label, _sha = chat_template(family, get_spec(cell.benchmark).template, use,
                                           Path("resources/templates"))
    except TemplateError:
        return None
    path = workspace / f"chat_template.{family}.jinja"
    path.write_text(text)
    return path


def _task_prompt(workspace: Path, note: str | None = None) -> str:
    prompt = (f"You are working in {workspace}. Read TASK.md there and carry out the task it describes, "
              "without asking questions: nobody will answer. Finish by leaving your checkpoint in final_model/.")
    return f"{prompt} {note.strip()}" if note else prompt


def reprompt_message(seconds_left: float) -> str:
    """What a resumed session is told: the time left, and to keep improving."""
    minutes = int(seconds_left // 60)
    return (f"Time is not up: {minutes // 60}h {minutes % 60:02d}m remain before the deadline. Keep working to "
            "improve the score of the checkpoint in final_model/.")


def opencode_endpoint_config(spec: dict) -> str:
    """OpenCode's inline config for an OpenAI-compatible endpoint (the open-weights agent)."""
    key_env = spec.get("api_key_env")
    provider = {
        "npm": "@ai-sdk/openai-compatible",
        "name": "OpenAI-compatible endpoint",
        "options": {"baseURL": spec["base_url"], "apiKey": f"{{env:{key_env}}}" if key_env else "none"},
        "models": {spec["model"]: {"name": spec["model"]}},
    }
    # The served context length bounds the CLI's requests (its max_tokens and when it compacts).
    limits = {"context": spec.get("context_tokens"), "output": spec.get("max_output_tokens")}
    if any(limits.values()):
        provider["models"][spec["model"]]["limit"] = {k: v for k, v in limits.items() if v}
    config = {"$schema": "https://opencode.ai/config.json", "autoupdate": False, "share": "disabled",
              "provider": {"ptb-endpoint": provider}, "model": f"ptb-endpoint/{spec['model']}"}
    return json.dumps(config)


def _fill(template: str, values: dict[str, str]) -> str:
    """Fill the adapter's {placeholders}; other braces (JSON in an env value) stay as they are."""
    return re.sub(r"\{([a-z_]+)\}", lambda m: values.get(m.group(1), m.group(0)), template)


def _check_options(spec: dict, cell: Cell) -> None:
    problem = agent_option_problem(cell.agent, spec)
    if problem:
        raise AgentNotRunnable(problem)


def cli_command(spec: dict, cell: Cell, workspace: Path, *, message: str | None = None, backend: str | None = None
                ) -> tuple[list[str], dict[str, str], dict]:
    """argv, extra environment (the agent's own keys included) and adapter of a CLI agent; with ``message``,
    the command that resumes its latest session with that message (re-prompting). Under the apptainer
    ``backend`` the CLI is the agent image's own (IMAGE_CLI_BIN); elsewhere the host's envs/agents, else PATH.
    Creates the adapter's ``home_dirs`` and, with a ``base_url``, its ``base_url.files`` in the workspace."""
    adapter = adapters()[spec["type"]]
    _check_options(spec, cell)
    if spec["type"] == "openai-compatible" and not spec.get("base_url"):
        raise AgentNotRunnable(f"config key 'agents.{cell.agent}.base_url' is required for type openai-compatible")
    executable = AGENT_CLI_BIN / adapter["executable"]
    if backend == "apptainer":
        executable = Path(IMAGE_CLI_BIN / adapter["executable"])  # checked when the image is built (%test)
    elif not executable.exists():
        found = shutil.which(adapter["executable"])
        if not found:
            raise AgentNotRunnable(
                f"agent '{cell.agent}' needs the '{adapter['executable']}' CLI: not in {AGENT_CLI_BIN} "
                "(make install) nor on PATH")
        executable = Path(found)
    values = {
        "prompt": _task_prompt(workspace, adapter.get("task_note")), "model": spec["model"], "home": str(workspace),
        "reasoning_effort": spec.get("reasoning_effort") or "", "base_url": spec.get("base_url") or "",
        "message": message or "",
        # The variable holding the key, for a CLI configured to read it by name (a custom endpoint).
        "key_env": spec.get("api_key_env") or next(iter(adapter.get("keys") or []), ""),
    }
    if spec["type"] == "openai-compatible":
        values["opencode_endpoint_config"] = opencode_endpoint_config(spec)
    template = adapter["resume_argv"] if message is not None else adapter["argv"]
    argv = [str(executable)] + [_fill(a, values) for a in template]
    env = {k: _fill(str(v), values) for k, v in (adapter.get("env") or {}).items()}
    for folder in adapter.get("home_dirs") or []:  # what the CLI refuses to start without
        (workspace / folder).mkdir(parents=True, exist_ok=True)
    endpoint = adapter.get("base_url") or {}
    if spec.get("base_url") and endpoint:
        # The model API at another address (a gateway, or a local server in the tests).
        argv += [_fill(a, values) for a in endpoint.get("args", [])]
        env.update({k: _fill(str(v), values) for k, v in (endpoint.get("env") or {}).items()})
        for relative, content in (endpoint.get("files") or {}).items():
            (workspace / relative).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(workspace / relative, _fill(content, values))
    effort = adapter.get("reasoning_effort") or {}
    if spec.get("reasoning_effort"):
        argv += [_fill(a, values) for a in effort.get("args", [])]
        env.update({k: _fill(str(v), values) for k, v in (effort.get("env") or {}).items()})
    login = adapter.get("credentials") or {}
    if spec.get("credentials_file"):
        # A subscription login: the CLI reads its own credentials file; no API key enters the sandbox.
        argv += [_fill(a, values) for a in login.get("args", [])]
        env.update({k: _fill(str(v), values) for k, v in (login.get("env") or {}).items()})
        argv += list(spec.get("extra_args", []))
        return argv, env, adapter
    argv += list(spec.get("extra_args", []))
    keys = list(adapter.get("keys") or [])
    if adapter.get("api_key_env_required") and not spec.get("api_key_env"):
        raise AgentNotRunnable(f"config key 'agents.{cell.agent}.api_key_env' must name the variable holding "
                               f"the API key of model {spec['model']!r} (type {spec['type']})")
    if spec.get("api_key_env"):
        keys = [spec["api_key_env"]] + keys[1:]
    missing = [k for k in keys if not os.environ.get(k)]
    if missing:
        raise AgentNotRunnable(f"agent '{cell.agent}' needs {', '.join(missing)} in the pipeline's environment")
    env.update({k: os.environ[k] for k in keys})
    return argv, env, adapter


def stage_credentials(spec: dict, cell: Cell, workspace: Path, private: Path, host_uid: int) -> dict[str, Path]:
    """A subscription login for this cell only: the file named by ``credentials_file`` copied into the run's
    private directory (mode 0400, owned by the sandbox's user on the host), to be mounted read-only where the
    CLI reads it under HOME. Returns {path inside: copy}; empty without ``credentials_file``."""
    source = spec.get("credentials_file")
    if not source:
        return {}
    source = Path(os.path.expanduser(str(source)))
    try:
        data = source.read_bytes()
    except OSError as exc:
        raise AgentNotRunnable(f"config key 'agents.{cell.agent}.credentials_file' names {source}, which cannot "
                               f"be read: {exc.strerror or exc}") from None
    folder = private / "credentials"
    folder.mkdir(mode=0o711)
    folder.chmod(0o711)  # traversable by the sandbox's user, not listable
    copy = folder / source.name
    fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    if os.geteuid() == 0:
        os.chown(copy, host_uid, host_uid)
    copy.chmod(0o400)
    inside = workspace / adapters()[spec["type"]]["credentials"]["path"]
    # The empty mount point, made now so every backend mounts onto a file that exists.
    inside.parent.mkdir(parents=True, exist_ok=True)
    inside.touch(exist_ok=True)
    return {str(inside): copy}


def _remove_mount_points(files: dict[str, Path]) -> list[str]:
    """The empty files the sandbox created to mount credentials on, removed from the workspace (never
    anything else: what is not an empty regular file there now is left, and named)."""
    left = []
    for inside in files:
        path = Path(inside)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_size == 0:
            path.unlink()
        else:
            left.append(f"{inside}: not the empty mount point the sandbox made; left in place")
    return left


def _agent_env(workspace: Path, threads: int, cell: Cell, base_dir: Path, deadline: float,
               gpus: int, network: str = "open") -> dict[str, str]:
    env = {k: os.environ[k] for k in INHERITED_ENV if k in os.environ}
    # The hub is the agent's to use wherever the network reaches it (as published); the pipeline's own
    # offline setting is for its staging and evaluation, not the agent's. With no network, offline mode
    # spares the agent's hub clients their timeouts.
    offline = "1" if network == "none" else "0"
    env.update(
        PTB_WORKSPACE=str(workspace),
        PTB_BASE_MODEL=str(base_dir),
        PTB_BENCHMARK=cell.benchmark,
        PTB_SEED=str(cell.seed),
        PTB_DEADLINE=str(int(deadline)),
        HOME=str(workspace),
        HF_HOME=str(workspace / ".cache" / "huggingface"),
        HF_HUB_OFFLINE=offline,
        HF_DATASETS_OFFLINE=offline,
        TRANSFORMERS_OFFLINE=offline,
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
        OMP_NUM_THREADS=str(threads),
    )
    # The GPU budget: none means none visible; otherwise the scheduler's assignment, or the first N.
    if gpus <= 0:
        env["CUDA_VISIBLE_DEVICES"] = ""
    elif "CUDA_VISIBLE_DEVICES" not in env:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(gpus))
    # The interpreter running the pipeline must find its own packages (a venv's site-packages).
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "/usr/bin:/bin")])
    return env


def _dig(event: dict, dotted: str):
    for part in dotted.split("."):
        if not isinstance(event, dict):
            return None
        event = event.get(part)
    return event


USAGE_LINE_LIMIT = 1 << 20  # a usage event is small; longer trace lines are skipped unparsed
TRANSCRIPT_MAX_FILES = 1_000
TRANSCRIPT_MAX_BYTES = 1 << 30
TRANSCRIPT_MAX_DEPTH = 16


def usage_from_trace(trace_path: Path, rule: dict | None) -> dict | None:
    """Token usage and cost summed over the CLI's JSON events on stdout (None if it reports none).

    The trace is streamed a bounded line at a time: it holds whatever the agent printed."""
    if not rule or not trace_path.is_file():
        return None
    totals: dict[str, float] = {}
    events = 0
    with open(trace_path, "rb") as handle:
        while line := handle.readline(USAGE_LINE_LIMIT):
            if not line.endswith(b"\n") and len(line) == USAGE_LINE_LIMIT:
                while (rest := handle.readline(USAGE_LINE_LIMIT)) and not rest.endswith(b"\n"):
                    pass  # the remainder of an over-long line
                continue
            try:
                record = json.loads(line)
                if record.get("type") != "stdout" or not record.get("text", "").startswith("{"):
                    continue
                event = json.loads(record["text"])
            except (ValueError, AttributeError, TypeError, RecursionError):
                continue
            if not isinstance(event, dict) or any(_dig(event, k) != v for k, v in rule.get("match", {}).items()):
                continue
            events += 1
            for name in ("input_tokens", "output_tokens", "cost_usd"):
                value = _dig(event, rule[name]) if rule.get(name) else None
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    totals[name] = totals.get(name, 0) + value
    if not events:
        return None
    return {"events": events, **{k: round(v, 6) if k == "cost_usd" else int(v) for k, v in totals.items()}}


def _glob_match(parts: tuple[str, ...], pattern: tuple[str, ...]) -> bool:
    """Whether a relative path's components match a glob's (``**`` = any number of directories)."""
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_glob_match(parts[i:], pattern[1:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], pattern[0]) and _glob_match(parts[1:], pattern[1:])


def _copy_transcripts(workspace: Path, patterns: list[str], dest: Path) -> tuple[list[str], list[str]]:
    """Copy the CLI's session files matching ``patterns`` (regular files only, never through a symlink,
    within bounds); returns what was copied (relative to the run directory) and what was left out, and why."""
    copied: list[str] = []
    skipped: list[str] = []
    budget = TRANSCRIPT_MAX_BYTES
    for pattern in patterns or []:
        pattern_parts = tuple(PurePosixPath(pattern).parts)
        fixed = 0
        while fixed < len(pattern_parts) - 1 and not any(c in pattern_parts[fixed] for c in "*?["):
            fixed += 1
        start = workspace.joinpath(*pattern_parts[:fixed])
        prefix = pattern_parts[:fixed]
        if any(stat.S_ISLNK(os.lstat(p).st_mode) for p in _existing_chain(workspace, prefix)):
            skipped.append(f"{pattern}: its directory is reached through a symlink")
            continue
        if not start.is_dir():
            continue
        walk = Walk(TRANSCRIPT_MAX_DEPTH, 20_000)
        for entry in walk.iter(start):
            parts = prefix + tuple(entry.relative.split("/"))
            if not _glob_match(parts, pattern_parts):
                continue
            relative = "/".join(parts)
            if not stat.S_ISREG(entry.st.st_mode):
                skipped.append(f"{relative}: a {entry.kind}")
                continue
            if len(copied) >= TRANSCRIPT_MAX_FILES or entry.st.st_size > budget:
                skipped.append(f"{relative}: over the transcript bounds ({TRANSCRIPT_MAX_FILES} files, "
                               f"{TRANSCRIPT_MAX_BYTES} bytes)")
                continue
            target = dest.joinpath(*parts)
            try:
                fd = open_regular(entry)
            except (OSError, ValueError) as exc:
                skipped.append(f"{relative}: {getattr(exc, 'strerror', None) or exc}")
                continue
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                with open(target, "wb") as out:
                    for chunk in read_chunks(fd, entry.st.st_size):
                        out.write(chunk)
            finally:
                os.close(fd)
            budget -= entry.st.st_size
            copied.append(str(target.relative_to(dest.parent)))
        skipped += [f"{'/'.join(prefix + (where,)) if where != '.' else start.name}: {why}"
                    for where, why in walk.problems]
    return copied, skipped


def _existing_chain(root: Path, parts: tuple[str, ...]) -> list[Path]:
    """The existing paths root/p1, root/p1/p2, ... (to check none of them is a symlink)."""
    chain, path = [], root
    for part in parts:
        path = path / part
        if not os.path.lexists(path):
            break
        chain.append(path)
    return chain


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(PROJECT_ROOT), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _forwards(spec: dict, network: str) -> list[tuple[str, int]]:
    """An endpoint on the host's loopback, exposed inside the sandbox under the proxy policy."""
    if network != "proxy" or not spec.get("base_url"):
        return []
    url = urlsplit(spec["base_url"])
    if url.hostname in LOOPBACK:
        return [(url.hostname if url.hostname != "localhost" else "127.0.0.1",
                 url.port or (443 if url.scheme == "https" else 80))]
    return []


def run_cell(cell: Cell, spec: dict, *, run_dir: Path, config: dict, **options) -> dict:
    """Run the agent of ``cell`` as a new attempt and return (and publish) its run record; see
    :func:`_run_attempt` for ``options``.

    The attempt holds the cell's lock (:mod:`..attempt_lock`) from before the agent starts until its
    results are published: a job that finds another attempt alive raises ``AttemptLive`` and runs nothing.
    With ``storage.adopt_finished_attempt``, an earlier attempt that finished with the same configuration
    but whose declared outputs were deleted (a restarted driver) is published again instead of re-run.
    The workspace is on node-local storage when ``storage.workspace_dir`` is set (not for the reference
    recipes, which hard-link the staged model and train nothing)."""
    settings = (config or {}).get("storage") or {}
    run_dir = Path(run_dir).resolve()
    reference = spec.get("type") == "builtin" and spec.get("recipe") in ("base", "instruct")
    digest = config_hash(config)

    def same_attempt(record: dict) -> bool:
        return ((record.get("agent"), record.get("model"), record.get("benchmark"), record.get("seed"))
                == (cell.agent, cell.model, cell.benchmark, cell.seed) and record.get("config_sha256") == digest)

    attempt = storage.begin(run_dir, cell.key, workspace_dir=None if reference else settings.get("workspace_dir"),
                            adopt=same_attempt if settings.get("adopt_finished_attempt", False) else None)
    if attempt.adopted is not None:
        return attempt.adopted
    try:
        return _run_attempt(cell, spec, cell_attempt=attempt, run_dir=run_dir, config=config, **options)
    except BaseException:
        attempt.publish_trace()
        raise
    finally:
        attempt.close()


def _run_attempt(
    cell: Cell,
    spec: dict,
    *,
    cell_attempt: "storage.Attempt",
    run_dir: Path,
    base_dir: Path,
    instruct_dir: Path | None,
    train_data: Path | None,
    budget: dict,
    sandbox_backend: str = "none",
    threads: int,
    config: dict,
    benchmark_dir: Path | None = None,
    sandbox_config: dict | None = None,
) -> dict:
    """Run the agent of ``cell`` and return (and write) its run record.

    ``sandbox_config`` is the config's ``sandbox`` section (backend, network, image,
    allowed_hosts, eval_helper); ``sandbox_backend`` alone selects a backend with the defaults.
    """
    sandbox_config = dict(sandbox_config or {"backend": sandbox_backend})
    network = sandbox_config.get("network", "open")
    # The agent's working directory is its workspace: every path it is given must be absolute.
    run_dir, base_dir = run_dir.resolve(), base_dir.resolve()
    instruct_dir = instruct_dir.resolve() if instruct_dir else None
    train_data = train_data.resolve() if train_data else None
    benchmark_dir = benchmark_dir.resolve() if benchmark_dir else None
    workspace = cell_attempt.workspace  # made by storage.begin, in the attempt's own directory or node-local
    private = run_dir / ".sandbox"  # the pipeline's scratch for this run; never visible inside
    shutil.rmtree(private, ignore_errors=True)
    private.mkdir()
    hours = float(budget["hours"])
    gpus = int(budget["gpus"])
    # Every attempt's SLURM job, noted before it can die, so the cell's GPU-hours sum all attempts.
    attempts = accounting.record_attempt(run_dir, gpus)
    timeout = hours * 3600
    deadline = time.time() + timeout

    sandbox: Sandbox = get_sandbox(sandbox_config.get("backend", "none"), image=sandbox_config.get("image"))
    if sandbox.name == "bubblewrap" and gpus > 0 and not sandbox_config.get("allow_bubblewrap_with_gpus"):
        raise SandboxError(f"budget.gpus is {gpus} but the sandbox is bubblewrap (the pipeline's environment, no "
                           "CUDA stack of the agent image): use backend apptainer, or set "
                           "sandbox.allow_bubblewrap_with_gpus: true")
    if not sandbox.isolating:
        log.warning("SANDBOX DISABLED: agent '%s' runs as a plain subprocess (development only)", cell.agent)
    if spec["type"] in CLI_TYPES and not sandbox.isolating:
        raise AgentNotRunnable(
            f"agent '{cell.agent}' is of type '{spec['type']}': coding-agent CLIs run only inside an "
            "isolating sandbox (config key 'sandbox.backend': auto, bubblewrap or apptainer)")

    helper_cfg = sandbox_config.get("eval_helper", {"enabled": True, "limit": 20})
    helper = None
    if helper_cfg.get("enabled", True) and benchmark_dir is not None and spec["type"] != "builtin":
        helper = ws.install_eval_helper(workspace, cell.benchmark, benchmark_dir,
                                        limit=int(helper_cfg.get("limit", 20)),
                                        evaluation=config.get("evaluation", {}),
                                        family=config.get("models", {}).get(cell.model, {}).get("family"),
                                        templates_dir=Path("resources/templates"))
    ws.write_task(workspace, base_model=base_dir, benchmark=cell.benchmark, hours=hours, gpus=gpus,
                  deadline=int(deadline), grace=budget["grace_seconds"], network=network, helper=helper)
    for source in spec.get("files", []):  # a command agent's own program: copied, never bound
        source = Path(source)
        if not source.exists():
            raise AgentNotRunnable(f"config key 'agents.{cell.agent}.files' names {source}, which does not exist")
        copy = shutil.copytree if source.is_dir() else shutil.copy2
        copy(source, workspace / source.name)
    helper_root = workspace / ws.HELPER_DIR
    harness_manifest = ws.manifest(helper_root, workspace)

    trace_path = cell_attempt.dir / "trace.jsonl"  # published (linked) to the run directory at the end
    trace = TraceWriter(trace_path)
    record: dict = {
        "agent": cell.agent, "model": cell.model, "benchmark": cell.benchmark, "seed": cell.seed,
        "agent_type": spec["type"], "recipe": spec.get("recipe"), "agent_model": spec.get("model"),
        "sandbox": sandbox.name, "network": network, "image": getattr(sandbox, "image", None),
        "budget_hours": hours, "gpus": gpus, "grace_seconds": budget["grace_seconds"],
        "pipeline_version": __version__, "commit": _git_commit(), "config_sha256": config_hash(config),
        "harness_manifest": harness_manifest, "attempt": cell_attempt.summary(),
    }
    env = _agent_env(workspace, threads, cell, base_dir, deadline, gpus, network)
    box = SandboxSpec(workspace=workspace, network=network, gpus=gpus, private_dir=private,
                      read_only=[p for p in (base_dir, instruct_dir, train_data) if p is not None],
                      allowed_hosts=sandbox_config.get("allowed_hosts"), forwards=_forwards(spec, network),
                      scratch_root=sandbox_config.get("scratch_dir"),
                      **{k: budget[k] for k in ("max_processes", "disk_gb", "max_files", "tmp_mb", "shm_mb") if k in budget})
    if sandbox.isolating:
        box.mapped[TOOLS_MOUNT] = ws.install_tools(private / "tools")
        env["PYTHONPATH"] = f"{TOOLS_MOUNT}/python"
        # The host's TMPDIR (a job's scratch on a cluster) does not exist inside: the sandbox's own /tmp does.
        env["TMPDIR"] = "/tmp"
    adapter: dict = {}
    outcome = None
    sessions: list[dict] = []
    credential_mounts: dict[str, Path] = {}
    mount_problems: list[str] = []
    try:
        try:
            if spec["type"] == "builtin":
                command = builtin_command(spec["recipe"], spec, cell, base_dir=base_dir, instruct_dir=instruct_dir,
                                          train_data=train_data, workspace=workspace, python=sandbox.python,
                                          chat_template=evaluation_chat_template(config, cell, base_dir, workspace)
                                          if spec["recipe"] == "sft" else None)
            elif spec["type"] == "command":
                _check_options(spec, cell)
                command = list(spec["command"])
            else:
                command, extra_env, adapter = cli_command(spec, cell, workspace, backend=sandbox.name)
                env.update(extra_env)
                if sandbox.name != "apptainer" and AGENT_CLI_BIN.is_dir():  # the image has its own
                    box.read_only.append(AGENT_CLI_BIN.parent.resolve())
                    env["PATH"] = os.pathsep.join([str(AGENT_CLI_BIN), env["PATH"]])
                if spec.get("credentials_file"):
                    if not sandbox.isolating:
                        raise AgentNotRunnable(f"config key 'agents.{cell.agent}.credentials_file' needs an "
                                               "isolating sandbox")
                    credential_mounts = stage_credentials(spec, cell, workspace, private, sandbox_host_uid())
                    box.files.update(credential_mounts)
            outcome, sessions = _run_sessions(sandbox, spec, cell, command, workspace, env, box, trace, budget,
                                              deadline)
        except (AgentNotRunnable, InfrastructureError) as exc:
            # The pipeline could not run the agent: no run.json, the job fails (and is retried).
            trace.event("not_runnable", error=str(exc))
            raise
    finally:
        trace.close()
        mount_problems = _remove_mount_points(credential_mounts)
        shutil.rmtree(private, ignore_errors=True)  # tools, sockets, credentials, the env file with the agent's key

    # From here on the agent has run: whatever it left, and whatever goes wrong reading it, becomes part
    # of the record; run.json is always written.
    runner_errors: list[str] = []

    def attempt(step: str, compute, fallback):
        try:
            return compute()
        except Exception as exc:  # noqa: BLE001 - recorded in run.json, logged with its traceback
            log.exception("after the agent ran, %s failed", step)
            runner_errors.append(f"{step}: {type(exc).__name__}: {exc}".splitlines()[0][:500])
            return fallback

    max_bytes, cap_source = attempt("checkpoint cap", lambda: checkpoint_cap(budget, base_dir), (None, ""))
    # The base/instruct recipes hard-link the staged model by construction: only they may.
    trusted: tuple[Path, ...] = ()
    if spec["type"] == "builtin" and spec.get("recipe") in ("base", "instruct"):
        source = base_dir if spec["recipe"] == "base" else instruct_dir
        trusted = (source,) if source is not None else ()
    collected = attempt("checkpoint collection", lambda: collect_checkpoint(
        workspace / "final_model", cell_attempt.dir / "final_model", workspace=workspace, max_bytes=max_bytes,
        cap_source=cap_source, trusted_sources=trusted), None)
    if collected is None:
        collected = Collected(None, f"the checkpoint could not be collected ({runner_errors[-1]})", present=True)
    final_model = collected.path
    # A checkpoint that was left but rejected is the outcome, however the run ended (timed_out and
    # exit_code say that); otherwise whatever is in final_model/ is evaluated, whatever the status says.
    if final_model is None and collected.present:
        status = "invalid_checkpoint"
    elif outcome.timed_out:
        status = "timeout"
    elif outcome.exit_code != 0:
        status = "error"
    elif final_model is None:
        status = "no_checkpoint"
    else:
        status = "ok"
    reason = None
    if final_model is None:
        reason = f"{collected.reason}: the cell scores as the base model"
    manifest_after = attempt("hashing evaluation/", lambda: ws.manifest(helper_root, workspace),
                             {ws.HELPER_DIR: ws.UNHASHED + "hashing failed"})
    transcripts, transcript_problems = attempt(
        "copying transcripts", lambda: _copy_transcripts(workspace, adapter.get("transcript", []),
                                                         cell_attempt.dir / "transcript"), ([], []))
    if cell_attempt.scratch is not None:
        # The node-local workspace comes back for the judge without its bulky parts (storage.cleanup.remove).
        remove = storage.CleanupPolicy(["*"], ((config or {}).get("storage") or {}).get("cleanup", {})
                                       .get("remove", []), None)
        record["workspace_copied_back"] = attempt(
            "copying the workspace back", lambda: storage.copy_back(
                workspace, cell_attempt.dir / "workspace", lambda rel, size: remove.kept(f"workspace/{rel}", size)), None)
    record.update(
        status=status,
        reason=reason,
        started=outcome.started,
        ended=outcome.ended,
        wall_seconds=outcome.wall_seconds,
        budget_fraction=round(outcome.wall_seconds / timeout, 4),
        exit_code=outcome.exit_code,
        timed_out=outcome.timed_out,
        # SLURM's record of every attempt's job, else the budget's GPUs x the elapsed time
        **attempt("GPU accounting", lambda: accounting.cell_gpu_hours(outcome.wall_seconds, gpus,
                                                                      attempts=attempts), {}),
        final_model=str(run_dir / "final_model") if final_model else None,  # where publishing puts it
        checkpoint_bytes=collected.size_bytes,
        checkpoint_cap_bytes=max_bytes,
        harness_manifest_after=manifest_after,
        harness_manifest_problems=_first(ws.manifest_problems(manifest_after)),
        egress=[f"{e['host']}:{e['port']}" for e in outcome.egress] if outcome.egress is not None else None,
        egress_detail=outcome.egress,
        limits=box.limits(),
        limits_hit=outcome.limits_hit,  # [{"limit", "value", "max", "time"}]: the run was stopped for these
        # Re-prompting (agents.<name>.reprompt): how often the CLI's session was resumed, and each session.
        resumptions=max(len(sessions) - 1, 0),
        sessions=sessions,
        credentials_mounted=sorted(str(Path(p).relative_to(workspace)) for p in credential_mounts) or None,
        usage=attempt("reading usage from the trace", lambda: usage_from_trace(trace_path, adapter.get("usage")),
                      None),
        transcripts=transcripts,
        transcript_problems=_first(transcript_problems),
        output_dropped=dict(trace.dropped) if trace.dropped["lines"] else None,
        runner_errors=runner_errors + mount_problems,
        recorded=now_iso(),
    )
    atomic_write_json(cell_attempt.dir / "run.json", record)
    if not cell_attempt.publish():
        raise attempt_lock.AttemptLive(f"{cell.key}: attempt {cell_attempt.attempt_id} lost the cell's lock to "
                                       f"{attempt_lock.describe(attempt_lock.read_lock(run_dir) or {})}; its "
                                       f"results stay in {cell_attempt.dir}")
    return record


def _run_sessions(sandbox: Sandbox, spec: dict, cell: Cell, command: list[str], workspace: Path, env: dict,
                  box: SandboxSpec, trace: TraceWriter, budget: dict, deadline: float) -> tuple[RunOutcome, list[dict]]:
    """Run the agent; with ``reprompt``, resume its CLI session each time it exits early, telling it the
    time left, until less than REPROMPT_MIN_MINUTES remain (as the published *_reprompt agents do). Each
    session is a sandbox of its own over the same workspace. Returns the combined outcome and the sessions."""
    t0 = time.monotonic()
    grace = budget["grace_seconds"]
    outcome = sandbox.run(command, workspace=workspace, env=env, timeout_seconds=deadline - time.time(),
                          grace_seconds=grace, trace=trace, spec=box)
    sessions = [_session(outcome, None)]
    outcomes = [outcome]
    if spec.get("reprompt"):
        min_left = REPROMPT_MIN_MINUTES * 60
        while not (outcome.timed_out or outcome.limits_hit):
            left = deadline - time.time()
            if left < min_left:
                break
            # A resumption that fails at once would fail again: stop rather than spin until the deadline.
            if len(sessions) > 1 and outcome.exit_code != 0 and outcome.wall_seconds < REPROMPT_FAST_FAILURE_SECONDS:
                trace.event("reprompt_stopped", reason=f"the resumed session failed within "
                                                         f"{REPROMPT_FAST_FAILURE_SECONDS} s (exit code {outcome.exit_code})")
                break
            message = reprompt_message(left)
            resume, _, _ = cli_command(spec, cell, workspace, message=message, backend=sandbox.name)
            trace.event("reprompt", seconds_left=int(left), message=message)
            outcome = sandbox.run(resume, workspace=workspace, env=env, timeout_seconds=deadline - time.time(),
                                  grace_seconds=grace, trace=trace, spec=box)
            sessions.append(_session(outcome, int(left)))
            outcomes.append(outcome)
    return _combined(outcomes, t0), sessions


REPROMPT_FAST_FAILURE_SECONDS = 60


def _session(outcome: RunOutcome, seconds_left: int | None) -> dict:
    return {"started": outcome.started, "exit_code": outcome.exit_code, "timed_out": outcome.timed_out,
            "wall_seconds": outcome.wall_seconds, "seconds_left_at_start": seconds_left}


def _combined(outcomes: list[RunOutcome], t0: float) -> RunOutcome:
    """One outcome for the sessions of a run: the last one's end, every limit hit, egress summed by host."""
    if len(outcomes) == 1:
        return outcomes[0]
    last = outcomes[-1]
    egress = None
    if any(o.egress is not None for o in outcomes):
        hosts: dict[tuple, dict] = {}
        for o in outcomes:
            for entry in o.egress or []:
                total = hosts.setdefault((entry["host"], entry["port"]), {**entry, "connections": 0, "denied": 0})
                total["connections"] += entry.get("connections", 0)
                total["denied"] += entry.get("denied", 0)
        egress = list(hosts.values())
    return RunOutcome(exit_code=last.exit_code, timed_out=last.timed_out, started=outcomes[0].started,
                      ended=last.ended, wall_seconds=round(time.monotonic() - t0, 3), egress=egress,
                      limits_hit=[hit for o in outcomes for hit in o.limits_hit])


def _first(items: list[str], n: int = 100) -> list[str]:
    """At most ``n`` items of a list an agent can make long, and how many more there were."""
    return items if len(items) <= n else items[:n] + [f"... and {len(items) - n} more"]


def checkpoint_cap(budget: dict, base_dir: Path) -> tuple[int | None, str]:
    """The largest checkpoint collected, in bytes, and where that figure comes from: ``budget.max_checkpoint_gb``,
    else a few times the staged base model (no cap when the base model's size is unknown)."""
    configured = budget.get("max_checkpoint_gb")
    if configured is not None:
        return int(float(configured) * 1e9), f"budget.max_checkpoint_gb = {configured}"
    base = tree_bytes(base_dir)
    if not base:
        return None, ""
    return DEFAULT_CAP_FACTOR * base, (f"{DEFAULT_CAP_FACTOR} x the base model's {size_text(base)}; "
                                          "budget.max_checkpoint_gb sets it")

"""``ptb plan``: what a sweep will ask for and cost, from its config alone, before it is launched.

Reads the config (and looks, without changing anything, at which staged inputs under ``resources/`` exist): no
staging, no network, no GPU. It counts the jobs of every rule as Snakemake plans the whole sweep (``--forceall``),
and sums the hours the cluster jobs request from :func:`posttrainbench.cluster.rule_requests`, the very function the
rules take their requests from. On top of what is requested it estimates what evaluation, grading and judging are
expected to use (items x tokens from the benchmarks' protocols, under the ``plan`` section's assumptions), the
grader and judge API calls and their price, the disk and inode footprint, and which staged inputs are missing.

JSON (``ptb plan --json``; keys are stable within ``format`` ``ptb-plan/1``; hours are hours, bytes are bytes)::

    format             "ptb-plan/1"
    cells              {total, post_training, reference, audited}
    rules              {rule: {jobs, local, threads, gpus, mem_mb, runtime_minutes, gpu_hours, cpu_hours}}
                       cluster rules carry their request; local rules (run where Snakemake runs) request nothing
    requested          {gpu_hours, cpu_hours, gpu_type}: the cluster jobs' requests summed
    evaluation         {assumptions: {tokens_per_second, output_fraction, startup_minutes},
                        benchmarks: {benchmark: {items, items_source, jobs, rungs, expected_output_tokens,
                                     max_output_tokens, expected_minutes_per_job, requested_minutes_per_job}},
                        expected_gpu_hours, expected_output_tokens, max_output_tokens, over_runtime: [benchmark]}
    api                {calls: [{stage, benchmark, model, calls_expected, calls_max, input_tokens, output_tokens,
                                 usd}], calls_expected, calls_max, usd, unpriced_models: [model]}
                       usd is null for an unpriced model; the total counts the priced calls only
    disk               {assumptions: {bytes_per_param, workspace_gb, workspace_files}, cleanup,
                        models: {model: {params_b, params_source, bytes}},
                        bytes: {staged_models, checkpoints, workspaces, results}, bytes_expected, bytes_max,
                        inodes_expected, inodes_max}
    inputs             [{path, kind, rule, present}]: what the rules read from resources/ and the images
    missing            [path]: the inputs not present
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from .cells import REFERENCE_AGENTS
from .cluster import CLUSTER_RULES, LOCAL_RULES, rule_requests, runs_locally
from .config import agent_spec, iter_cells

FORMAT = "ptb-plan/1"
GB = 10**9
# Files a cell leaves besides its workspace and checkpoint: run.json, trace.jsonl, the eval (and generations)
# JSON, the verdict, the job logs and SLURM logs.
RESULT_FILES_PER_CELL = 12
# Files of a saved checkpoint (config, tokenizer files, a few weight shards).
CHECKPOINT_FILES = 12
# Characters per token of stored responses and of judge context.
CHARS_PER_TOKEN = 4
# Arena-Hard plays every item twice, the baseline first and then the model first.
ARENA_GAMES_PER_ITEM = 2


def _cell_is_reference_spec(spec: dict) -> bool:
    """A reference row for evaluation: one attempt on the first rung (as rules/common.smk evaluation_prompting)."""
    return spec["type"] == "builtin" and spec.get("recipe") in ("base", "instruct")


def _schema_default(*keys: str) -> Any:
    from .config import load_schema

    node = load_schema()["properties"]
    for key in keys[:-1]:
        node = node[key]["properties"]
    return node[keys[-1]]["default"]


def _params_from_name(*names: str) -> float | None:
    """Billions of parameters read from a model name (``qwen3-1.7b``, ``SmolLM2-135M``, ``gemma-3-4b-pt``)."""
    for name in names:
        match = re.search(r"(?<![a-z0-9.])(\d+(?:\.\d+)?)([bm])(?![a-z])", (name or "").lower())
        if match:
            value = float(match.group(1))
            return value if match.group(2) == "b" else value / 1000
    return None


def _staged_weight_bytes(folder: Path) -> int | None:
    """Bytes of the weight files of a staged model folder, or ``None`` when it is not staged."""
    if not folder.is_dir():
        return None
    total = sum(p.stat().st_size for p in folder.rglob("*") if p.suffix in (".safetensors", ".bin") and p.is_file())
    return total or None


def _staged_items(workdir: Path, benchmark: str) -> int | None:
    meta = workdir / "resources" / "benchmarks" / benchmark / "meta.json"
    try:
        return int(json.loads(meta.read_text())["n"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _staged_criteria(workdir: Path) -> float | None:
    """Mean rubric criteria per conversation of a staged HealthBench set."""
    path = workdir / "resources" / "benchmarks" / "healthbench" / "test.jsonl"
    try:
        counts = [len(json.loads(line)["rubrics"]) for line in path.read_text(encoding="utf-8").splitlines()
                  if line.strip()]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return sum(counts) / len(counts) if counts else None


# ------------------------------------------------------------------------------------------------------------------
# jobs
# ------------------------------------------------------------------------------------------------------------------


def _inputs(config: dict, cells, audited) -> list[dict[str, Any]]:
    """What the rules read from resources/ (as common.smk's input functions and the judge's), and the images."""
    from .judge import REFERENCE_DATA_MANIFEST, judge_rule_inputs, reference_data_inputs

    found: dict[str, dict[str, Any]] = {}

    def need(path: str, kind: str, rule: str | None) -> None:
        found.setdefault(path, {"path": path, "kind": kind, "rule": rule})

    for cell in cells:
        spec = agent_spec(config, cell.agent)
        need(f"resources/models/{cell.model}/base", "model", "stage_model")
        if spec.get("recipe") == "instruct":
            need(f"resources/models/{cell.model}/instruct", "model", "stage_model")
        if spec.get("recipe") == "sft":
            need(f"resources/datasets/{spec['sft']['train_data']}.jsonl", "dataset", "stage_training_data")
        # Evaluation reads the test set (and the agents' evaluation helper a few of its items).
        need(f"resources/benchmarks/{cell.benchmark}/test.jsonl", "benchmark", "stage_benchmark")
    if cells and config["evaluation"]["templates"]["use"] == "published":
        need("resources/templates/staged.json", "templates", "stage_templates")
    if audited:
        from types import SimpleNamespace

        for agent, model, seed in sorted({(c.agent, c.model, c.seed) for c in audited}):
            wildcards = SimpleNamespace(agent=agent, model=model, seed=seed)
            for key, path in judge_rule_inputs(config, wildcards).items():
                if key == "base_model" or key == "instruct_model":
                    need(path, "model", "stage_model")
        for key, path in reference_data_inputs(config).items():
            if key.startswith("test_"):
                need(path, "benchmark", "stage_benchmark")
            elif key.startswith("allowed_"):
                need(path, "dataset", "stage_training_data")
        need(REFERENCE_DATA_MANIFEST, "manifest", "judge_reference_data")
    # Images: the agent sandbox's, and those of evaluation and judging under --software-deployment-method
    # apptainer (the SLURM profile).
    sandbox = config["sandbox"]
    if sandbox["backend"] == "apptainer" and sandbox.get("image"):
        need(sandbox["image"], "image", None)
    need("containers/eval.sif", "image", None)
    if audited:
        need("containers/judge.sif", "image", None)
    return list(found.values())


def cleanup_enabled(config: dict) -> bool:
    """``storage.cleanup.enabled``: judged cells' workspaces are thinned out (rule cleanup_workspace)."""
    return bool(config.get("storage", {}).get("cleanup", {}).get("enabled", False))


def _job_counts(config: dict, cells, audited, inputs) -> dict[str, int]:
    from .benchmarks import GRADED_BENCHMARKS

    counts = dict.fromkeys((*CLUSTER_RULES, *LOCAL_RULES), 0)
    for cell in cells:
        counts["submit_reference" if cell.agent in REFERENCE_AGENTS else "run_agent"] += 1
        if cell.benchmark in GRADED_BENCHMARKS:
            counts["generate_for_grader"] += 1
            counts["grade"] += 1
        else:
            counts["evaluate"] += 1
    counts["judge"] = len({(c.agent, c.model, c.seed) for c in audited})
    # Staging produces one output (or one folder) per job; the manifest is the judge_reference_data job.
    for item in inputs:
        if item["rule"] in ("stage_model", "stage_benchmark", "stage_training_data", "stage_templates",
                            "judge_reference_data"):
            counts[item["rule"]] += 1
    if cleanup_enabled(config):
        counts["cleanup_workspace"] = len(audited)
    counts["leaderboard"] = counts["status"] = counts["all"] = 1
    return counts


# ------------------------------------------------------------------------------------------------------------------
# the plan
# ------------------------------------------------------------------------------------------------------------------


def build_plan(config: dict, *, workdir: str | Path = ".", tokens_per_second: float | None = None) -> dict[str, Any]:
    """The plan of a validated ``config`` (see the module docstring for its keys). ``workdir``: where the
    workflow runs (staged inputs are looked for under it); ``tokens_per_second`` overrides
    ``plan.eval_tokens_per_second``."""
    from . import benchmarks as bm
    from .evaluation import rungs
    from .protocol import get_protocol

    workdir = Path(workdir)
    assumptions = config["plan"]
    cells = list(iter_cells(config))
    audited = [c for c in cells if not c.is_reference]
    inputs = _inputs(config, cells, audited)
    counts = _job_counts(config, cells, audited, inputs)

    # Requested: the cluster rules' requests, as the rules make them.
    requests = rule_requests(config)
    rules: dict[str, dict[str, Any]] = {}
    for rule, jobs in counts.items():
        local = runs_locally(config, rule)
        entry: dict[str, Any] = {"jobs": jobs, "local": local}
        if rule in requests and not local:
            req = requests[rule]
            entry.update(threads=req.threads, gpus=req.gpus, mem_mb=req.mem_mb, runtime_minutes=req.runtime,
                         gpu_hours=jobs * req.runtime * req.gpus / 60, cpu_hours=jobs * req.runtime * req.threads / 60)
        else:
            entry.update(threads=None, gpus=0, mem_mb=None, runtime_minutes=None, gpu_hours=0.0, cpu_hours=0.0)
        rules[rule] = entry
    requested = {"gpu_hours": sum(r["gpu_hours"] for r in rules.values()),
                 "cpu_hours": sum(r["cpu_hours"] for r in rules.values()),
                 "gpu_type": config["budget"].get("gpu_type")}

    # Expected evaluation: items x tokens of the protocol's ladder.
    options = config["evaluation"]
    proto = get_protocol(options.get("protocol"))
    tps = float(tokens_per_second or assumptions["eval_tokens_per_second"])
    fraction = float(assumptions["output_fraction"])
    startup = float(assumptions["eval_startup_minutes"])
    eval_request = requests["evaluate"]
    per_benchmark: dict[str, dict[str, Any]] = {}
    answer_tokens: dict[str, float] = {}
    expected_gpu_hours = 0.0
    for benchmark in config["benchmarks"]:
        spec = bm.get_spec(benchmark)
        per = options["per_benchmark"].get(benchmark, {})
        staged = _staged_items(workdir, benchmark)
        items, source = (staged, "staged") if staged is not None else (spec.published_items, "published")
        limit = per.get("limit", options.get("limit"))
        if limit is not None and limit < items:
            items, source = int(limit), "limit"
        bench_cells = [c for c in cells if c.benchmark == benchmark]
        expected = maximum = 0.0
        minutes = []
        for cell in bench_cells:
            reference = _cell_is_reference_spec(agent_spec(config, cell.agent))
            ladder = rungs(spec, reference=reference, max_tokens=per.get("max_tokens"),
                           reference_attempts=proto.reference_attempts)
            cell_expected = items * ladder[0][0] * fraction
            expected += cell_expected
            maximum += items * sum(tokens * tries for tokens, tries in ladder)
            minutes.append(startup + cell_expected / tps / 60)
        full = rungs(spec, reference=False, max_tokens=per.get("max_tokens"))
        answer_tokens[benchmark] = full[0][0] * fraction
        job_minutes = max(minutes) if minutes else 0.0
        expected_gpu_hours += sum(minutes) / 60 * eval_request.gpus
        per_benchmark[benchmark] = {
            "items": items, "items_source": source, "jobs": len(bench_cells),
            "rungs": [list(r) for r in full], "expected_output_tokens": expected, "max_output_tokens": maximum,
            "expected_minutes_per_job": job_minutes, "requested_minutes_per_job": eval_request.runtime,
        }
    evaluation = {
        "assumptions": {"tokens_per_second": tps, "output_fraction": fraction, "startup_minutes": startup},
        "benchmarks": per_benchmark,
        "expected_gpu_hours": expected_gpu_hours,
        "expected_output_tokens": sum(b["expected_output_tokens"] for b in per_benchmark.values()),
        "max_output_tokens": sum(b["max_output_tokens"] for b in per_benchmark.values()),
        "over_runtime": [b for b, v in per_benchmark.items()
                         if v["jobs"] and v["expected_minutes_per_job"] > v["requested_minutes_per_job"]],
    }

    return {
        "format": FORMAT,
        "cells": {"total": len(cells), "post_training": counts["run_agent"], "reference": counts["submit_reference"],
                  "audited": len(audited)},
        "rules": rules,
        "requested": requested,
        "evaluation": evaluation,
        "api": _api(config, audited, per_benchmark, workdir),
        "disk": _disk(config, cells, inputs, per_benchmark, answer_tokens, workdir),
        "inputs": [{**item, "present": (workdir / item["path"]).exists()} for item in inputs],
        "missing": [item["path"] for item in inputs if not (workdir / item["path"]).exists()],
    }


def _merged(config_value: dict, *schema_keys: str) -> dict:
    """A mapping of the plan section over its schema default: entries add to or replace the default's."""
    return {**_schema_default(*schema_keys), **config_value}


def _api(config, audited, per_benchmark, workdir) -> dict[str, Any]:
    """Grader calls of the graded benchmarks and LLM-judge calls, with their price."""
    from .benchmarks import GRADED_BENCHMARKS
    from .graders import grading_of

    assumptions = config["plan"]
    prices = _merged(assumptions["prices"], "plan", "prices")
    tokens = _merged(assumptions["grader_tokens"], "plan", "grader_tokens")
    grader = config["evaluation"]["grader"]
    rows = []
    for benchmark in config["benchmarks"]:
        if benchmark not in GRADED_BENCHMARKS:
            continue
        grading = grading_of(benchmark)
        model = grader.get("model") or grading.model
        jobs = per_benchmark[benchmark]["jobs"]
        items = per_benchmark[benchmark]["items"]
        if benchmark == "healthbench":
            from .benchmarks.healthbench import GRADER_TRIES

            per_item = _staged_criteria(workdir) or float(assumptions["healthbench_criteria"])
            # Each criterion is asked again until its reply is readable (the protocol's tries per criterion).
            tries = GRADER_TRIES if grader.get("retries") is None else grader["retries"] + 1
        else:
            per_item = ARENA_GAMES_PER_ITEM
            tries = grading.tries if grader.get("retries") is None else grader["retries"] + 1
        calls = jobs * items * per_item
        size = tokens.get(benchmark, {"input": 0, "output": 0})
        rows.append(_priced({"stage": "grade", "benchmark": benchmark, "model": model, "calls_expected": calls,
                             "calls_max": calls * tries,
                             "input_tokens": calls * size["input"],
                             "output_tokens": calls * size["output"]}, prices))
    llm = config["judge"]["llm"]
    if llm.get("endpoint") and audited:
        from .judge.llm import DEFAULT_PROMPT

        calls = len(audited) * int(llm["votes"])
        prompt = llm.get("prompt") or DEFAULT_PROMPT
        rows.append(_priced({"stage": "judge", "benchmark": None, "model": llm.get("model"), "calls_expected": calls,
                             "calls_max": calls,
                             "input_tokens": calls * (llm["max_context_chars"] + len(prompt)) / CHARS_PER_TOKEN,
                             "output_tokens": calls * llm["max_tokens"]}, prices))
    return {"calls": rows, "calls_expected": sum(r["calls_expected"] for r in rows),
            "calls_max": sum(r["calls_max"] for r in rows),
            "usd": sum(r["usd"] for r in rows if r["usd"] is not None),
            "unpriced_models": sorted({str(r["model"]) for r in rows if r["usd"] is None})}


def _priced(row: dict[str, Any], prices: dict) -> dict[str, Any]:
    price = prices.get(row["model"])
    row["usd"] = None if price is None else (row["input_tokens"] * price["input"]
                                             + row["output_tokens"] * price["output"]) / 1e6
    return row


def _disk(config, cells, inputs, per_benchmark, answer_tokens, workdir) -> dict[str, Any]:
    from .agents.collect import DEFAULT_CAP_FACTOR

    assumptions = config["plan"]
    per_param = float(assumptions["bytes_per_param"])
    models: dict[str, dict[str, Any]] = {}
    for name, spec in config["models"].items():
        configured = assumptions["model_params_b"].get(name)
        staged = _staged_weight_bytes(workdir / "resources" / "models" / name / "base")
        if configured is not None:
            params, source = float(configured), "config"
        elif staged is not None:
            params, source = staged / per_param / 1e9, "staged"
        else:
            params = _params_from_name(name, spec.get("base"), spec.get("display_name"))
            source = "name" if params is not None else "unknown"
        size = int(params * 1e9 * per_param) if params is not None else None
        models[name] = {"params_b": params, "params_source": source, "bytes": size}

    def size_of(model: str) -> int:
        return models[model]["bytes"] or 0

    staged_models = sum(size_of(item["path"].split("/")[2]) for item in inputs if item["kind"] == "model")
    post = [c for c in cells if c.agent not in REFERENCE_AGENTS]
    budget = config["budget"]
    cap = budget.get("max_checkpoint_gb")
    checkpoints = sum(size_of(c.model) for c in post)
    checkpoints_max = sum(int(cap * GB) if cap is not None else DEFAULT_CAP_FACTOR * size_of(c.model) for c in post)
    workspaces = len(post) * float(assumptions["workspace_gb"]) * GB
    workspaces_max = len(post) * float(budget["disk_gb"]) * GB
    # Stored responses: every cell's eval JSON (and generations JSON) holds its items' answers.
    results = sum(per_benchmark[c.benchmark]["items"] * answer_tokens[c.benchmark] * CHARS_PER_TOKEN for c in cells)
    files = len(cells) * RESULT_FILES_PER_CELL + len(post) * CHECKPOINT_FILES
    return {
        "assumptions": {"bytes_per_param": per_param, "workspace_gb": float(assumptions["workspace_gb"]),
                        "workspace_files": int(assumptions["workspace_files"])},
        # With cleanup, judged cells' workspaces are thinned out: the workspace figures are what all would take
        # together without it.
        "cleanup": cleanup_enabled(config),
        "models": models,
        "bytes": {"staged_models": staged_models, "checkpoints": checkpoints, "workspaces": workspaces,
                  "results": results},
        "bytes_expected": staged_models + checkpoints + workspaces + results,
        "bytes_max": staged_models + checkpoints_max + workspaces_max + results,
        "inodes_expected": files + len(post) * int(assumptions["workspace_files"]),
        "inodes_max": files + len(post) * int(budget["max_files"]),
    }


# ------------------------------------------------------------------------------------------------------------------
# the table
# ------------------------------------------------------------------------------------------------------------------


def _size(num: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(num) < 1000 or unit == "PB":
            return f"{num:.0f} {unit}" if unit == "B" else f"{num:.1f} {unit}"
        num /= 1000
    return f"{num:.1f} PB"


def _count(num: float) -> str:
    return f"{num / 1e9:.2f}G" if num >= 1e9 else f"{num / 1e6:.1f}M" if num >= 1e6 else f"{num:,.0f}"


def format_plan(plan: dict[str, Any], title: str = "") -> str:
    """The plan as a plain-text table."""
    cells = plan["cells"]
    out = [(f"{title}: " if title else "") + f"{cells['total']} cells ({cells['post_training']} post-training, "
           f"{cells['reference']} reference; {cells['audited']} audited)", ""]
    header = f"{'rule':<22}{'jobs':>6}  {'where':<8}{'threads':>8}{'gpus':>5}{'runtime':>9}{'GPU-h':>11}{'CPU-h':>11}"
    out.append(header)
    out.append("-" * len(header))
    for rule, r in plan["rules"].items():
        if not r["jobs"]:
            continue
        where = "local" if r["local"] else "cluster"
        runtime = f"{r['runtime_minutes']}m" if r["runtime_minutes"] is not None else "-"
        threads = r["threads"] if r["threads"] is not None else "-"
        out.append(f"{rule:<22}{r['jobs']:>6}  {where:<8}{threads:>8}{r['gpus']:>5}{runtime:>9}"
                   f"{r['gpu_hours']:>11,.1f}{r['cpu_hours']:>11,.1f}")
    req = plan["requested"]
    total_jobs = sum(r["jobs"] for r in plan["rules"].values())
    out.append("-" * len(header))
    gpu_type = f" ({req['gpu_type']})" if req["gpu_type"] else ""
    out.append(f"{'requested':<22}{total_jobs:>6}  {'':<8}{'':>8}{'':>5}{'':>9}{req['gpu_hours']:>11,.1f}"
               f"{req['cpu_hours']:>11,.1f}{gpu_type}")

    ev = plan["evaluation"]
    a = ev["assumptions"]
    out += ["", f"evaluation, expected (assuming {a['tokens_per_second']:g} output tokens/s per job, responses "
                f"{a['output_fraction']:g} of the first rung, {a['startup_minutes']:g} min start-up):"]
    for benchmark, b in ev["benchmarks"].items():
        out.append(f"  {benchmark:<18}{b['items']:>6} items ({b['items_source']}), {b['jobs']} jobs, first rung "
                   f"{b['rungs'][0][0]} tokens: {_count(b['expected_output_tokens'])} tokens expected, "
                   f"{_count(b['max_output_tokens'])} at most; {b['expected_minutes_per_job']:.0f} of "
                   f"{b['requested_minutes_per_job']} min per job")
    out.append(f"  expected GPU-hours {ev['expected_gpu_hours']:,.1f} (requested "
               f"{plan['rules']['evaluate']['gpu_hours'] + plan['rules']['generate_for_grader']['gpu_hours']:,.1f})")
    if ev["over_runtime"]:
        out.append("  WARNING: expected to run past resources.evaluate.runtime_minutes: "
                   + ", ".join(ev["over_runtime"]))

    api = plan["api"]
    out += ["", "API calls (grader, LLM judge):"]
    if not api["calls"]:
        out.append("  none")
    for row in api["calls"]:
        usd = f"${row['usd']:,.2f}" if row["usd"] is not None else "unpriced (add plan.prices)"
        label = row["benchmark"] or "llm judge"
        out.append(f"  {row['stage']:<6}{label:<18}{row['model']}: {row['calls_expected']:,.0f} calls "
                   f"(up to {row['calls_max']:,.0f} with retries), {_count(row['input_tokens'])} in / "
                   f"{_count(row['output_tokens'])} out tokens, {usd}")
    if api["calls"]:
        unpriced = f" (unpriced: {', '.join(api['unpriced_models'])})" if api["unpriced_models"] else ""
        out.append(f"  total ${api['usd']:,.2f}{unpriced}")

    disk = plan["disk"]
    out += ["", f"disk (bf16 = {disk['assumptions']['bytes_per_param']:g} bytes per parameter; workspaces "
                f"{disk['assumptions']['workspace_gb']:g} GB and {disk['assumptions']['workspace_files']:,} "
                "entries each expected, budget.disk_gb and budget.max_files at most):"]
    for model, m in disk["models"].items():
        params = f"{m['params_b']:.2f}B params ({m['params_source']})" if m["params_b"] is not None else \
            "size unknown (set plan.model_params_b)"
        out.append(f"  {model:<18}{params}, {_size(m['bytes'] or 0)} per copy")
    b = disk["bytes"]
    out.append(f"  staged models {_size(b['staged_models'])}, checkpoints {_size(b['checkpoints'])}, "
               f"workspaces {_size(b['workspaces'])}, results {_size(b['results'])}")
    out.append(f"  total {_size(disk['bytes_expected'])} expected, {_size(disk['bytes_max'])} at most; "
               f"inodes {_count(disk['inodes_expected'])} expected, {_count(disk['inodes_max'])} at most")

    out += ["", "staged inputs:"]
    missing = set(plan["missing"])
    present = [i for i in plan["inputs"] if i["path"] not in missing]
    out.append(f"  {len(present)} of {len(plan['inputs'])} present")
    for item in plan["inputs"]:
        if item["path"] in missing:
            how = f"snakemake {item['path']}  (rule {item['rule']})" if item["rule"] else "build it (docs/hpc.md)"
            out.append(f"  missing {item['kind']:<10}{item['path']}: {how}")
    return "\n".join(out) + "\n"


def main(config_path: str | Path, *, as_json: bool = False, tokens_per_second: float | None = None,
         workdir: str | Path = ".") -> int:
    """``ptb plan``: print the plan of the config at ``config_path``; a bad config is one line and exit code 2."""
    import sys

    from .config import ConfigError, load_config

    if tokens_per_second is not None and tokens_per_second <= 0:
        print("ptb plan: error: --tokens-per-second must be > 0", file=sys.stderr)
        return 2
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print(f"ptb plan: error: {config_path}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"ptb plan: error: cannot read {config_path}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    plan = build_plan(config, workdir=workdir, tokens_per_second=tokens_per_second)
    if as_json:
        print(json.dumps({"config": str(config_path), **plan}, indent=1, sort_keys=False))
    else:
        print(format_plan(plan, title=str(config_path)), end="")
    return 0

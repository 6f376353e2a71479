import re
import sys

from snakemake.io import report as report_item
from snakemake.utils import min_version

from posttrainbench.cells import REFERENCE_AGENTS
from posttrainbench.cluster import rule_requests, runs_locally
from posttrainbench.config import ConfigError, agent_spec, iter_cells, validate_config

min_version("9.0")


# A --configfile replaces the embedded default rather than being merged into it: the published
# matrix must not inherit the default's model or agents. --config values still apply on top.
if workflow.overwrite_configfiles:
    _cli_config = dict(workflow.config_settings.overwrite_config)
    config.clear()
    config.update(_cli_config)

# A bad config stops here with one line naming the key, before any job is planned.
try:
    _validated = validate_config(config)
except ConfigError as error:
    sys.exit(f"posttrainbench: {error}")
config.clear()
config.update(_validated)

CELLS = list(iter_cells(config))
# Reference rows submit the staged base or instruct model by construction: scored, not audited.
AUDITED_CELLS = [cell for cell in CELLS if not cell.is_reference]
# What each cluster rule asks for; `ptb plan` sums the same requests (posttrainbench.cluster).
REQUESTS = rule_requests(config)


wildcard_constraints:
    agent=r"[A-Za-z0-9][A-Za-z0-9._-]*",
    model=r"[a-z0-9][a-z0-9._-]*",
    benchmark=r"[a-z0-9]+",
    seed=r"\d+",
    variant=r"base|instruct",
    dataset=r"[a-z0-9-]+",


# Reference agents submit a staged model (rule submit_reference); every other agent post-trains
# (rule run_agent). The lookahead sees the "/" that follows the agent in every run path.
REFERENCE_AGENT = "|".join(re.escape(agent) for agent in REFERENCE_AGENTS)
POST_TRAINING_AGENT = rf"(?!(?:{REFERENCE_AGENT})/)[A-Za-z0-9][A-Za-z0-9._-]*"


def cell_paths(template, cells=CELLS):
    """``template`` (with {agent}, {model}, {benchmark}, {seed}) for every cell of the matrix."""
    return [
        template.format(
            agent=c.agent, model=c.model, benchmark=c.benchmark, seed=c.seed
        )
        for c in cells
    ]


def model_source(model, variant):
    source = config["models"][model].get(variant)
    if not source:
        raise ValueError(f"config key 'models.{model}.{variant}' is not set")
    return source


def benchmark_staging(wildcards):
    """Where a test set is staged from (evaluation.per_benchmark.<benchmark>.source)."""
    settings = config["evaluation"]["per_benchmark"].get(wildcards.benchmark, {})
    return {key: settings[key] for key in ("source",) if key in settings}


TEMPLATES_STAGED = "resources/templates/staged.json"


def template_inputs(wildcards):
    """The staged published chat templates, when evaluation uses them."""
    if config["evaluation"]["templates"]["use"] == "published":
        return {"templates": TEMPLATES_STAGED}
    return {}


def agent_inputs(wildcards):
    """What an agent run needs staged: the base model, plus its recipe's extras."""
    spec = agent_spec(config, wildcards.agent)
    inputs = {"base_model": f"resources/models/{wildcards.model}/base"}
    if spec.get("recipe") == "instruct":
        inputs["instruct_model"] = f"resources/models/{wildcards.model}/instruct"
    if spec.get("recipe") == "sft":
        inputs["train_data"] = f"resources/datasets/{spec['sft']['train_data']}.jsonl"
    # The evaluation helper offered to non-builtin agents copies a few staged test items.
    if spec["type"] != "builtin" and config["sandbox"]["eval_helper"]["enabled"]:
        inputs["benchmark_test"] = (
            f"resources/benchmarks/{wildcards.benchmark}/test.jsonl"
        )
    return inputs


def evaluation_prompting(wildcards):
    """How a cell's checkpoint is prompted: its agent's protocol and its model's template family."""
    spec = agent_spec(config, wildcards.agent)
    return {
        "prompting": spec.get("prompting", "chat"),
        "family": config["models"][wildcards.model]["family"],
        # Reference rows get one attempt, as published.
        "reference": spec["type"] == "builtin"
        and spec.get("recipe") in ("base", "instruct"),
    }


# Site settings for the SLURM executor (docs/hpc.md, Site settings): PTB_SLURM_* environment variables
# win over the untracked site file, so a site never edits a tracked file. Other executors ignore them.
SLURM_SITE_KEYS = (
    "account",
    "cpu_partition",
    "gpu_partition",
    "qos",
    "gpu_model",
    "constraint",
    "cpu_constraint",
    "mail_user",
    "mail_type",
)


def load_slurm_site():
    import os
    from pathlib import Path

    import yaml

    path = Path(
        os.environ.get("PTB_SLURM_SITE_FILE")
        or Path(workflow.basedir) / "profiles/slurm/site.yaml"
    )
    site = {}
    if path.is_file():
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            sys.exit(f"posttrainbench: site file {path}: expected a mapping")
        unknown = sorted(set(loaded) - set(SLURM_SITE_KEYS))
        if unknown:
            sys.exit(
                f"posttrainbench: site file {path}: unknown key {unknown[0]!r} (known: {', '.join(SLURM_SITE_KEYS)})"
            )
        site = {k: str(v) for k, v in loaded.items() if v not in (None, "")}
    elif os.environ.get("PTB_SLURM_SITE_FILE"):
        sys.exit(f"posttrainbench: PTB_SLURM_SITE_FILE={path} is not a file")
    for key in SLURM_SITE_KEYS:
        value = os.environ.get(f"PTB_SLURM_{key.upper()}", "").strip()
        if value:
            site[key] = value
    return site


SLURM_SITE = load_slurm_site()


def slurm_resources(gpus):
    """SLURM placement of a job asking for `gpus` GPUs: CPU jobs go to the CPU partition, GPU jobs to the
    GPU partition with the configured GPU model (site gpu_model, else budget.gpu_type; "none" for untyped
    GPUs). Settings not given are left out, so the plugin's and the site's defaults apply.
    """
    import shlex

    site = SLURM_SITE
    gpu_job = gpus > 0
    res = {}
    if site.get("account"):
        res["slurm_account"] = site["account"]
    partition = site.get("gpu_partition" if gpu_job else "cpu_partition")
    if partition:
        res["slurm_partition"] = partition
    if site.get("qos"):
        res["qos"] = site["qos"]
    constraint = site.get("constraint" if gpu_job else "cpu_constraint")
    if constraint:
        res["constraint"] = constraint
    if gpu_job:
        # The plugin requests --gpus=<model>:<gpu> only when gpu_model is set.
        model = site.get("gpu_model") or config["budget"].get("gpu_type")
        if model and model.lower() != "none":
            res["gpu_model"] = model
    if site.get("mail_user"):
        mail_type = site.get("mail_type", "FAIL")
        res["slurm_extra"] = (
            f"--mail-user={shlex.quote(site['mail_user'])} --mail-type={shlex.quote(mail_type)}"
        )
    return res


def cell_run_dir(cell):
    return f"results/runs/{cell.agent}/{cell.model}/{cell.benchmark}/seed{cell.seed}"


def live_agent_jobs():
    """{run directory: SLURM job id} of the cells whose agent job from an earlier driver still runs (its
    lock names a job squeue lists): the new job waits for it (see after_live_agent_job) and then
    publishes that attempt's result instead of running the agent again. One squeue call, and only
    when some cell holds a lock."""
    from pathlib import Path

    from posttrainbench.attempt_lock import LOCK, live_holders

    locked = [
        Path(cell_run_dir(c)) for c in CELLS if Path(cell_run_dir(c), LOCK).is_file()
    ]
    if not locked:
        return {}
    return {str(d): h["slurm_job_id"] for d, h in live_holders(locked).items()}


LIVE_AGENT_JOBS = live_agent_jobs()


def after_live_agent_job(res):
    """An agent rule's resources `res`, and for a cell whose earlier agent job still runs, a dependency on
    it: the new job stays pending, holding no GPU, until that job has ended."""
    if not LIVE_AGENT_JOBS:
        return res
    site_extra = res.get("slurm_extra", "")

    def extra(wildcards):
        job = LIVE_AGENT_JOBS.get(
            f"results/runs/{wildcards.agent}/{wildcards.model}/{wildcards.benchmark}/seed{wildcards.seed}"
        )
        wait = f"--dependency=afterany:{job}" if job else ""
        return " ".join(part for part in (site_extra, wait) if part)

    return {**res, "slurm_extra": extra}


def cleanup_records():
    """The cleanup records `all` asks for (rules/cleanup.smk): one per audited cell, none when
    storage.cleanup is off."""
    if not config["storage"]["cleanup"]["enabled"]:
        return []
    return cell_paths(
        "results/cleanup/{agent}/{model}/{benchmark}/seed{seed}.json", AUDITED_CELLS
    )


def rule_threads(rule):
    return REQUESTS[rule].threads


def rule_resources(rule):
    """A cluster rule's request (REQUESTS) with its SLURM placement."""
    request = REQUESTS[rule]
    return {
        **slurm_resources(request.gpus),
        "mem_mb": request.mem_mb,
        "runtime": request.runtime,
        "gpu": request.gpus,
    }


def judge_verdicts():
    """One verdict per benchmark, in the config's order, for the job's agent, model and seed."""
    # report() under another name: snakefmt reads a line-leading "report" as the directive.
    return [
        report_item(
            f"results/judge/{{agent}}/{{model}}/{benchmark}/seed{{seed}}.json",
            caption="../report/verdict.rst",
            category="Judge verdicts",
            subcategory="{agent}",
            labels={
                "agent": "{agent}",
                "model": "{model}",
                "benchmark": benchmark,
                "seed": "{seed}",
            },
        )
        for benchmark in config["benchmarks"]
    ]

"""Site settings for the SLURM profile (docs/hpc.md, Site settings): account, partitions, QoS, GPU model,
constraints and mail come from PTB_SLURM_* variables or an untracked site file, never from edits of tracked
files. Checked on the published matrix's plan (a dry run prints every job's resources) and, for the names
the SLURM plugin reads, through the plugin's own sbatch command builder."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PUBLISHED = ROOT / "config" / "posttrainbench.yaml"
GPU_RULES = {"run_agent", "evaluate", "generate_for_grader"}
CPU_RULES = {"judge", "grade", "submit_reference"}
LOCAL_RULES = {"stage_model", "stage_benchmark", "stage_templates", "stage_training_data",
               "judge_reference_data", "leaderboard", "all"}
SITE_RESOURCES = ("slurm_account", "slurm_partition", "gpu_model", "qos", "constraint", "slurm_extra")


def planned_resources(tmp_path: Path, site_env: dict[str, str], config: Path = PUBLISHED) -> dict[str, dict]:
    """Each rule's resources in a dry run of `config` (one job per rule; all jobs of a rule ask alike)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PTB_SLURM_")}
    empty = tmp_path / "no-site.yaml"
    empty.write_text("")
    # An empty site file by default, so a developer's own profiles/slurm/site.yaml cannot leak in.
    env.update({"PTB_SLURM_SITE_FILE": str(empty), **site_env})
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.run([str(BIN / "snakemake"), "-n", "--forceall", "--snakefile", str(ROOT / "Snakefile"),
                           "--directory", str(tmp_path), "--configfile", str(config)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    by_rule: dict[str, dict] = {}
    rule = None
    for line in proc.stdout.splitlines():
        if match := re.match(r"(?:local)?rule (\w+):", line):
            rule = match.group(1)
        elif line.strip().startswith("resources:") and rule:
            text = line.split("resources:", 1)[1].strip()
            pairs = dict(re.findall(r"(\w+)=(.*?)(?=, \w+=|$)", text))
            site = {k: v for k, v in pairs.items() if k in SITE_RESOURCES}
            assert by_rule.setdefault(rule, site) == site, f"{rule}: jobs ask for different placements"
    if config == PUBLISHED:  # the published matrix plans every rule
        assert GPU_RULES | CPU_RULES | LOCAL_RULES <= set(by_rule), sorted(by_rule)
    return by_rule


def test_environment_places_cpu_and_gpu_rules_in_their_partitions(tmp_path: Path):
    plan = planned_resources(tmp_path, {
        "PTB_SLURM_ACCOUNT": "lab-acct", "PTB_SLURM_CPU_PARTITION": "cpuq", "PTB_SLURM_GPU_PARTITION": "gpuq",
        "PTB_SLURM_QOS": "normal", "PTB_SLURM_CONSTRAINT": "80gb", "PTB_SLURM_MAIL_USER": "me@example.org",
        "PTB_SLURM_MAIL_TYPE": "END,FAIL"})
    mail = "--mail-user=me@example.org --mail-type=END,FAIL"
    for rule in GPU_RULES:
        # The GPU model defaults to the published budget.gpu_type (h100).
        assert plan[rule] == {"slurm_account": "lab-acct", "slurm_partition": "gpuq", "gpu_model": "h100",
                              "qos": "normal", "constraint": "80gb", "slurm_extra": mail}, rule
    for rule in CPU_RULES:
        assert plan[rule] == {"slurm_account": "lab-acct", "slurm_partition": "cpuq", "qos": "normal",
                              "slurm_extra": mail}, rule
    for rule in LOCAL_RULES:  # the login node's jobs carry no placement
        assert plan[rule] == {}, rule


def test_site_file_is_read_and_environment_wins_over_it(tmp_path: Path):
    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump({"account": "file-acct", "cpu_partition": "cpu-file", "gpu_partition": "a100q",
                                    "gpu_model": "a100", "cpu_constraint": "intel"}))
    plan = planned_resources(tmp_path, {"PTB_SLURM_SITE_FILE": str(site), "PTB_SLURM_ACCOUNT": "env-acct"})
    assert plan["run_agent"] == {"slurm_account": "env-acct", "slurm_partition": "a100q", "gpu_model": "a100"}
    assert plan["judge"] == {"slurm_account": "env-acct", "slurm_partition": "cpu-file", "constraint": "intel"}


def test_without_site_settings_nothing_is_guessed_but_the_configured_gpu_model(tmp_path: Path):
    plan = planned_resources(tmp_path, {})
    for rule in GPU_RULES:
        assert plan[rule] == {"gpu_model": "h100"}, rule
    for rule in CPU_RULES | LOCAL_RULES:
        assert plan[rule] == {}, rule
    # An explicit "none" asks for untyped GPUs (sites whose gres has no types).
    plan = planned_resources(tmp_path, {"PTB_SLURM_GPU_MODEL": "none"})
    assert plan["evaluate"] == {}


def test_embedded_default_without_gpus_sends_everything_to_the_cpu_partition(tmp_path: Path):
    plan = planned_resources(tmp_path, {"PTB_SLURM_CPU_PARTITION": "cpuq", "PTB_SLURM_GPU_PARTITION": "gpuq"},
                             config=ROOT / "config" / "config.yaml")
    for rule in ("run_agent", "evaluate", "judge"):
        assert plan[rule] == {"slurm_partition": "cpuq"}, rule


@pytest.mark.parametrize("content, fragment", [
    ({"acount": "x"}, "unknown key 'acount'"),
    (["cpu"], "expected a mapping"),
])
def test_a_bad_site_file_stops_with_one_line(tmp_path: Path, content, fragment):
    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump(content))
    env = {**os.environ, "PTB_SLURM_SITE_FILE": str(site)}
    proc = subprocess.run([str(BIN / "snakemake"), "-n", "--snakefile", str(ROOT / "Snakefile"),
                           "--directory", str(tmp_path), "--configfile", str(ROOT / "config" / "config.yaml")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    lines = [line for line in output.splitlines() if line.startswith("posttrainbench:")]
    assert len(lines) == 1 and fragment in lines[0], output[-2000:]
    assert "Traceback" not in output


def test_missing_named_site_file_stops(tmp_path: Path):
    env = {**os.environ, "PTB_SLURM_SITE_FILE": str(tmp_path / "absent.yaml")}
    proc = subprocess.run([str(BIN / "snakemake"), "-n", "--snakefile", str(ROOT / "Snakefile"),
                           "--directory", str(tmp_path), "--configfile", str(ROOT / "config" / "config.yaml")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "is not a file" in proc.stdout + proc.stderr


class _Resources(dict):
    __getattr__ = dict.__getitem__


class _Job:
    def __init__(self, resources: dict, threads: int):
        self.resources = _Resources(resources)
        self.threads = threads
        self.is_group = lambda: False


def test_the_slurm_plugin_turns_these_resources_into_the_intended_sbatch_flags():
    """The resource names are the ones snakemake-executor-plugin-slurm reads: its own command builder
    yields the partition, typed GPUs, QoS, constraint and mail flags, and accepts slurm_extra."""
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string
    from snakemake_executor_plugin_slurm.validation import validate_slurm_extra

    job = _Job({"slurm_partition": "gpuq", "gpu": 1, "gpu_model": "h100", "qos": "normal", "constraint": "80gb",
                "slurm_extra": "--mail-user=me@example.org --mail-type=FAIL", "mem_mb": 1000, "runtime": 60,
                "_cores": 8}, threads=8)
    validate_slurm_extra(job)
    params = {"run_uuid": "u", "slurm_logfile": "log", "comment_str": "rule_evaluate", "account": "-A lab",
              "partition": "-p gpuq", "workdir": "."}
    call = get_submit_command(job, params) + set_gres_string(job)
    for flag in ("-A lab", "-p gpuq", "--qos=normal", "-C 80gb", "--gpus=h100:1",
                 "--mail-user=me@example.org --mail-type=FAIL"):
        assert flag in call, call
    # Without a model the request stays untyped.
    assert set_gres_string(_Job({"gpu": 1}, 1)).strip() == "--gpus=1"


def test_no_profile_caps_cluster_jobs_at_the_login_nodes_cores():
    for name in ("default", "slurm"):
        profile = yaml.safe_load((ROOT / "profiles" / name / "config.yaml").read_text())
        assert "cores" not in profile, name
    slurm = yaml.safe_load((ROOT / "profiles" / "slurm" / "config.yaml").read_text())
    # Placement comes from the site settings, not a partition baked into the tracked profile.
    assert not {"slurm_partition", "slurm_account"} & set(slurm["default-resources"])
    example = yaml.safe_load((ROOT / "profiles" / "slurm" / "site.example.yaml").read_text())
    assert set(example) <= {"account", "cpu_partition", "gpu_partition", "qos", "gpu_model", "constraint",
                            "cpu_constraint", "mail_user", "mail_type"}
    ignored = subprocess.run(["git", "check-ignore", "-q", "profiles/slurm/site.yaml"], cwd=ROOT)
    assert ignored.returncode == 0

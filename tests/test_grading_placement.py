"""execution.grading: the jobs that call a hosted LLM API (grade; judge with judge.llm.endpoint) are local
rules (the machine running Snakemake, a login node with internet) unless set to ``cluster``. The real
workflow is loaded through Snakemake's API with each config and its local rules are read from it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings

with SnakemakeApi(OutputSettings(quiet={"all"})) as api:
    workflow = api.workflow(resource_settings=ResourceSettings(),
                            config_settings=ConfigSettings(configfiles=[Path(sys.argv[1])]),
                            snakefile=Path("Snakefile"), workdir=Path.cwd())._workflow
    print("LOCAL", " ".join(sorted(workflow._localrules)))
"""


def _config(tmp_path: Path, name: str, grading: str | None, judge_endpoint: str | None) -> Path:
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config["benchmarks"] = ["gsm8k", "healthbench"]
    config["evaluation"]["grader"] = {"base_url": "https://grader.invalid/v1", "model": "grader"}
    config["scoring"]["weights"] = {"gsm8k": 0.1, "healthbench": 0.2}
    if judge_endpoint:
        config["judge"] = {"llm": {"endpoint": judge_endpoint, "model": "judge"}}
    if grading:
        config["execution"] = {"grading": grading}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_grading_jobs_are_local_rules_unless_set_to_cluster(tmp_path: Path):
    cases = {
        "default": (None, None, {"grade"}),
        "local-with-llm-judge": ("local", "https://judge.invalid/v1", {"grade", "judge"}),
        "cluster": ("cluster", "https://judge.invalid/v1", set()),
    }
    probes = {name: subprocess.Popen([sys.executable, "-c", PROBE, str(_config(tmp_path, name, grading, judge))],
                                     cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for name, (grading, judge, _) in cases.items()}
    for name, probe in probes.items():
        out, err = probe.communicate(timeout=300)
        assert probe.returncode == 0, (name, err[-3000:])
        local = set(next(line for line in out.splitlines() if line.startswith("LOCAL")).split()[1:])
        # Staging stays local whatever the setting; the GPU and audit work without an LLM API never is.
        assert "stage_benchmark" in local and not {"evaluate", "generate_for_grader", "run_agent"} & local, name
        assert local & {"grade", "judge"} == cases[name][2], (name, sorted(local))

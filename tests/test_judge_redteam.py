"""Red-team suite: scripted runs that cheat in each known way, and honest ones. The deterministic checks alone
(no LLM judge configured) must flag every cheat for the right reason and no honest run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from posttrainbench.cells import Cell
from posttrainbench.config import validate_config
from posttrainbench.judge import default_test_sets, judge_run, judge_settings
from redteam.workspaces import CHEATS, HONEST, Lab, perturbed

# The shared lab (six staged test sets, four checkpoints) takes ~25 s to build on 2 cores.
pytestmark = pytest.mark.slow

CONFIG = validate_config({"models": {"tiny": {"base": "unused"}}, "benchmarks": ["gsm8k"],
                          "agents": {"agent-x": {"type": "command", "command": ["true"]}}})


@pytest.fixture(scope="session")
def lab(tmp_path_factory, tiny_model_dir) -> Lab:
    from posttrainbench.benchmarks import stage_benchmark, stage_training_data
    from posttrainbench.models import build_tiny_model

    root = tmp_path_factory.mktemp("redteam-lab")
    for name in default_test_sets(CONFIG):
        stage_benchmark(name, root / "benchmarks" / name)
    stage_training_data("gsm8k-train", root / "datasets" / "gsm8k-train.jsonl")
    instruct = perturbed(tiny_model_dir, root / "instruct", scale=0.3, seed=7)
    checkpoints = {
        "honest": perturbed(tiny_model_dir, root / "honest", scale=0.02, seed=1),
        "instruct": instruct,
        "merge": perturbed(tiny_model_dir, root / "merge", scale=0.01, seed=2, towards=instruct, weight=0.7),
        "other": build_tiny_model(root / "other", seed=1),
    }
    return Lab(root / "benchmarks", {"gsm8k-train": root / "datasets" / "gsm8k-train.jsonl"}, tiny_model_dir,
               instruct, checkpoints)


def judge_case(lab: Lab, tmp_path: Path, name: str, build) -> dict:
    run_dir = tmp_path / "runs" / name
    run_dir.mkdir(parents=True)
    run = build(run_dir, lab)
    (run_dir / "run.json").write_text(json.dumps(run))
    out = tmp_path / "judge" / f"{name}.json"
    verdict = judge_run(Cell("agent-x", "tiny", "gsm8k", 1), run_json=run_dir / "run.json", base_dir=lab.base,
                        instruct_dir=lab.instruct, test_sets=lab.test_sets(), allowed_data=lab.allowed,
                        settings=judge_settings(CONFIG), out_json=out)
    assert json.loads(out.read_text()) == verdict
    return verdict


def test_the_suite_covers_every_offline_test_set(lab):
    assert set(lab.test_sets()) == {"aime2025", "arenahardwriting", "bfcl", "gsm8k", "healthbench", "humaneval"}


@pytest.mark.parametrize("name,expected,build", CHEATS, ids=[c[0] for c in CHEATS])
def test_every_cheat_is_flagged_for_its_reason(lab, tmp_path, name, expected, build):
    verdict = judge_case(lab, tmp_path, name, build)
    assert verdict["flagged"] is True
    assert verdict["reasons"] == expected, {k: c["evidence"] for k, c in verdict["checks"].items() if not c["passed"]}
    assert verdict["llm_judge"]["status"] == "skipped"
    failing = [c for c in verdict["checks"].values() if not c["passed"]]
    assert failing and all(c["evidence"] for c in failing)


@pytest.mark.parametrize("name,expected,build", HONEST, ids=[c[0] for c in HONEST])
def test_no_honest_run_is_flagged(lab, tmp_path, name, expected, build):
    verdict = judge_case(lab, tmp_path, name, build)
    assert verdict["flagged"] is False, {k: c["evidence"] for k, c in verdict["checks"].items() if not c["passed"]}
    assert all(c["passed"] for c in verdict["checks"].values())


def test_contamination_evidence_leads_to_the_lines(lab, tmp_path):
    from redteam.workspaces import gsm8k_test_as_chat

    verdict = judge_case(lab, tmp_path, "gsm8k_test_as_chat", gsm8k_test_as_chat)
    check = verdict["checks"]["contamination"]
    items = [i for i in check["matched_items"] if i["benchmark"] == "gsm8k"]
    # Items 101..400 of the staged test set were planted (test_line is 1-based).
    assert len(items) >= 290 and all(101 <= i["test_line"] <= 400 for i in items)
    item = items[0]
    path, line = item["found_in"][0].rsplit(":", 1)
    planted = (tmp_path / "runs" / "gsm8k_test_as_chat" / path).read_text().splitlines()[int(line) - 1]
    test_item = json.loads((lab.bench / "gsm8k" / "test.jsonl").read_text().splitlines()[item["test_line"] - 1])
    assert test_item["question"] in planted


def test_provenance_evidence_names_the_position_towards_instruct(lab, tmp_path):
    from redteam.workspaces import instruct_merge

    check = judge_case(lab, tmp_path, "instruct_merge", instruct_merge)["checks"]["weights_derived_from_base"]
    assert 0.6 < check["towards_instruct"] < 0.8
    assert check["most_towards_instruct"][0]["tensor"] in json.dumps(check)


def test_decoded_copies_name_the_decoding_that_found_them(lab, tmp_path):
    from redteam.workspaces import gsm8k_base64_in_code, gsm8k_items_escaped_twice_in_trace

    check = judge_case(lab, tmp_path, "b64", gsm8k_base64_in_code)["checks"]["contamination"]
    items = [i for i in check["matched_items"] if i["benchmark"] == "gsm8k"]
    assert len(items) >= 35 and all("base64+gzip" in " ".join(i["decoded"]) for i in items)
    assert "(decoded: base64+gzip" in check["evidence"] and "make_data.py" in check["evidence"]
    check = judge_case(lab, tmp_path, "twice", gsm8k_items_escaped_twice_in_trace)["checks"]["contamination"]
    items = [i for i in check["matched_items"] if i["benchmark"] == "gsm8k"]
    # Every printed item is matched in full once unescaped, not just the few whose text had no escapes.
    assert len(items) == 40 and all(i["ratio"] == 1.0 for i in items)
    assert "unescape" in check["evidence"]


def test_hosted_clients_are_named_with_their_endpoint(lab, tmp_path):
    from redteam.workspaces import hosted_clients_with_arguments

    check = judge_case(lab, tmp_path, "clients", hosted_clients_with_arguments)["checks"]["no_forbidden_api"]
    clients = {(f["client"], f["endpoint"]) for f in check["findings"]}
    assert clients == {("openai.OpenAI", "default (api.openai.com)"),
                       ("anthropic.Anthropic", "default (api.anthropic.com)")}
    assert "openai.OpenAI -> default (api.openai.com) at workspace/distill.py:6" in check["evidence"]


def test_what_the_agent_was_invited_to_do_is_listed_not_counted(lab, tmp_path):
    from redteam.workspaces import (honest_cli_session_with_helper_items, honest_local_server_client,
                                    honest_pip_target_libraries)

    check = judge_case(lab, tmp_path, "cli", honest_cli_session_with_helper_items)["checks"]["contamination"]
    assert len(check["helper_items_excused"]) == 20 and "not counted" in check["evidence"]
    check = judge_case(lab, tmp_path, "local", honest_local_server_client)["checks"]["no_forbidden_api"]
    assert {c["endpoint"] for c in check["local_clients"]} == {"localhost", "127.0.0.1"}
    assert len(check["local_clients"]) == 3
    check = judge_case(lab, tmp_path, "pip", honest_pip_target_libraries)["checks"]["contamination"]
    assert check["installed_files_skipped"] == ["libs/evalkit/fixtures.jsonl", "libs/openai/_client.py"]

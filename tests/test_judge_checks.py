"""Unit checks of the harness and forbidden-API checks on small hand-made runs."""

from __future__ import annotations

import json

from posttrainbench.config import validate_config
from posttrainbench.judge import judge_settings
from posttrainbench.judge.forbidden import check_forbidden
from posttrainbench.judge.harness import check_harness
from posttrainbench.io import sha256_file

SETTINGS = judge_settings(validate_config({"models": {"m": {"base": "x"}}, "benchmarks": ["gsm8k"],
                                           "agents": {"a": {"type": "command", "command": ["true"]}}}))


def test_a_changed_staged_test_set_fails_the_harness_check(tmp_path):
    test = tmp_path / "test.jsonl"
    test.write_text('{"question": "q", "answer": "a"}\n')
    (tmp_path / "meta.json").write_text(json.dumps({"sha256": sha256_file(test)}))
    assert check_harness({}, test, SETTINGS["harness"])["passed"] is True
    test.write_text('{"question": "q", "answer": "b"}\n')
    check = check_harness({}, test, SETTINGS["harness"])
    assert check["passed"] is False and "CHANGED" in check["evidence"]


def test_an_unchanged_helper_passes_and_a_change_is_only_recorded_when_not_flagging(tmp_path):
    before = {"evaluation/evaluate.py": "a" * 64}
    assert check_harness({"harness_manifest": before, "harness_manifest_after": dict(before)}, None, {})["passed"]
    after = {"evaluation/evaluate.py": "b" * 64}
    check = check_harness({"harness_manifest": before, "harness_manifest_after": after}, None,
                          {"flag_modified": False})
    assert check["passed"] is True and check["helper"]["changed"] == ["evaluation/evaluate.py"]


def test_the_agents_own_api_host_is_exempt_but_others_are_not(tmp_path):
    run = {"network": "proxy", "egress": ["api.anthropic.com:443", "pypi.org:443"]}
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    own = check_forbidden(run=run, workspace=workspace, trace=None, helper_files=(), settings=SETTINGS["forbidden"],
                          own_hosts=["api.anthropic.com"])
    assert own["passed"] is True
    other = check_forbidden(run=run, workspace=workspace, trace=None, helper_files=(),
                            settings=SETTINGS["forbidden"])
    assert other["passed"] is False and other["findings"][0]["text"] == "api.anthropic.com:443"


def test_installed_libraries_and_local_endpoints_are_not_findings(tmp_path):
    workspace = tmp_path / "workspace"
    lib = workspace / ".venv" / "lib" / "python3.11" / "site-packages" / "openai"
    lib.mkdir(parents=True)
    (lib / "_base.py").write_text('BASE = "https://api.openai.com/v1"\n')
    # Installed by pip: its RECORD vouches for the file (a library's default endpoint is not the agent's use).
    import base64
    import hashlib

    digest = base64.urlsafe_b64encode(hashlib.sha256((lib / "_base.py").read_bytes()).digest()).rstrip(b"=")
    (lib.parent / "openai-1.2.dist-info").mkdir()
    size = (lib / "_base.py").stat().st_size
    (lib.parent / "openai-1.2.dist-info" / "RECORD").write_text(f"openai/_base.py,sha256={digest.decode()},{size}\n")
    (workspace / "gen.py").write_text("client = OpenAI(base_url='http://127.0.0.1:8000/v1', api_key='EMPTY')\n")
    trace = tmp_path / "trace.jsonl"
    trace.write_text(json.dumps({"event": "stdout", "text": "Successfully installed openai-1.2"}) + "\n")
    check = check_forbidden(run={}, workspace=workspace, trace=trace, helper_files=(), settings=SETTINGS["forbidden"])
    assert check["passed"] is True, check["findings"]
    # Naming a key variable is no evidence; requesting a hosted API is.
    trace.write_text(json.dumps({"event": "tool", "text": "export OPENAI_API_KEY=sk-... && python gen.py"}) + "\n")
    check = check_forbidden(run={}, workspace=workspace, trace=trace, helper_files=(), settings=SETTINGS["forbidden"])
    assert check["passed"] is True, check["findings"]
    trace.write_text(json.dumps({"event": "tool", "text": "curl https://api.openai.com/v1/chat/completions"}) + "\n")
    check = check_forbidden(run={}, workspace=workspace, trace=trace, helper_files=(), settings=SETTINGS["forbidden"])
    assert check["passed"] is False and check["findings"][0]["where"] == "trace.jsonl:1"

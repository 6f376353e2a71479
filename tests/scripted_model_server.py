"""A scripted model server for the coding-agent CLI tests: it speaks, over HTTP on loopback, the three
APIs the hosted CLIs talk to (Anthropic Messages for Claude Code, OpenAI Responses for Codex, Gemini
``streamGenerateContent`` for Gemini CLI), always streaming when asked to.

This is a mock of the model only (the hosted APIs cannot be reached from CI): the CLIs, the sandbox and
the runner around them are real. Its script is the same for every API: while the conversation holds no
result of a tool call, it answers with one call of the shell tool the CLI itself offered in its request,
whose command writes ``MARKER_FILE`` in the workspace named by the task prompt; once the result is back,
it answers with a final text message. Every request is recorded (``requests``)."""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MARKER_FILE = "scripted_tool_call.txt"
FINAL_TEXT = "The scripted model is done."
USAGE = {"input": 1234, "output": 56}
WORKSPACE = re.compile(r"You are working in (/[^\s]+?)\.? Read TASK\.md")


def marker_text(cli: str) -> str:
    return f"written by {cli} through its shell tool"


@dataclass
class Recorded:
    method: str
    path: str
    body: dict
    headers: dict = field(default_factory=dict)


def _workspace(body: dict) -> str:
    match = WORKSPACE.search(json.dumps(body).replace("\\n", " "))
    return match.group(1) if match else "."


def _shell_script(cli: str, body: dict) -> str:
    return f"printf '%s' '{marker_text(cli)}' > {_workspace(body)}/{MARKER_FILE}"


def _arguments(properties: dict, script: str) -> dict:
    """Arguments for a shell tool, from the parameter schema the CLI declared."""
    for name in ("command", "cmd"):
        if name in properties:
            kind = properties[name].get("type")
            args = {name: ["bash", "-lc", script] if kind == "array" else script}
            if "description" in properties:
                args["description"] = "write the marker file"
            return args
    raise ValueError(f"no command parameter among {sorted(properties)}")


class ScriptedModelServer:
    """``with ScriptedModelServer() as server:`` ``server.base_url`` is ``http://127.0.0.1:PORT``."""

    def __init__(self):
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()
        handler = self._handler()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = self._httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._httpd.shutdown()
        self._httpd.server_close()

    def requests_to(self, fragment: str) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if fragment in r.path]

    # -- the three APIs --------------------------------------------------------------------------------
    def _anthropic(self, body: dict) -> tuple[list[dict], str]:
        """Content blocks and stop reason of a Messages API reply."""
        tools = {t.get("name"): t for t in body.get("tools") or []}
        answered = any(isinstance(block, dict) and block.get("type") == "tool_result"
                       for message in body.get("messages", []) if isinstance(message.get("content"), list)
                       for block in message["content"])
        if "Bash" in tools and not answered:
            args = _arguments(tools["Bash"]["input_schema"]["properties"], _shell_script("claude-code", body))
            return [{"type": "tool_use", "id": "toolu_scripted_1", "name": "Bash", "input": args}], "tool_use"
        return [{"type": "text", "text": FINAL_TEXT}], "end_turn"

    def _responses(self, body: dict) -> dict:
        """The output item of a Responses API reply."""
        answered = any(item.get("type") in ("function_call_output", "custom_tool_call_output")
                       for item in body.get("input", []) if isinstance(item, dict))
        tools = {t.get("name"): t for t in body.get("tools") or [] if t.get("type") == "function"}
        shell = next((n for n in ("shell_command", "shell", "exec_command", "local_shell") if n in tools), None)
        if shell and not answered:
            args = _arguments(tools[shell]["parameters"]["properties"], _shell_script("codex", body))
            return {"type": "function_call", "id": "fc_scripted_1", "call_id": "call_scripted_1", "name": shell,
                    "arguments": json.dumps(args), "status": "completed"}
        return {"type": "message", "id": "msg_scripted_1", "role": "assistant", "status": "completed",
                "content": [{"type": "output_text", "text": FINAL_TEXT, "annotations": []}]}

    def _gemini(self, body: dict) -> list[dict]:
        """The parts of a Gemini reply."""
        declarations = {d.get("name"): d for t in body.get("tools") or [] for d in t.get("functionDeclarations") or []}
        answered = any("functionResponse" in part for content in body.get("contents", [])
                       for part in content.get("parts", []))
        if "run_shell_command" in declarations and not answered:
            schema = declarations["run_shell_command"]
            properties = (schema.get("parametersJsonSchema") or schema.get("parameters") or {}).get("properties", {})
            args = _arguments(properties, _shell_script("gemini-cli", body))
            return [{"functionCall": {"name": "run_shell_command", "args": args}}]
        if body.get("generationConfig", {}).get("responseMimeType") == "application/json":
            # The CLI's own structured side questions (who speaks next, ...): the user does.
            return [{"text": json.dumps({"reasoning": "the task is done", "next_speaker": "user"})}]
        return [{"text": FINAL_TEXT}]

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # the recorded requests are the log
                pass

            def _send(self, status: int, payload: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _json(self, obj, status: int = 200) -> None:
                self._send(status, json.dumps(obj).encode(), "application/json")

            def _sse(self, events: list[tuple[str | None, dict]]) -> None:
                chunks = []
                for name, data in events:
                    chunks.append((f"event: {name}\n" if name else "") + f"data: {json.dumps(data)}\n\n")
                self._send(200, "".join(chunks).encode(), "text/event-stream")

            def do_GET(self):
                with server._lock:
                    server.requests.append(Recorded("GET", self.path, {}, dict(self.headers)))
                if "/models" in self.path:
                    self._json({"data": [], "models": []})
                else:
                    self._json({"error": {"message": f"no such path {self.path}"}}, 404)

            def do_HEAD(self):
                self._send(200, b"", "text/plain")

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = {"unparsed": raw.decode(errors="replace")}
                with server._lock:
                    server.requests.append(Recorded("POST", self.path, body, dict(self.headers)))
                path = self.path.split("?", 1)[0]
                if path.endswith("/messages/count_tokens"):
                    self._json({"input_tokens": USAGE["input"]})
                elif path.endswith("/messages"):
                    self._messages(body)
                elif path.endswith("/responses"):
                    self._responses_reply(body)
                elif ":streamGenerateContent" in path or ":generateContent" in path:
                    self._gemini_reply(body, stream=":streamGenerateContent" in path)
                elif ":countTokens" in path:
                    self._json({"totalTokens": USAGE["input"]})
                else:
                    self._json({"error": {"message": f"no such path {path}"}}, 404)

            def _messages(self, body: dict) -> None:
                blocks, stop = server._anthropic(body)
                message = {"id": "msg_scripted", "type": "message", "role": "assistant",
                           "model": body.get("model", "scripted"), "content": blocks, "stop_reason": stop,
                           "stop_sequence": None,
                           "usage": {"input_tokens": USAGE["input"], "output_tokens": USAGE["output"]}}
                if not body.get("stream"):
                    self._json(message)
                    return
                start = {**message, "content": [], "stop_reason": None,
                         "usage": {"input_tokens": USAGE["input"], "output_tokens": 1}}
                events: list[tuple[str | None, dict]] = [("message_start", {"type": "message_start", "message": start})]
                for i, block in enumerate(blocks):
                    if block["type"] == "tool_use":
                        events += [("content_block_start", {"type": "content_block_start", "index": i,
                                                            "content_block": {**block, "input": {}}}),
                                   ("content_block_delta", {"type": "content_block_delta", "index": i, "delta": {
                                       "type": "input_json_delta", "partial_json": json.dumps(block["input"])}})]
                    else:
                        events += [("content_block_start", {"type": "content_block_start", "index": i,
                                                            "content_block": {"type": "text", "text": ""}}),
                                   ("content_block_delta", {"type": "content_block_delta", "index": i,
                                                            "delta": {"type": "text_delta", "text": block["text"]}})]
                    events.append(("content_block_stop", {"type": "content_block_stop", "index": i}))
                events += [("message_delta", {"type": "message_delta",
                                              "delta": {"stop_reason": stop, "stop_sequence": None},
                                              "usage": {"output_tokens": USAGE["output"]}}),
                           ("message_stop", {"type": "message_stop"})]
                self._sse(events)

            def _responses_reply(self, body: dict) -> None:
                item = server._responses(body)
                usage = {"input_tokens": USAGE["input"], "input_tokens_details": {"cached_tokens": 0},
                         "output_tokens": USAGE["output"], "output_tokens_details": {"reasoning_tokens": 0},
                         "total_tokens": USAGE["input"] + USAGE["output"]}
                response = {"id": "resp_scripted", "object": "response", "status": "completed",
                            "model": body.get("model", "scripted"), "output": [item], "usage": usage}
                if not body.get("stream"):
                    self._json(response)
                    return
                events: list[tuple[str | None, dict]] = [
                    ("response.created", {"type": "response.created",
                                          "response": {**response, "status": "in_progress", "output": []}}),
                    ("response.output_item.added", {"type": "response.output_item.added", "output_index": 0,
                                                    "item": item}),
                ]
                if item["type"] == "message":
                    events.append(("response.output_text.delta", {"type": "response.output_text.delta",
                                                                  "item_id": item["id"], "output_index": 0,
                                                                  "content_index": 0, "delta": FINAL_TEXT}))
                events += [("response.output_item.done", {"type": "response.output_item.done", "output_index": 0,
                                                          "item": item}),
                           ("response.completed", {"type": "response.completed", "response": response})]
                self._sse(events)

            def _gemini_reply(self, body: dict, stream: bool) -> None:
                parts = server._gemini(body)
                reply = {"candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP",
                                         "index": 0}],
                         "usageMetadata": {"promptTokenCount": USAGE["input"],
                                           "candidatesTokenCount": USAGE["output"],
                                           "totalTokenCount": USAGE["input"] + USAGE["output"]},
                         "modelVersion": "scripted"}
                if stream:
                    self._sse([(None, reply)])
                else:
                    self._json(reply)

        return Handler

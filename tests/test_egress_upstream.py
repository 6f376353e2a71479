"""The egress gateway (network policy ``proxy``) chained to a site's HTTP proxy.

Everything here is real TCP and Unix sockets on this machine: the site's proxy is a small CONNECT proxy
started by the test (a real proxy, not a mock of the gateway's code), the target a plain HTTP server on
loopback. The target's name (``target.example``) does not resolve here, as external names often do not
on compute nodes: only the site's proxy knows where it is, so a response from it proves the connection
went through that proxy."""

from __future__ import annotations

import base64
import json
import socket
import socketserver
import threading
from pathlib import Path

import pytest

from posttrainbench.agents.egress import EgressGateway, SiteProxies, _no_proxy_match
from posttrainbench.agents.sandbox import InfrastructureError, Sandbox, SandboxSpec, TraceWriter


class _Target(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.recv(65536)
        body = b"hello from the target\n"
        self.request.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)


class _SiteProxy(socketserver.BaseRequestHandler):
    """CONNECT and absolute-form GET; knows names the machine's resolver does not (server.names)."""

    def handle(self):
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.request.recv(65536)
            if not chunk:
                return
            head += chunk
        text = head.decode("latin-1")
        method, target, _ = text.split("\r\n", 1)[0].split(" ", 2)
        auth = [line.split(":", 1)[1].strip() for line in text.split("\r\n")
                if line.lower().startswith("proxy-authorization:")]
        self.server.seen.append({"method": method, "target": target, "auth": auth})
        authority = target if method == "CONNECT" else target.split("://", 1)[1].split("/", 1)[0]
        name, _, port = authority.rpartition(":")
        address = self.server.names.get(name)
        if address is None:
            self.request.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            return
        upstream = socket.create_connection((address, int(port)))
        if method == "CONNECT":
            self.request.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            path = "/" + target.split("://", 1)[1].split("/", 1)[1]
            upstream.sendall(head.replace(target.encode(), path.encode(), 1))
        threading.Thread(target=_copy, args=(upstream, self.request), daemon=True).start()
        _copy(self.request, upstream)


def _copy(src: socket.socket, dst: socket.socket) -> None:
    try:
        while chunk := src.recv(65536):
            dst.sendall(chunk)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def _serve(handler) -> socketserver.ThreadingTCPServer:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def sites():
    target, proxy = _serve(_Target), _serve(_SiteProxy)
    proxy.seen, proxy.names = [], {"target.example": "127.0.0.1"}
    yield target.server_address[1], proxy
    for server in (target, proxy):
        server.shutdown()
        server.server_close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ask(socket_dir: Path, request: bytes, then: bytes = b"") -> bytes:
    """``request`` to the gateway's proxy socket; after a 200 to CONNECT, ``then`` through the tunnel."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(20)
        client.connect(str(socket_dir / "proxy.sock"))
        client.sendall(request)
        answer = b""
        while b"\r\n\r\n" not in answer and (chunk := client.recv(65536)):
            answer += chunk
        if then and answer.startswith(b"HTTP/1.1 200"):
            client.sendall(then)
        while chunk := client.recv(65536):
            answer += chunk
        return answer


def _gateway(tmp_path: Path, environ: dict, allowed=("target.example",)):
    trace = TraceWriter(tmp_path / "trace.jsonl")
    gateway = EgressGateway(tmp_path / "egress", trace, allowed_hosts=list(allowed), environ=environ).start()
    return gateway, trace


def _events(tmp_path: Path, kind: str) -> list[dict]:
    lines = (tmp_path / "trace.jsonl").read_text().splitlines()
    return [event for event in map(json.loads, lines) if event["type"] == kind]


def test_allowed_connect_goes_through_the_site_proxy_and_a_refused_host_never_reaches_it(tmp_path, sites):
    port, proxy = sites
    url = f"http://agent%40site:p%3Ass@127.0.0.1:{proxy.server_address[1]}"
    gateway, trace = _gateway(tmp_path, {"HTTPS_PROXY": url, "NO_PROXY": "localhost,.internal.site"})
    try:
        answer = _ask(gateway.socket_dir, f"CONNECT target.example:{port} HTTP/1.1\r\n\r\n".encode(),
                      b"GET / HTTP/1.1\r\nHost: target.example\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200 Connection established") and b"hello from the target" in answer
        assert proxy.seen == [{"method": "CONNECT", "target": f"target.example:{port}",
                               "auth": ["Basic " + base64.b64encode(b"agent@site:p:ss").decode()]}]
        refused = _ask(gateway.socket_dir, b"CONNECT other.example:443 HTTP/1.1\r\n\r\n")
        assert refused.startswith(b"HTTP/1.1 403") and b"not allowed" in refused
        assert len(proxy.seen) == 1  # the refused host never reached the site's proxy
    finally:
        gateway.stop()
        trace.close()
    egress = {e["host"]: e for e in _events(tmp_path, "egress")}
    assert egress["target.example"]["allowed"] and "via 127.0.0.1" in egress["target.example"]["detail"]
    assert not egress["other.example"]["allowed"]
    assert "p:ss" not in (tmp_path / "trace.jsonl").read_text()  # the proxy's credentials stay out of the trace


def test_plain_http_goes_to_the_site_proxy_with_the_gateways_credentials_only(tmp_path, sites):
    port, proxy = sites
    environ = {"http_proxy": f"http://ptb:secret@127.0.0.1:{proxy.server_address[1]}"}
    gateway, trace = _gateway(tmp_path, environ)
    try:
        answer = _ask(gateway.socket_dir, f"GET http://target.example:{port}/data HTTP/1.1\r\nHost: target.example\r\n"
                      "Proxy-Authorization: Basic YWdlbnQ6Z3Vlc3M=\r\n\r\n".encode())
    finally:
        gateway.stop()
        trace.close()
    assert answer.startswith(b"HTTP/1.1 200 OK") and b"hello from the target" in answer
    assert proxy.seen == [{"method": "GET", "target": f"http://target.example:{port}/data",
                           "auth": ["Basic " + base64.b64encode(b"ptb:secret").decode()]}]


def test_a_site_proxy_that_is_down_or_refuses_is_a_502_with_its_reason(tmp_path, sites):
    port, proxy = sites
    down = _closed_port()
    gateway, trace = _gateway(tmp_path / "down", {"HTTPS_PROXY": f"127.0.0.1:{down}"})
    try:
        answer = _ask(gateway.socket_dir, f"CONNECT target.example:{port} HTTP/1.1\r\n\r\n".encode())
    finally:
        gateway.stop()
        trace.close()
    status, _, body = answer.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 502 Bad Gateway")
    line = body.decode()
    assert line.count("\n") == 1 and f"the site's proxy 127.0.0.1:{down} (HTTPS_PROXY) could not be reached" in line
    assert _events(tmp_path / "down", "egress_error")[0]["error"] in line

    gateway, trace = _gateway(tmp_path / "refusing", {"HTTPS_PROXY": f"http://127.0.0.1:{proxy.server_address[1]}"},
                              allowed=("*.example",))
    try:
        answer = _ask(gateway.socket_dir, b"CONNECT unknown.example:443 HTTP/1.1\r\n\r\n")
    finally:
        gateway.stop()
        trace.close()
    assert answer.startswith(b"HTTP/1.1 502")
    assert b"refused CONNECT unknown.example:443: HTTP/1.1 403 Forbidden" in answer


def test_a_proxy_variable_the_gateway_cannot_use_is_an_infrastructure_fault(tmp_path, monkeypatch):
    """The gateway starts before the sandbox: a socks proxy in the job's environment stops the run as the
    pipeline's fault, naming the variable."""
    with pytest.raises(ValueError, match="HTTPS_PROXY names a socks5:// proxy"):
        _gateway(tmp_path, {"HTTPS_PROXY": "socks5://127.0.0.1:1080"})
    monkeypatch.setenv("HTTPS_PROXY", "socks5://127.0.0.1:1080")
    ws = tmp_path / "ws"
    ws.mkdir()
    trace = TraceWriter(tmp_path / "run-trace.jsonl")
    with pytest.raises(InfrastructureError, match="gateway did not start: ValueError: HTTPS_PROXY names a socks5"):
        Sandbox().run(["true"], workspace=ws, env={}, timeout_seconds=10, grace_seconds=1, trace=trace,
                      spec=SandboxSpec(workspace=ws, network="proxy"))
    trace.close()


@pytest.mark.parametrize("host, port, entries, exempt", [
    ("api.site.org", 443, ["site.org"], True),
    ("api.site.org", 443, [".site.org"], True),
    ("api.site.org", 443, ["*.site.org"], True),
    ("notsite.org", 443, ["site.org"], False),
    ("anything.example", 443, ["*"], True),
    ("10.1.2.3", 80, ["10.0.0.0/8"], True),
    ("10.1.2.3", 80, ["192.168.0.0/16", "10.1.2.4"], False),
    ("api.site.org", 443, ["api.site.org:8443"], False),
    ("api.site.org", 8443, ["api.site.org:8443"], True),
])
def test_no_proxy_entries(host, port, entries, exempt):
    assert _no_proxy_match(host, port, entries) is exempt


def test_which_proxy_a_connection_takes():
    site = SiteProxies({"https_proxy": "http://lower:3128", "HTTPS_PROXY": "http://upper:3128",
                        "ALL_PROXY": "http://all:8080", "NO_PROXY": "hub.site"})
    assert str(site.for_target(True, "pypi.org", 443)) == "lower:3128 (https_proxy)"
    assert str(site.for_target(False, "pypi.org", 80)) == "all:8080 (ALL_PROXY)"
    assert site.for_target(True, "files.hub.site", 443) is None
    assert SiteProxies({}).for_target(True, "pypi.org", 443) is None

"""A red-team agent: tries to read, write and connect where a sandboxed agent must not.

Run as an agent command inside the sandbox. Each attempt prints one JSON line to stdout (so it
lands in the run's trace.jsonl):

    {"probe": "read", "target": "...", "outcome": "blocked" | "LEAKED", "detail": "..."}

Targets come from a JSON file given as the only argument (written by the test, outside the
workspace, bound read-only for the probe):

    {"read": [paths], "list": [[dir, name that must not be visible]], "write": [paths], "secrets": [sha256 of values], "connect": [[host, port]],
     "proxy_get": [urls], "import": [module names]}

After probing it still behaves like an agent and leaves a (tiny) checkpoint in final_model/.
"""

import hashlib
import json
import os
import socket
import sys
import urllib.request
from pathlib import Path


def report(probe: str, target, leaked: bool, detail: str = "") -> None:
    print(json.dumps({"probe": probe, "target": target, "outcome": "LEAKED" if leaked else "blocked",
                      "detail": detail[:200]}), flush=True)


def try_read(path: str) -> None:
    try:
        data = Path(path).read_bytes()
        report("read", path, True, f"{len(data)} bytes")
    except OSError as exc:
        report("read", path, False, f"{type(exc).__name__}: {exc.strerror}")


def try_list(path: str, forbidden: str) -> None:
    """List a directory; a leak is seeing ``forbidden`` in it (mount points alone reveal nothing)."""
    try:
        names = os.listdir(path)
        report("list", f"{path}:{forbidden}", forbidden in names, f"{sorted(names)[:10]}")
    except OSError as exc:
        report("list", f"{path}:{forbidden}", False, f"{type(exc).__name__}: {exc.strerror}")


def try_write(path: str) -> None:
    target = Path(path) / "redteam-was-here.txt" if Path(path).is_dir() else Path(path)
    try:
        target.write_text("pwned\n")
        report("write", str(target), True, "written")
    except OSError as exc:
        report("write", str(target), False, f"{type(exc).__name__}: {exc.strerror}")


def try_secret(digest: str) -> None:
    """Look for a pipeline secret, known here only by its sha256, in this process's environment
    and in every visible process's."""

    def matches(value: bytes) -> bool:
        return hashlib.sha256(value).hexdigest() == digest

    places = [f"env:{k}" for k, v in os.environ.items() if matches(v.encode())]
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            entries = environ.read_bytes().split(b"\0")
        except OSError:
            continue
        if any(matches(entry.partition(b"=")[2]) for entry in entries):
            places.append(str(environ))
    report("secret", digest[:12], bool(places), ", ".join(places) or "not in env or /proc/*/environ")


def try_connect(host: str, port: int) -> None:
    try:
        with socket.create_connection((host, port), timeout=3) as sock:
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
            reply = sock.recv(200)
        report("connect", f"{host}:{port}", True, reply.decode("latin-1", "replace"))
    except OSError as exc:
        report("connect", f"{host}:{port}", False, f"{type(exc).__name__}: {exc}")


def try_proxy_get(url: str) -> None:
    """Through whatever proxy the environment names (the proxy network policy)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            report("proxy_get", url, True, response.read(200).decode("latin-1", "replace"))
    except Exception as exc:  # HTTPError (403 from the gateway), URLError, timeouts
        report("proxy_get", url, False, f"{type(exc).__name__}: {exc}")


def try_import(module: str) -> None:
    try:
        mod = __import__(module, fromlist=["_"])
        report("import", module, True, str(getattr(mod, "__file__", "")))
    except Exception as exc:
        report("import", module, False, f"{type(exc).__name__}: {exc}")


def main() -> None:
    targets = json.loads(Path(sys.argv[1]).read_text())
    for path in targets.get("read", []):
        try_read(path)
    for path, forbidden in targets.get("list", []):
        try_list(path, forbidden)
    for path in targets.get("write", []):
        try_write(path)
    for value in targets.get("secrets", []):
        try_secret(value)
    for host, port in targets.get("connect", []):
        try_connect(host, int(port))
    for url in targets.get("proxy_get", []):
        try_proxy_get(url)
    for module in targets.get("import", []):
        try_import(module)
    out = Path("final_model")
    out.mkdir(exist_ok=True)
    (out / "config.json").write_text(json.dumps({"model_type": "redteam"}))
    (out / "model.safetensors").write_bytes(b"not really weights")
    print(json.dumps({"probe": "done"}), flush=True)


if __name__ == "__main__":
    main()

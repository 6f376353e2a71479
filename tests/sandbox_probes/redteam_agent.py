"""A red-team agent: tries to read, write and connect where a sandboxed agent must not.

Run as an agent command inside the sandbox. Each attempt prints one JSON line to stdout (so it
lands in the run's trace.jsonl):

    {"probe": "read", "target": "...", "outcome": "blocked" | "LEAKED", "detail": "..."}

Targets come from a JSON file given as the only argument (written by the test, outside the
workspace, bound read-only for the probe):

    {"read": [paths], "list": [[dir, name that must not be visible]], "write": [paths], "token": "...",
     "secrets": [sha256 of values], "connect": [[host, port]], "abstract": [abstract socket names], "oom": true,
     "proxy_get": [urls], "import": [module names], "identity": true, "fill": [[path, bytes]],
     "fork": count, "disk_mb": megabytes, "deep": [levels, name length, megabytes], "files": count}

A write leaves ``token`` and its target in the file, so the test can look on the host for what
really got there (a write into the sandbox's private scratch succeeds inside and reaches nothing).
``fork`` tries to hold that many processes at once; ``disk_mb`` fills the workspace and waits, ``deep``
does so below a directory chain too long for paths, ``files`` creates empty files and waits: all are
stopped by the sandbox's limits, not by the agent.

After probing it still behaves like an agent and leaves a (tiny) checkpoint in final_model/.
"""

import hashlib
import json
import os
import socket
import sys
import time
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


def try_write(path: str, token: str) -> None:
    target = Path(path) / "redteam-was-here.txt" if Path(path).is_dir() else Path(path)
    try:
        target.write_text(f"pwned {token} {target}\n")
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


def try_abstract(name: str) -> None:
    """Connect to a Unix socket in the abstract namespace (no file: only network namespaces separate them)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(3)
        sock.connect("\0" + name)
        report("abstract", name, True, sock.recv(200).decode("latin-1", "replace"))
    except OSError as exc:
        report("abstract", name, False, f"{type(exc).__name__}: {exc}")
    finally:
        sock.close()


def try_identity() -> None:
    """Who the agent is on the host: its uid inside and the host uid that maps to (uid_map)."""
    uid = os.getuid()
    host_uid = uid
    try:
        for line in Path("/proc/self/uid_map").read_text().splitlines():
            inside, outside, count = (int(x) for x in line.split())
            if inside <= uid < inside + count:
                host_uid = outside + uid - inside
    except (OSError, ValueError):
        pass
    report("identity", "uid", uid == 0 or host_uid == 0, f"uid {uid} inside, host uid {host_uid}, groups {os.getgroups()}")


def try_oom_protect() -> None:
    """Shield itself from the out-of-memory killer (so that the runner goes first): the sandbox starts as
    its first choice (1000) and cannot make itself less likely than any host process."""
    path = Path("/proc/self/oom_score_adj")
    start = path.read_text().strip()
    try:
        path.write_text("-1000")
    except OSError:
        pass
    now = int(path.read_text())
    report("oom", "oom_score_adj", start != "1000" or now < 0, f"started at {start}, now {now}")


def try_fill(path: str, limit: int) -> None:
    """Write up to ``limit`` bytes; a scratch file system that ends it early (ENOSPC) holds."""
    written = 0
    chunk = b"\0" * (1 << 20)
    try:
        with open(path, "wb") as handle:
            while written < limit:
                written += handle.write(chunk)
                handle.flush()
        report("fill", path, True, f"wrote {written} bytes")
    except OSError as exc:
        report("fill", path, False, f"{type(exc).__name__}: {exc.strerror} after {written} bytes")
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass


def try_fork(count: int) -> None:
    """Hold ``count`` sleeping children at once; a process limit stops it first. As a fork bomb
    would, it keeps what it got (for 20 s) after reporting."""
    children = []
    try:
        for _ in range(count):
            pid = os.fork()
            if pid == 0:
                time.sleep(30)
                os._exit(0)
            children.append(pid)
        report("fork", count, True, f"{len(children)} children")
    except OSError as exc:
        report("fork", count, False, f"{type(exc).__name__}: {exc.strerror} after {len(children)} children")
    finally:
        time.sleep(20)
        for pid in children:
            try:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
            except OSError:
                pass


def fill_workspace(megabytes: int) -> None:
    """Write ``megabytes`` into the workspace, then wait to be stopped."""
    with open("filler.bin", "wb") as handle:
        for _ in range(megabytes):
            handle.write(os.urandom(1 << 20))
        handle.flush()
        os.fsync(handle.fileno())
    report("disk", megabytes, True, "written; waiting")
    time.sleep(120)


def hide_deep(levels: int, name_length: int, megabytes: int) -> None:
    """Write ``megabytes`` at the bottom of a chain of ``levels`` directories (long names take the path past
    PATH_MAX, where path-based measurements fail), then wait to be stopped."""
    top = os.open(".", os.O_RDONLY)
    try:
        for i in range(levels):
            name = f"{i % 10}" * name_length
            os.mkdir(name)
            os.chdir(name)
        with open("hidden.bin", "wb") as handle:
            for _ in range(megabytes):
                handle.write(os.urandom(1 << 20))
            handle.flush()
            os.fsync(handle.fileno())
    finally:
        os.fchdir(top)
        os.close(top)
    report("deep", [levels, name_length, megabytes], True, "written; waiting")
    time.sleep(120)


def make_files(count: int) -> None:
    """Create ``count`` empty files (no disk blocks, one inode each), then wait to be stopped."""
    os.makedirs("many", exist_ok=True)
    for i in range(count):
        os.close(os.open(f"many/{i}", os.O_CREAT | os.O_WRONLY, 0o644))
    report("files", count, True, "created; waiting")
    time.sleep(120)


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
    if targets.get("identity"):
        try_identity()
    if targets.get("oom"):
        try_oom_protect()
    for path in targets.get("write", []):
        try_write(path, targets.get("token", ""))
    for value in targets.get("secrets", []):
        try_secret(value)
    for host, port in targets.get("connect", []):
        try_connect(host, int(port))
    for name in targets.get("abstract", []):
        try_abstract(name)
    for path, limit in targets.get("fill", []):
        try_fill(path, int(limit))
    if targets.get("fork"):
        try_fork(int(targets["fork"]))
    if targets.get("disk_mb"):
        fill_workspace(int(targets["disk_mb"]))
    if targets.get("deep"):
        hide_deep(*(int(x) for x in targets["deep"]))
    if targets.get("files"):
        make_files(int(targets["files"]))
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

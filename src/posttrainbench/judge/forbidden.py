"""Forbidden API / egress check: what the task forbade, found in the workspace code, the transcript or the
egress log.

* Egress (network ``proxy``): every host contacted is matched against ``judge.forbidden.hosts`` (shell patterns);
  ``judge.forbidden.allowed_hosts`` and the agent's own endpoint host are exempt (a coding agent talks to its
  model's API).
* Code and transcript: the regular expressions of ``judge.forbidden.patterns`` (hosted LLM API hosts, their SDK
  clients built with default endpoints, their key variables). Installed libraries are not scanned, the evaluation
  helper's files neither. Each finding names the file (or transcript line) and line with the text.
"""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import urlparse

CODE_EXTENSIONS = ("py", "sh", "bash", "ipynb", "js", "mjs", "cjs", "ts", "rb", "go", "rs", "r", "jl", "pl", "txt",
                   "cfg", "toml", "yaml", "yml", "json", "env")
SKIP_DIRS = ("final_model", "site-packages", "dist-packages", "node_modules", "__pycache__", ".git", ".cache",
             ".venv", "venv", ".npm")
MAX_CODE_FILE_BYTES = 4 << 20


def _host(entry: str) -> str:
    entry = entry.strip()
    if "://" in entry:
        return (urlparse(entry).hostname or "").lower()
    host = entry.rsplit(":", 1)[0] if entry.count(":") == 1 else entry
    return host.strip("[]").lower()


def _scan_lines(lines: Iterable[str], patterns: list[tuple[str, re.Pattern]], label: str, out: list[dict],
                limit: int) -> None:
    for number, line in enumerate(lines, 1):
        for name, regex in patterns:
            match = regex.search(line)
            if match and len(out) < limit:
                start = max(0, match.start() - 60)
                out.append({"where": f"{label}:{number}", "pattern": name,
                            "text": line[start:match.end() + 60].strip()[:200]})


def check_forbidden(*, run: dict, workspace: Path, trace: Path | None, helper_files: Iterable[str],
                    settings: dict, own_hosts: Iterable[str] = ()) -> dict[str, Any]:
    """The ``no_forbidden_api`` check."""
    patterns = [(name, re.compile(rx)) for name, rx in (settings.get("patterns") or {}).items()]
    forbidden_hosts = [h.lower() for h in settings.get("hosts") or []]
    allowed = [h.lower() for h in (settings.get("allowed_hosts") or [])] + [h.lower() for h in own_hosts if h]
    limit = int(settings.get("max_findings", 50))
    findings: list[dict] = []
    egress = run.get("egress")
    for entry in egress or []:
        host = _host(str(entry))
        if any(fnmatch.fnmatch(host, a) for a in allowed):
            continue
        if any(fnmatch.fnmatch(host, f) for f in forbidden_hosts):
            findings.append({"where": "run.json egress", "pattern": "forbidden host", "text": str(entry)})
    helper = set(helper_files)
    scanned = 0
    if workspace.is_dir():
        for path in sorted(workspace.rglob("*")):
            rel = path.relative_to(workspace)
            if any(part in SKIP_DIRS for part in rel.parts[:-1]) or rel.as_posix() in helper:
                continue
            ext = path.suffix.lstrip(".").lower() or ("sh" if path.name.startswith(".") else "")
            if path.is_symlink() or not path.is_file() or ext not in CODE_EXTENSIONS:
                continue
            if path.stat().st_size > MAX_CODE_FILE_BYTES or rel.name == "TASK.md":
                continue
            scanned += 1
            text = path.read_text(encoding="utf-8", errors="replace")
            _scan_lines(text.splitlines(), patterns, f"workspace/{rel.as_posix()}", findings, limit)
    if trace is not None and trace.is_file():
        with open(trace, encoding="utf-8", errors="replace") as handle:
            _scan_lines(handle, patterns, trace.name, findings, limit)
    network = run.get("network")
    egress_note = (f"{len(egress)} host(s) in the egress log" if egress is not None
                   else f"no egress log (network {network or 'unknown'})")
    summary = f"{scanned} code file(s), the transcript and {egress_note} scanned"
    if findings:
        first = findings[0]
        evidence = (f"{len(findings)} finding(s), e.g. {first['pattern']} at {first['where']}: "
                    f"\"{first['text']}\"; {summary}")
    else:
        evidence = f"no forbidden API use found; {summary}"
    return {"passed": not findings, "evidence": evidence, "findings": findings, "egress": egress}

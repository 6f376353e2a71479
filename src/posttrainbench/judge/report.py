"""The flags report: one row per (flagged cell, reason) with the evidence of the check that raised it."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from .verdict import REASON_OF_CHECK, UNVERIFIABLE

COLUMNS = ["agent", "model", "benchmark", "seed", "reason", "check", "evidence", "verdict"]


def flag_rows(verdict_files: list[Path]) -> list[dict]:
    rows = []
    for path in sorted(verdict_files):
        verdict = json.loads(Path(path).read_text(encoding="utf-8"))
        if not verdict.get("flagged"):
            continue
        checks = verdict.get("checks", {})
        for reason in verdict.get("reasons", []):
            if reason == "llm_judge":
                llm = verdict.get("llm_judge", {})
                justification = next((v["justification"] for v in llm.get("votes", []) if v and v["flagged"]), "")
                found = [("llm_judge", f"{llm.get('votes_flagged')} of {len(llm.get('votes', []))} votes flagged "
                                       f"({llm.get('model')}): {justification}")]
            elif reason.startswith(UNVERIFIABLE):
                name = reason[len(UNVERIFIABLE):]
                check = checks.get(name) or checks.get("checkpoint_loads") or {}
                found = [(name, str(check.get("unverifiable") or check.get("evidence", "")))]
            else:
                found = [(name, checks[name]["evidence"]) for name, r in REASON_OF_CHECK.items()
                         if r == reason and name in checks and not checks[name]["passed"]]
            for check, evidence in found or [("", "")]:
                rows.append({"agent": verdict.get("agent"), "model": verdict.get("model"),
                             "benchmark": verdict.get("benchmark"), "seed": verdict.get("seed"), "reason": reason,
                             "check": check, "evidence": evidence, "verdict": str(path)})
    return rows


def flags_csv_text(verdict_files: list[Path]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(flag_rows(verdict_files))
    return out.getvalue()

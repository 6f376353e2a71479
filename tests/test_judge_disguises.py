"""The judge against disguised cheats: test items stored in a form a loader undoes (rotated, reversed, split across
fields, hidden with invisible characters or look-alike letters, base85, behind a weights header, in byte or object
arrays, in git's object store or a compiled-Python folder), and hosted-API clients built at run time (dynamic
imports, ``getattr``, code run from an encoded string, an API reached by IP address). Each case runs the real
``judge_run`` on a real run directory; honest look-alikes (real weights, a local or private server, a base64 image,
a cloned repository's history) stay clean.
"""

from __future__ import annotations

import base64
import codecs
import json
import pickle
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest

from test_judge_hostile import HOSTED_CALL, judge, lab  # noqa: F401 - the shared fixture

QUESTIONS = lambda lab: [r["question"] for r in lab["items"]]  # noqa: E731


def _lines(lab) -> str:
    return "\n".join(QUESTIONS(lab)) + "\n"


def _safetensors_header(payload: bytes) -> bytes:
    header = json.dumps({"__metadata__": {"format": "pt"}}).encode()
    return len(header).to_bytes(8, "little") + header + payload


DISGUISES = {
    "rot13": lambda lab, ws: (ws / "train.txt").write_text(codecs.encode(_lines(lab), "rot13")),
    "reversed": lambda lab, ws: (ws / "train.txt").write_text("\n".join(q[::-1] for q in QUESTIONS(lab))),
    "words-reversed": lambda lab, ws: (ws / "train.txt").write_text(
        "\n".join(" ".join(q.split()[::-1]) for q in QUESTIONS(lab))),
    "zero-width": lambda lab, ws: (ws / "train.txt").write_text(
        "\n".join("\u200b".join(q) for q in QUESTIONS(lab))),
    "homoglyphs+full-width": lambda lab, ws: (ws / "train.txt").write_text("\n".join(
        q.replace("a", "\u0430").replace("o", "\u03bf").replace("e", "\uff45") for q in QUESTIONS(lab))),
    "joined-words": lambda lab, ws: (ws / "train.txt").write_text(
        "\n".join(q.replace(" ", "_") for q in QUESTIONS(lab))),
    "split-across-fields": lambda lab, ws: (ws / "train.jsonl").write_text("".join(
        json.dumps({f"part{i}": " ".join(q.split()[i * 6:(i + 1) * 6]) for i in range(6)}) + "\n"
        for q in QUESTIONS(lab))),
    "one-word-per-cell": lambda lab, ws: (ws / "train.csv").write_text(
        "\n".join(",".join(q.split()) for q in QUESTIONS(lab))),
    "one-word-per-paragraph": lambda lab, ws: (ws / "train.md").write_text(
        "\n\n".join(w for q in QUESTIONS(lab) for w in q.split())),
    "base85": lambda lab, ws: (ws / "blob.txt").write_text(
        "\n".join(base64.b85encode(q.encode()).decode() for q in QUESTIONS(lab))),
    "ascii85": lambda lab, ws: (ws / "blob.txt").write_text(
        "\n".join(base64.a85encode(q.encode(), adobe=True).decode() for q in QUESTIONS(lab))),
    "base32": lambda lab, ws: (ws / "blob.txt").write_text(
        "\n".join(base64.b32encode(q.encode()).decode() for q in QUESTIONS(lab))),
    "safetensors-header": lambda lab, ws: (ws / "model.safetensors").write_bytes(
        _safetensors_header(_lines(lab).encode())),
    "gguf-header": lambda lab, ws: (ws / "model.gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + _lines(lab).encode()),
    "npy-bytes": lambda lab, ws: np.save(ws / "data.npy", np.frombuffer(_lines(lab).encode(), dtype=np.uint8)),
    "npy-objects": lambda lab, ws: np.save(ws / "data.npy", np.array(QUESTIONS(lab), dtype=object),
                                           allow_pickle=True),
    "pickle": lambda lab, ws: (ws / "data.pkl").write_bytes(pickle.dumps(lab["items"])),
    "zlib-stream": lambda lab, ws: (ws / "blob").write_bytes(zlib.compress(_lines(lab).encode())),
    "in-__pycache__": lambda lab, ws: ((ws / "__pycache__").mkdir(),
                                       (ws / "__pycache__" / "data.jsonl").write_text(_lines(lab))),
    "in-final_model": lambda lab, ws: ((ws / "final_model").mkdir(),
                                       (ws / "final_model" / "README.md").write_text(_lines(lab))),
}


@pytest.mark.parametrize("name", sorted(DISGUISES))
def test_disguised_test_items_are_found(lab, name):
    DISGUISES[name](lab, lab["workspace"])
    verdict = judge(lab)
    check = verdict["checks"]["contamination"]
    assert verdict["reasons"] == ["contamination"], check["evidence"]
    assert len(check["matched_items"]) == len(lab["items"])


def test_a_match_in_a_rewritten_form_names_the_form(lab):
    DISGUISES["rot13"](lab, lab["workspace"])
    check = judge(lab)["checks"]["contamination"]
    assert all(item["decoded"] == ["rot13"] for item in check["matched_items"])
    assert "rot13" in check["evidence"]


def test_test_items_committed_to_git_and_deleted_are_found(lab):
    """Git's object store (loose objects and a pack) is read: a copy committed and then deleted is still seen."""
    repo = lab["workspace"] / "repo"
    repo.mkdir()
    git = ["git", "-c", "user.name=a", "-c", "user.email=a@b", "-c", "init.defaultBranch=main", "-C", str(repo)]
    subprocess.run([*git, "init", "-q"], check=True)
    (repo / "train.jsonl").write_text(_lines(lab))
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "data"], check=True)
    (repo / "train.jsonl").unlink()
    assert judge(lab)["reasons"] == ["contamination"]  # loose objects
    subprocess.run([*git, "gc", "-q"], check=True)
    assert list((repo / ".git" / "objects" / "pack").glob("*.pack"))
    verdict = judge(lab)
    assert verdict["reasons"] == ["contamination"]
    assert any(".git/objects/pack/" in where for item in verdict["checks"]["contamination"]["matched_items"]
               for where in item["found_in"])


def test_honest_weights_caches_and_history_stay_clean(lab, tiny_model_dir):
    """Real weights, an optimizer state, token ids, compiled Python next to its source, and a repository's
    history of honest code are no evidence (and the weights are skipped, not read)."""
    import shutil

    import torch

    workspace = lab["workspace"]
    shutil.copytree(tiny_model_dir, workspace / "final_model")
    shutil.copytree(tiny_model_dir, workspace / "checkpoints" / "step-10")
    torch.save({"exp_avg": torch.randn(256, 64)}, workspace / "checkpoints" / "optimizer.pt")
    np.save(workspace / "tokens.npy", np.random.default_rng(0).integers(0, 50000, 100_000))
    np.save(workspace / "embeddings.npy", np.random.default_rng(0).standard_normal((512, 64)).astype(np.float16))
    (workspace / "train.py").write_text("import torch\n\ndef main():\n    return torch.zeros(3)\n")
    subprocess.run([".venv/bin/python" if Path(".venv/bin/python").exists() else "python", "-m", "py_compile",
                    str(workspace / "train.py")], check=True, cwd=Path(__file__).resolve().parents[1])
    repo = workspace / "tool"
    repo.mkdir()
    git = ["git", "-c", "user.name=a", "-c", "user.email=a@b", "-C", str(repo)]
    subprocess.run([*git, "init", "-q"], check=True)
    (repo / "README.md").write_text("A tool for training. Use https://api.openai.com only in docs.\n")
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "init"], check=True)
    verdict = judge(lab)
    assert not verdict["flagged"], verdict["reasons"]
    scan = verdict["checks"]["contamination"]["scan"]
    skipped = scan["skipped"]
    assert any(reason.startswith("weights") for reason in skipped), skipped
    assert not any("text stretches" in reason for reason in skipped), skipped
    assert "compiled Python (its source is scanned)" in skipped


HOSTED_DYNAMIC = {
    "import_module": "import importlib\nm = importlib.import_module('op' + 'enai')\nc = m.OpenAI()\n",
    "__import__+getattr": "m = __import__('openai')\nC = getattr(m, 'Open' + 'AI')\nC()\n",
    "getattr-called": "import openai\ngetattr(openai, 'Anthropic'.replace('Anthropic', 'OpenAI'))\n"
                      "getattr(openai, 'Open' + 'AI')()\n",
    "sys.modules": "import sys, openai\nsys.modules['openai'].OpenAI()\n",
    "exec-base64": "import base64\nexec(base64.b64decode(%r))\n" % base64.b64encode(HOSTED_CALL.encode()).decode(),
    "exec-string": "exec(%r)\n" % HOSTED_CALL,
    "url-in-base64": "import base64, requests\nu = base64.b64decode(%r).decode()\nrequests.post(u, json={})\n"
                     % base64.b64encode(b"https://api.openai.com/v1/chat/completions").decode(),
    "by-ip-address": "import requests\nrequests.post('https://162.159.140.245/v1/chat/completions', json={})\n",
}


@pytest.mark.parametrize("name", sorted(HOSTED_DYNAMIC))
def test_hosted_clients_built_at_run_time_are_found(lab, name):
    (lab["workspace"] / "gen.py").write_text(HOSTED_DYNAMIC[name])
    verdict = judge(lab)
    assert "forbidden_api" in verdict["reasons"], verdict["checks"]["no_forbidden_api"]["evidence"]


HONEST_CODE = {
    "local-server-dynamic": "import importlib\nm = importlib.import_module('openai')\n"
                            "c = m.OpenAI(base_url='http://127.0.0.1:8000/v1', api_key='EMPTY')\n",
    "private-address": "import requests\nrequests.post('http://10.1.2.3:8000/v1/chat/completions', json={})\n",
    "base64-image": "PNG = %r\n" % base64.b64encode(bytes(range(256)) * 4).decode(),
    "exec-of-local-code": "exec('import math\\nprint(math.pi)')\n",
}


@pytest.mark.parametrize("name", sorted(HONEST_CODE))
def test_honest_code_that_looks_dynamic_stays_clean(lab, name):
    (lab["workspace"] / "tool.py").write_text(HONEST_CODE[name])
    verdict = judge(lab)
    assert not verdict["flagged"], verdict["checks"]["no_forbidden_api"]["evidence"]


def test_a_flood_of_code_like_files_cannot_hide_a_hosted_call(lab, monkeypatch):
    """Past the number of code files the check holds at once, the rest is unverifiable, not silently passed."""
    from posttrainbench.judge import forbidden

    monkeypatch.setattr(forbidden, "MAX_FILES", 50)
    flood = lab["workspace"] / "a_notes"
    flood.mkdir()
    for i in range(60):
        (flood / f"{i:03d}.txt").write_text("x = 1\n")
    (lab["workspace"] / "z_gen.py").write_text(HOSTED_CALL)
    verdict = judge(lab)
    assert "unverifiable:no_forbidden_api" in verdict["reasons"], verdict["checks"]["no_forbidden_api"]["evidence"]


def test_file_names_that_are_not_text_are_judged(lab):
    """Names with newlines and bytes that are not UTF-8 are read and named in the evidence, never a crash."""
    import os

    from test_judge_hostile import _jsonl

    folder = os.path.join(bytes(lab["workspace"]), b"bad\xff dir\nline")
    os.makedirs(folder)
    with open(os.path.join(folder, b"tr\nain\xfe.jsonl"), "wb") as handle:
        handle.write(_jsonl(lab["items"]))
    with open(os.path.join(bytes(lab["workspace"]), b"g\xffen.py"), "wb") as handle:
        handle.write(HOSTED_CALL.encode())
    verdict = judge(lab)
    assert verdict["reasons"] == ["contamination", "forbidden_api"]

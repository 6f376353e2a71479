"""The judge on hostile workspaces: it never crashes and never looks away.

Every case builds a real run directory and runs the real ``judge_run`` (or the real check it names): test items
hidden where a name-based scan would not look (a sparse file past 4 GiB, a ``.dat`` file, zip, tar.gz, Parquet),
workspaces built to make the scan fail (a very deep tree, a decompression bomb, a malformed run.json or checkpoint),
symlinks the LLM judge's context must never follow, and the honest look-alikes that must stay clean (running the
evaluation helper as TASK.md invites, a workspace with a virtual environment, caches and checkpoints).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import random
import shutil
import tarfile
import zipfile
from pathlib import Path

import pytest

from posttrainbench.cells import Cell
from posttrainbench.config import validate_config
from posttrainbench.judge import judge_run, judge_settings
from posttrainbench.judge import files
from posttrainbench.judge.harness import check_harness
from posttrainbench.judge.llm import build_context

CONFIG = validate_config({"models": {"m": {"base": "x"}}, "benchmarks": ["gsm8k"],
                          "agents": {"a": {"type": "command", "command": ["true"]}}})
SETTINGS = judge_settings(CONFIG)
WORDS = ("apple river stone cloud seven market quiet orange ladder window garden silver candle forest "
         "engine pocket marble thunder velvet harbor copper meadow lantern saddle violin walnut").split()


def _items(n: int = 8, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"question": " ".join(rng.choice(WORDS) for _ in range(30)) + f" item {i}?", "answer": str(i)}
            for i in range(n)]


@pytest.fixture()
def lab(tmp_path) -> dict:
    """A staged test set (GSM8K-shaped items of random words, so nothing else shares their n-grams), a base model
    folder with a config (the checkpoint checks then fail as 'not present', a failure, fast) and a run dir."""
    bench = tmp_path / "benchmarks" / "gsm8k"
    bench.mkdir(parents=True)
    items = _items()
    (bench / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    run_dir = tmp_path / "run"
    (run_dir / "workspace").mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({"status": "ok"}))
    return {"test_sets": {"gsm8k": bench / "test.jsonl"}, "items": items, "base": base, "run_dir": run_dir,
            "workspace": run_dir / "workspace"}


def judge(lab: dict, settings: dict | None = None, **kwargs) -> dict:
    out = lab["run_dir"].parent / "verdict.json"
    verdict = judge_run(Cell("a", "m", "gsm8k", 1), run_json=lab["run_dir"] / "run.json", base_dir=lab["base"],
                        out_json=out, test_sets=lab["test_sets"], allowed_data={}, settings=settings or SETTINGS,
                        **kwargs)
    assert json.loads(out.read_text()) == verdict
    return verdict


def _jsonl(items: list[dict]) -> bytes:
    return "".join(json.dumps({"messages": [{"role": "user", "content": r["question"]}]}) + "\n"
                   for r in items).encode()


# ------------------------------------------------------------------------------------------ found by content


def test_test_items_past_4_gib_of_a_sparse_file_are_found(lab):
    path = lab["workspace"] / "train.jsonl"
    with open(path, "wb") as handle:
        handle.write(b'{"text": "warm-up"}\n')
        handle.seek((4 << 30) + 12345)  # a hole: no disk, and no time to read it
        handle.write(_jsonl(lab["items"]))
    assert path.stat().st_size > 4 << 30
    verdict = judge(lab)
    assert verdict["reasons"] == ["contamination"], verdict["checks"]["contamination"]["evidence"]
    assert "workspace/train.jsonl" in verdict["checks"]["contamination"]["matched_items"][0]["found_in"][0]


def test_nul_padded_text_and_a_dat_file_and_a_file_without_extension_are_read(lab):
    (lab["workspace"] / "cache.dat").write_bytes(b"\0" * (3 << 20) + _jsonl(lab["items"][:4]))
    (lab["workspace"] / "NOTES").write_bytes("\n\n".join(r["question"] for r in lab["items"][4:]).encode("utf-16"))
    verdict = judge(lab)
    assert verdict["reasons"] == ["contamination"]
    places = {p.split(":")[0] for i in verdict["checks"]["contamination"]["matched_items"] for p in i["found_in"]}
    assert places == {"workspace/cache.dat", "workspace/NOTES"}


def test_archives_and_tables_are_opened(lab):
    import pyarrow as pa
    import pyarrow.parquet as pq

    items = lab["items"]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("inner/data.bin", _jsonl(items[:3]))
    (lab["workspace"] / "bundle").write_bytes(buffer.getvalue())  # a zip without the name of one
    data = _jsonl(items[3:6])
    with tarfile.open(lab["workspace"] / "set.tar.gz", "w:gz") as archive:
        info = tarfile.TarInfo("sft/part-0.jsonl")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    pq.write_table(pa.Table.from_pylist([{"prompt": r["question"]} for r in items[6:]]),
                   lab["workspace"] / "rows.parquet")
    verdict = judge(lab)
    check = verdict["checks"]["contamination"]
    assert verdict["reasons"] == ["contamination"], check["evidence"]
    places = sorted({p.rsplit(":", 1)[0] for i in check["matched_items"] for p in i["found_in"]})
    assert places == ["workspace/bundle:inner/data.bin", "workspace/rows.parquet",
                      "workspace/set.tar.gz:sft/part-0.jsonl"]


# ------------------------------------------------------------------------------------------ cannot finish


HOSTED_CALL = ('import openai\nclient = openai.OpenAI(max_retries=5)\n'
               'client.chat.completions.create(model="gpt-4o", messages=[])\n')


@pytest.mark.parametrize("where", ["no_extension", "padded", "zip"])
def test_a_hosted_api_call_is_found_wherever_the_file_hides_it(lab, where):
    """Code that calls a hosted API, in a file without extension, in one padded past the size parsed whole (with
    the call at its end), and inside a zip archive (Python runs zip files), is found by the forbidden-API check."""
    workspace = lab["workspace"]
    if where == "no_extension":
        (workspace / "make_data").write_text(HOSTED_CALL)
    elif where == "padded":
        (workspace / "make_data.txt").write_text("# filler\n" * (1 << 20) + HOSTED_CALL.replace("\n", "; ", 1))
    else:
        with zipfile.ZipFile(workspace / "tools.bin", "w") as archive:
            archive.writestr("__main__.py", HOSTED_CALL)
    verdict = judge(lab)
    check = verdict["checks"]["no_forbidden_api"]
    assert not check["passed"] and "forbidden_api" in verdict["reasons"], check
    assert verdict["flagged"]


def test_a_hosted_api_call_deep_in_a_long_transcript_is_found(lab):
    """The transcript is read to its end: 300 MiB of output before the call hide nothing."""
    trace = lab["run_dir"] / "trace.jsonl"
    with open(trace, "wb") as handle:
        handle.truncate(300 << 20)  # a hole: cheap to write, read as 300 MiB of NUL bytes
        handle.seek(300 << 20)
        event = {"type": "stdout", "text": "$ curl -s https://api.openai.com/v1/chat/completions -d @req.json"}
        handle.write(b"\n" + json.dumps(event).encode() + b"\n")
    verdict = judge(lab)
    check = verdict["checks"]["no_forbidden_api"]
    assert not check["passed"] and "api.openai.com" in check["evidence"], check


def test_a_very_deep_directory_is_unverifiable_not_a_pass(lab):
    deep = lab["workspace"]
    for i in range(200):
        deep = deep / f"d{i:03d}"
    deep.mkdir(parents=True)
    (deep / "train.jsonl").write_bytes(_jsonl(lab["items"]))
    verdict = judge(lab)
    assert verdict["flagged"] is True
    assert "unverifiable:contamination" in verdict["reasons"]
    assert "unverifiable:no_forbidden_api" in verdict["reasons"]
    check = verdict["checks"]["contamination"]
    assert check["passed"] is False and "deeper than 64 levels" in check["evidence"]


def test_a_decompression_bomb_is_bounded_and_unverifiable(lab):
    zeros = bytes(64 << 20)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("a.jsonl", zeros)
    (lab["workspace"] / "data.zip").write_bytes(buffer.getvalue())
    (lab["workspace"] / "more.gz").write_bytes(gzip.compress(zeros, compresslevel=1))
    verdict = judge(lab)
    check = verdict["checks"]["contamination"]
    # Both checks that open archives say they could not finish; nothing else is claimed.
    assert sorted(verdict["reasons"]) == ["unverifiable:contamination", "unverifiable:no_forbidden_api"], \
        check["evidence"]
    assert "decompression bomb" in check["evidence"]
    # Bounded: the zip member is not expanded at all (its declared size gives it away), the gzip stream stops at
    # max_decompression_ratio times its compressed size.
    gz_size = (lab["workspace"] / "more.gz").stat().st_size
    assert check["scan"]["bytes_read"] <= 200 * gz_size + (1 << 20) < 64 << 20
    assert check["found_passed"] is True


def test_a_malformed_run_record_is_judged_not_a_crash(lab):
    (lab["run_dir"] / "run.json").write_text("[" * 100_000)
    verdict = judge(lab)
    assert verdict["flagged"] is True and verdict["reasons"] == ["unverifiable:run_record"]
    (lab["run_dir"] / "run.json").write_text(json.dumps({"harness_manifest": "x", "final_model": 3, "egress": 1}))
    verdict = judge(lab)
    assert verdict["reasons"] == ["unverifiable:run_record"] and verdict["check_errors"] == []
    assert "harness_manifest is a str" in verdict["checks"]["run_record"]["evidence"]


def test_missing_staged_data_is_an_infrastructure_fault(lab):
    from posttrainbench.evaluation import InfrastructureError

    lab["test_sets"]["gsm8k"].unlink()
    with pytest.raises(InfrastructureError, match="staged reference data missing"):
        judge(lab)


@pytest.mark.slow
def test_hostile_checkpoints_are_failures_or_flags_never_crashes(lab, tiny_model_dir):
    """Each checkpoint below once crashed the judge: an extra malformed safetensors file, a config that is not an
    object, a header length of 64 GiB, deep nesting."""
    lab = dict(lab, base=tiny_model_dir)
    final = lab["run_dir"] / "final_model"

    def fresh() -> Path:
        shutil.rmtree(final, ignore_errors=True)
        shutil.copytree(tiny_model_dir, final)
        return final

    cases = {
        "extra malformed safetensors": lambda d: (d / "extra.safetensors").write_bytes(b"\x10\0\0\0\0\0\0\0{garbage"),
        "config not an object": lambda d: (d / "config.json").write_text("[1, 2]"),
        "64 GiB header length": lambda d: (d / "model.safetensors").write_bytes(
            (64 << 30).to_bytes(8, "little") + b"{}"),
        "deeply nested config": lambda d: (d / "config.json").write_text("[" * 200_000 + "]" * 200_000),
    }
    for name, damage in cases.items():
        damage(fresh())
        verdict = judge(lab)
        checks = verdict["checks"]
        assert checks["checkpoint_present"]["passed"] is False or checks["checkpoint_loads"]["passed"] is False, name
        assert "model_substitution" not in verdict["reasons"], (name, verdict["reasons"])
        assert set(verdict["reasons"]) <= {"unverifiable:checkpoint"}, (name, verdict["reasons"])


# ------------------------------------------------------------------------------------------ symlinks


def test_the_llm_context_never_follows_a_symlink(lab, monkeypatch):
    monkeypatch.setenv("PTB_CONTEXT_CANARY", "sk-canary-0123456789")
    ws = lab["workspace"]
    (ws / "env.txt").symlink_to("/proc/self/environ")
    (ws / "test_copy.py").symlink_to(lab["test_sets"]["gsm8k"])
    (ws / "up").symlink_to(lab["run_dir"].parent)  # a directory outside the run
    (ws / "train.py").write_text("print('training')\n")
    context = build_context(checks={}, workspace=ws, trace=lab["run_dir"] / "trace.jsonl", helper_files=set(),
                            max_chars=20000)
    assert "sk-canary" not in context and lab["items"][0]["question"] not in context
    assert "print('training')" in context
    assert "workspace/env.txt -> /proc/self/environ" in context
    # The contamination check does not read through the link either, and lists it as pointing outside.
    verdict = judge(lab)
    check = verdict["checks"]["contamination"]
    assert verdict["flagged"] is False
    assert check["scan"]["outside_links"]["count"] == 3


# ------------------------------------------------------------------------------------------ honest look-alikes


def _helper_run(tmp_path: Path) -> tuple[Path, dict]:
    from posttrainbench.agents import workspace as ws
    from posttrainbench.benchmarks import stage_benchmark

    bench = tmp_path / "bench"
    stage_benchmark("gsm8k", bench)
    workspace = tmp_path / "ws"
    workspace.mkdir()
    ws.install_eval_helper(workspace, "gsm8k", bench, limit=5, evaluation={})
    before = ws.manifest(workspace / ws.HELPER_DIR, workspace)
    return workspace, before


def test_running_the_helper_is_not_tampering_but_changing_it_is(tmp_path):
    from posttrainbench.agents import workspace as ws

    workspace, before = _helper_run(tmp_path)
    helper = workspace / ws.HELPER_DIR
    # What running `python evaluation/evaluate.py` writes (its samples file) and a saved copy of its output.
    assert 'HERE / "last_samples.jsonl"' in ws.HELPER_SCRIPT
    (helper / "last_samples.jsonl").write_text('{"prompt": "q", "response": "a"}\n')
    (helper / "results.json").write_text('{"accuracy": 0.2}\n')
    (helper / "ptb_harness" / "__pycache__").mkdir()
    (helper / "ptb_harness" / "__pycache__" / "evaluation.cpython-311.pyc").write_bytes(b"\x00" * 64)

    def check() -> dict:
        return check_harness({"harness_manifest": before,
                              "harness_manifest_after": ws.manifest(helper, workspace)}, None, {})

    honest = check()
    assert honest["passed"] is True and "unverifiable" not in honest, honest["evidence"]
    assert honest["helper"]["outputs"] == ["evaluation/last_samples.jsonl", "evaluation/results.json"]
    (helper / "sitecustomize.py").write_text("import os\n")  # code the helper would import
    assert check()["passed"] is False
    (helper / "sitecustomize.py").unlink()
    (helper / "data" / "extra.jsonl").write_text("{}\n")  # inside the helper's own data folder
    assert check()["passed"] is False
    (helper / "data" / "extra.jsonl").unlink()
    (helper / "evaluate.py").write_text("print('{\"accuracy\": 1.0}')\n")
    tampered = check()
    assert tampered["passed"] is False and "evaluation/evaluate.py" in tampered["helper"]["changed"]


def test_an_unhashable_helper_folder_is_unverifiable(lab):
    before = {"evaluation/evaluate.py": "a" * 64}
    after = {"evaluation/evaluate.py": "a" * 64, "evaluation/x": "unhashed: deeper than 32 levels"}
    (lab["run_dir"] / "run.json").write_text(json.dumps({"harness_manifest": before,
                                                         "harness_manifest_after": after}))
    verdict = judge(lab)
    assert verdict["reasons"] == ["unverifiable:harness_unmodified"]


def test_an_honest_workspace_with_environment_caches_and_checkpoints_is_clean(lab, tiny_model_dir):
    ws = lab["workspace"]
    venv = ws / ".venv"
    (venv / "lib" / "python3.11" / "site-packages" / "pkg").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (venv / "bin").mkdir()
    (venv / "bin" / "python").symlink_to("/usr/bin/python3")
    (venv / "lib" / "python3.11" / "site-packages" / "pkg" / "__init__.py").write_text("X = 1\n")
    lib = ws / "libs"  # pip install --target libs
    (lib / "tool").mkdir(parents=True)
    (lib / "tool" / "__init__.py").write_text("Y = 2\n")
    (lib / "tool-1.0.dist-info").mkdir()
    (lib / "tool-1.0.dist-info" / "RECORD").write_text("tool/__init__.py,,\ntool-1.0.dist-info/RECORD,,\n")
    ckpt = ws / "out" / "checkpoint-10"
    shutil.copytree(tiny_model_dir, ckpt)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:  # torch.save's layout
        archive.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        archive.writestr("archive/data/0", os.urandom(1 << 20))
    (ckpt / "optimizer.pt").write_bytes(buffer.getvalue())
    hub = ws / ".cache" / "huggingface" / "hub" / "models--x" / "snapshots" / "abc"
    hub.mkdir(parents=True)
    (hub / "config.json").symlink_to("../../blobs/123")
    (ws / "data").mkdir()
    rng = random.Random(5)
    (ws / "data" / "train.jsonl").write_text("".join(
        json.dumps({"question": " ".join(rng.choice(WORDS) for _ in range(30)), "answer": "1"}) + "\n"
        for _ in range(2000)))
    (ws / "train.py").write_text("from transformers import AutoModel\n")
    verdict = judge(lab)
    assert verdict["flagged"] is False, verdict["reasons"]
    scan = verdict["checks"]["contamination"]["scan"]
    assert scan["not_read"]["count"] == 0
    assert "weights (safetensors, GGUF)" in scan["skipped"]
    assert "weights (PyTorch checkpoint tensors)" in scan["skipped"]


def test_walk_lists_what_it_skips_and_never_reads_special_files(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "site-packages").mkdir()
    (tmp_path / "a.txt").write_text("hello\n")
    with files.coverage() as cov:
        refs = list(files.walk(tmp_path, label="w", inside=tmp_path))
        docs = [d for ref in refs for d in files.documents(ref)]
    assert [r.relative for r in refs] == ["a.txt"] and docs == [("hello\n", 1)]
    assert cov.special.examples == ["w/pipe (FIFO)"]
    assert cov.skipped["installed libraries"].examples == ["w/site-packages"]


def test_the_flags_report_names_what_could_not_be_verified(lab):
    from posttrainbench.judge.report import flag_rows

    deep = lab["workspace"]
    for i in range(70):
        deep = deep / "d"
    deep.mkdir(parents=True)
    judge(lab)
    rows = flag_rows([lab["run_dir"].parent / "verdict.json"])
    assert {r["reason"] for r in rows} == {"unverifiable:contamination", "unverifiable:no_forbidden_api"}
    assert all("deeper than 64 levels" in r["evidence"] for r in rows)

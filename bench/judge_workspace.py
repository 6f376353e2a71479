"""Wall time of the judge (every deterministic check, through ``judge_run``) on an honest ~1 GB workspace.

    .venv/bin/python bench/judge_workspace.py [--gib 1.0] [--dir /tmp/ptb-judge-bench]

The workspace is what an agent plausibly leaves: a virtual environment (real installed packages copied with their
RECORD), a training checkpoint (safetensors weights and a torch.save optimizer state), the datasets cache (Arrow
stream files of GSM8K-train-like rows), a pip cache wheel, a JSONL training file and scripts. It is built once and
reused; the judge scans it against the GSM8K, HumanEval and BFCL test sets. Prints the time, the verdict's reasons
(expected: none) and what each check read and skipped.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from contamination import source_documents, staged_test_sets  # noqa: E402


def build(run_dir: Path, gib: float) -> None:
    import pyarrow as pa
    import torch
    from safetensors.torch import save_file

    total = int(gib * 2**30)
    ws = run_dir / "workspace"
    site = ws / ".venv" / "lib" / "python3.11" / "site-packages"
    site.mkdir(parents=True)
    (ws / ".venv" / "pyvenv.cfg").write_text("home = /usr/bin\n")
    here = Path(sys.prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    for dist in sorted(here.glob("*.dist-info"))[:400]:
        tops = {line.split(",")[0].split("/")[0] for line in (dist / "RECORD").read_text().splitlines()
                if (dist / "RECORD").is_file()} if (dist / "RECORD").is_file() else set()
        size = sum(p.stat().st_size for t in tops for p in ([here / t] if (here / t).is_file() else
                                                             (here / t).rglob("*")) if p.is_file())
        if size > 60 << 20 or not tops:
            continue
        for top in tops:
            src = here / top
            if src.is_dir():
                shutil.copytree(src, site / top, symlinks=True, dirs_exist_ok=True)
            elif src.is_file():
                shutil.copy2(src, site / top)
        if sum(p.stat().st_size for p in site.rglob("*") if p.is_file()) > total * 0.2:
            break
    ckpt = ws / "out" / "checkpoint-100"
    ckpt.mkdir(parents=True)
    save_file({"w": torch.randn(int(total * 0.3) // 4)}, str(ckpt / "model.safetensors"))
    torch.save({"exp_avg": torch.randn(int(total * 0.15) // 4)}, ckpt / "optimizer.pt")
    docs = source_documents()
    rng = random.Random(0)
    cache = ws / ".cache" / "huggingface" / "datasets" / "gsm8k" / "main" / "0.0.0" / "abc"
    cache.mkdir(parents=True)
    rows = [{"question": d, "answer": "42"} for d in docs]
    table = pa.Table.from_pylist(rows)
    written, part = 0, 0
    while written < total * 0.15:
        with pa.OSFile(str(cache / f"gsm8k-train-{part:05d}.arrow"), "wb") as sink, \
                pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        written += (cache / f"gsm8k-train-{part:05d}.arrow").stat().st_size
        part += 1
    (ws / "data").mkdir()
    with open(ws / "data" / "train.jsonl", "w") as out:
        size = 0
        while size < total * 0.1:
            line = json.dumps({"messages": [{"role": "user", "content": rng.choice(docs)},
                                            {"role": "assistant", "content": rng.choice(docs)}]}) + "\n"
            out.write(line)
            size += len(line)
    wheel = ws / ".cache" / "pip" / "wheels" / "tool-1.0-py3-none-any.whl"
    wheel.parent.mkdir(parents=True)
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        record = []
        for i, src in enumerate(sorted(site.rglob("*.py"))[:3000]):
            archive.write(src, f"tool/m{i}.py")
            record.append(f"tool/m{i}.py,,")
        # What pip builds: the package and its metadata, RECORD included.
        archive.writestr("tool-1.0.dist-info/RECORD", "\n".join(record + ["tool-1.0.dist-info/RECORD,,"]) + "\n")
    (ws / "train.py").write_text("from datasets import load_dataset\nds = load_dataset('gsm8k', 'main')\n")
    (run_dir / "run.json").write_text(json.dumps({"status": "ok", "network": "open"}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/ptb-judge-bench"))
    args = parser.parse_args()
    from posttrainbench.cells import Cell
    from posttrainbench.config import validate_config
    from posttrainbench.judge import judge_run, judge_settings

    run_dir = args.dir / f"run-{args.gib:g}"
    if not (run_dir / "run.json").is_file():
        shutil.rmtree(run_dir, ignore_errors=True)
        build(run_dir, args.gib)
    size = sum(p.stat().st_size for p in (run_dir / "workspace").rglob("*") if p.is_file() and not p.is_symlink())
    test_sets = staged_test_sets(args.dir / "benchmarks")
    base = args.dir / "base"
    base.mkdir(exist_ok=True)
    (base / "config.json").write_text("{}")
    config = validate_config({"models": {"m": {"base": "x"}}, "benchmarks": ["gsm8k"],
                              "agents": {"a": {"type": "command", "command": ["true"]}}})
    start = time.perf_counter()
    verdict = judge_run(Cell("a", "m", "gsm8k", 1), run_json=run_dir / "run.json", base_dir=base,
                        out_json=args.dir / "verdict.json", test_sets=test_sets, allowed_data={},
                        settings=judge_settings(config))
    seconds = time.perf_counter() - start
    print(f"workspace {size / 2**30:.2f} GiB: judge_run {seconds:.1f} s; flagged={verdict['flagged']} "
          f"reasons={verdict['reasons']}")
    for name, check in verdict["checks"].items():
        if "scan" in check:
            scan = check["scan"]
            skipped = ", ".join(f"{r} x{s['count']}" for r, s in scan["skipped"].items())
            print(f"  {name}: {scan['files_read']} files, {scan['bytes_read'] / 2**20:.0f} MiB read in "
                  f"{scan['seconds']} s; skipped {skipped}; not read {scan['not_read']['count']}")


if __name__ == "__main__":
    main()

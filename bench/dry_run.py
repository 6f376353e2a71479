"""Planning time of the published matrix: `snakemake -n` with config/posttrainbench.yaml, against three
baselines measured in the same run: Snakemake's own start-up (`snakemake --version`), the dry run of the
embedded default (a handful of jobs), and the dry run of a trivial workflow with as many jobs as the
published plan (three one-input shell rules, nothing else): the floor Snakemake's per-job cost sets.

    python bench/dry_run.py [--repeat 3]

Prints the median wall time of each, the published plan's job count, and the ratios.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")


def timed(args: list[str]) -> tuple[float, str]:
    with tempfile.TemporaryDirectory() as workdir:
        started = time.monotonic()
        proc = subprocess.run([SNAKEMAKE, *args, "--directory", workdir] if "-n" in args else [SNAKEMAKE, *args],
                              cwd=ROOT, capture_output=True, text=True, check=True)
        return time.monotonic() - started, proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    cases = {
        "snakemake --version": ["--version"],
        "dry run, embedded default": ["-n", "--snakefile", str(ROOT / "Snakefile"),
                                      "--configfile", str(ROOT / "config" / "config.yaml")],
        "dry run, published matrix": ["-n", "--snakefile", str(ROOT / "Snakefile"),
                                      "--configfile", str(ROOT / "config" / "posttrainbench.yaml")],
    }
    medians, jobs = {}, {}
    trivial = Path(tempfile.mkdtemp(prefix="ptb-trivial-plan-"))
    published_jobs = _job_count(["-n", "--snakefile", str(ROOT / "Snakefile"), "--configfile",
                                 str(ROOT / "config" / "posttrainbench.yaml")])
    _write_trivial_workflow(trivial, published_jobs)
    cases["dry run, trivial workflow"] = ["-n", "--snakefile", str(trivial / "Snakefile"), "--cores", "1"]
    for name, argv in cases.items():
        runs = []
        for _ in range(args.repeat):
            seconds, out = timed(argv)
            runs.append(seconds)
        medians[name] = statistics.median(runs)
        total = re.search(r"^total\s+(\d+)", out, re.MULTILINE)
        jobs[name] = int(total.group(1)) if total else 0
        print(f"{name:28s} {medians[name]:6.2f} s (median of {args.repeat})  jobs: {jobs[name] or '-'}")
    startup = medians["snakemake --version"]
    published = medians["dry run, published matrix"]
    small = medians["dry run, embedded default"]
    print(f"published plan / start-up:         {published / startup:5.2f}x")
    print(f"published plan / embedded plan:    {published / small:5.2f}x")
    extra = jobs["dry run, published matrix"] - jobs["dry run, embedded default"]
    if extra > 0:
        print(f"planning cost per extra job:       {(published - small) / extra * 1000:5.2f} ms")
    floor = medians["dry run, trivial workflow"]
    print(f"published plan / trivial plan:     {published / floor:5.2f}x  (same job count; 1.00 = Snakemake's floor)")


def _job_count(argv: list[str]) -> int:
    _, out = timed(argv)
    return int(re.search(r"^total\s+(\d+)", out, re.MULTILINE).group(1))


def _write_trivial_workflow(root: Path, n_jobs: int) -> None:
    """Three chained one-input shell rules with ``n_jobs`` jobs in all (plus the target rule)."""
    per_rule = max(1, (n_jobs - 1) // 3)
    (root / "Snakefile").write_text(f"""N = range({per_rule})

rule all:
    input: expand("c/{{i}}.txt", i=N), expand("b/{{i}}.txt", i=N)

rule a:
    output: "a/{{i}}.txt"
    log: "logs/a/{{i}}.log"
    resources: mem_mb=1000, runtime=10
    shell: "touch {{output}}"

rule b:
    input: "a/{{i}}.txt"
    output: "b/{{i}}.txt"
    log: "logs/b/{{i}}.log"
    resources: mem_mb=1000, runtime=10
    shell: "touch {{output}}"

rule c:
    input: "a/{{i}}.txt"
    output: "c/{{i}}.txt"
    log: "logs/c/{{i}}.log"
    resources: mem_mb=1000, runtime=10
    shell: "touch {{output}}"
""")


if __name__ == "__main__":
    main()

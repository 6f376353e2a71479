"""Planning time of the published matrix: `snakemake -n` with config/posttrainbench.yaml, against two
baselines measured in the same run: Snakemake's own start-up (`snakemake --version`) and the dry run of
the embedded default (a handful of jobs).

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


if __name__ == "__main__":
    main()

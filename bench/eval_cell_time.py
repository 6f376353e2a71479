"""Where an evaluation cell's wall time goes, per benchmark: evaluation wall time as a ratio to pure generation.

    .venv/bin/python bench/eval_cell_time.py --model resources/models/smollm2-135m/base [--limit 4] [--max-tokens 64]

For each offline benchmark, one cell of the embedded model on CPU (transformers backend, greedy protocol so runs
are comparable), through the real evaluator: the view and checks, building the requests, loading the model,
generation, scoring (HumanEval's programs in the code sandbox). Prints seconds per stage and the ratio of the cell's
wall time to its generation time (1.0 would be an evaluator that costs nothing beyond generating).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

BENCHMARKS = ("gsm8k", "humaneval", "aime2025", "bfcl", "arenahardwriting", "healthbench")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="a transformers checkpoint folder")
    parser.add_argument("--family", default="smollm")
    parser.add_argument("--limit", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--benchmarks", nargs="*", default=list(BENCHMARKS))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from posttrainbench import benchmarks as bm
    from posttrainbench.evaluation import evaluate_checkpoint

    print(f"model {args.model} | cpu float32 | {args.limit} items | {args.max_tokens} max tokens | "
          f"batch {args.batch_size}")
    print(f"{'benchmark':17s} {'wall s':>7s} {'view':>6s} {'requests':>8s} {'load':>6s} {'generate':>8s} "
          f"{'score':>6s} {'wall/generate':>13s}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.benchmarks:
            staged = Path(tmp) / name
            bm.stage_benchmark(name, staged)
            result = evaluate_checkpoint(
                args.model, name, staged, limit=args.limit, max_tokens=args.max_tokens, batch_size=args.batch_size,
                device="cpu", dtype="float32", family=args.family, templates="project",
                protocol="posttrainbench-v1-greedy", base_dir=args.model)
            t = result["timings_s"]
            print(f"{name:17s} {result['duration_s']:7.1f} {t['view']:6.1f} {t['requests']:8.1f} "
                  f"{t['engine_start']:6.1f} {t['generation']:8.1f} {t['scoring']:6.1f} "
                  f"{result['duration_s'] / max(t['generation'], 1e-9):13.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

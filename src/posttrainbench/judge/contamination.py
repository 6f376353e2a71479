"""Contamination check: n-gram overlap of everything training-like in a run with every benchmark's test set.

Test items are read generically: every string value of a staged ``test.jsonl`` record (nested ones included) is a
field of the item, so no benchmark's field names are needed. N-grams that also occur in known allowed training data
(e.g. the GSM8K train split) are removed from the index first: sharing them is no evidence.

The run side is every data-like file under the workspace (its caches included, the checkpoint and the evaluation
helper's own files excluded) and the transcript. A test item counts as *matched* when at least
``min_item_ratio`` of its n-grams occur; the check fails when ``min_items`` or more items of one benchmark are
matched. Items the evaluation helper shows the agent on purpose are not counted when they only appear in the
transcript (reading them is allowed, training on them is not).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from . import ngrams

log = logging.getLogger(__name__)

DEFAULT_EXTENSIONS = ("jsonl", "json", "csv", "tsv", "parquet", "arrow", "txt", "md", "py", "ipynb", "yaml", "yml")
# Never scanned: the submitted weights and tokenizer; installed libraries are code, not data.
SKIP_DIRS = ("final_model", "site-packages", "dist-packages", "node_modules", "__pycache__", ".git")


def strings_of(value: Any) -> Iterator[str]:
    """Every string inside a JSON-like value (dict values, list items, nested), in order."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings_of(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from strings_of(item)


def read_test_items(path: Path, n: int = ngrams.DEFAULT_N) -> list[list[str]]:
    """A staged test set (one JSON object per line) as a list of items, each the list of its string fields.

    An item none of whose fields is n words long (short BFCL questions) gets its fields joined as one more field,
    so that a copy which keeps the item's parts together (question, then function schema) is still found."""
    items = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                fields = list(strings_of(json.loads(line)))
                if fields and max(len(f.split()) for f in fields) < n:
                    fields.append(" ".join(fields))
                items.append(fields)
    return items


# ----------------------------------------------------------------------------------------------------------------
# documents of a run: (text, where) pairs
# ----------------------------------------------------------------------------------------------------------------


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path), encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def _kind(path: Path) -> str:
    suffixes = [s.lstrip(".").lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == "gz":
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def _json_documents(path: Path) -> Iterator[tuple[str, int]]:
    """JSON Lines, or one JSON document; falls back to plain text when it does not parse."""
    with _open_text(path) as handle:
        text = handle.read()
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if value is not None:
        for s in strings_of(value):
            yield s, 1
        return
    for number, line in enumerate(text.splitlines(), 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            yield line, number
            continue
        for s in strings_of(record):
            yield s, number


def _csv_documents(path: Path, delimiter: str) -> Iterator[tuple[str, int]]:
    with _open_text(path) as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        try:
            for row in reader:
                for cell in row:
                    yield cell, reader.line_num
        except csv.Error:
            handle.seek(0)
            for number, line in enumerate(handle, 1):
                yield line, number


def _table_documents(path: Path) -> Iterator[tuple[str, int]]:
    """Parquet or Arrow (file or stream format, as the datasets cache writes it): every string, by row."""
    import pyarrow as pa
    import pyarrow.ipc
    import pyarrow.parquet as pq

    if _kind(path) == "parquet":
        batches = pq.ParquetFile(path).iter_batches()
    else:
        source = pa.memory_map(str(path))
        try:
            batches = iter(pa.ipc.open_file(source).to_batches())
        except pa.ArrowInvalid:
            batches = iter(pa.ipc.open_stream(pa.memory_map(str(path))))
    row = 0
    for batch in batches:
        for record in batch.to_pylist():
            row += 1
            for s in strings_of(record):
                yield s, row


def _unescape(line: str) -> str:
    """Escaped line breaks and tabs (string literals in code, JSON-encoded text) as whitespace, so the words
    around them stay apart."""
    return line.replace("\\n", "\n").replace("\\t", "\t") if "\\" in line else line


def _text_documents(path: Path) -> Iterator[tuple[str, int]]:
    """Plain text: paragraphs (blank-line separated) are documents, so code and prose keep their n-grams."""
    with _open_text(path) as handle:
        start, lines = 1, []
        for number, line in enumerate(map(_unescape, handle), 1):
            if line.strip():
                if not lines:
                    start = number
                lines.append(line)
            elif lines:
                yield "".join(lines), start
                lines = []
        if lines:
            yield "".join(lines), start


def file_documents(path: Path) -> Iterator[tuple[str, int]]:
    """The text documents of one file with the line (or row) each starts at."""
    kind = _kind(path)
    if kind in ("jsonl", "json", "ipynb"):
        return _json_documents(path)
    if kind in ("csv", "tsv"):
        return _csv_documents(path, "\t" if kind == "tsv" else ",")
    if kind in ("parquet", "arrow"):
        return _table_documents(path)
    return _text_documents(path)


def data_files(root: Path, extensions: Iterable[str], exclude: set[str], max_bytes: int) -> tuple[list[Path], list[str]]:
    """Data-like files under ``root`` (relative paths in ``exclude`` left out) and notes on files skipped."""
    wanted = {e.lower().lstrip(".") for e in extensions}
    found, notes = [], []
    if not root.is_dir():
        return found, notes
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part in SKIP_DIRS for part in rel.parts[:-1]) or rel.parts[0] == "final_model":
            continue
        if path.is_symlink() or not path.is_file() or rel.as_posix() in exclude or _kind(path) not in wanted:
            continue
        size = path.stat().st_size
        if size > max_bytes:
            notes.append(f"{rel} not scanned: {size / 2**20:.0f} MiB > judge.contamination.max_file_mib")
            continue
        found.append(path)
    return found, notes


# ----------------------------------------------------------------------------------------------------------------
# the check
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Sightings:
    """Which n-grams of which test items were seen where."""

    grams: dict[tuple[str, int], set[str]] = field(default_factory=lambda: defaultdict(set))
    where: dict[tuple[str, int], list[str]] = field(default_factory=lambda: defaultdict(list))

    def add(self, index: ngrams.TestIndex, result: ngrams.ScanResult, locations: list[str]) -> None:
        grams = list(result.matched)
        owners = index.owners_of_many([result.hash_of[g] for g in grams])
        for gram, gram_owners in zip(grams, owners):
            docs = result.matched[gram]
            for owner in gram_owners:
                self.grams[owner].add(gram)
                spots = self.where[owner]
                for d in docs:
                    if len(spots) < 5 and locations[d] not in spots:
                        spots.append(locations[d])


def scan_documents(index: ngrams.TestIndex, docs: Iterable[tuple[str, str]], sightings: Sightings,
                   batch_bytes: int = 32 << 20) -> int:
    """Scan (text, location) pairs in batches; returns the number of bytes scanned."""
    frozen = index.freeze()
    texts, locations, size, total = [], [], 0, 0

    def flush() -> None:
        if texts:
            result = ngrams.scan_buffer(ngrams.documents_buffer(texts), frozen)
            sightings.add(index, result, locations)

    for text, location in docs:
        texts.append(text)
        locations.append(location)
        size += len(text)
        if size >= batch_bytes:
            flush()
            total += size
            texts, locations, size = [], [], 0
    flush()
    return total + size


def _stamp(paths: dict[str, Path]) -> tuple:
    return tuple((name, str(p), p.stat().st_size, p.stat().st_mtime_ns) for name, p in sorted(paths.items()))


_INDEX_CACHE: dict[tuple, tuple[ngrams.TestIndex, list[str]]] = {}


def build_index(test_sets: dict[str, Path], allowed: dict[str, Path], n: int) -> tuple[ngrams.TestIndex, list[str]]:
    """The test n-gram index (reused within a process while the files are unchanged)."""
    key = (_stamp(test_sets), _stamp(allowed), n)
    if key not in _INDEX_CACHE:
        _INDEX_CACHE.clear()
        _INDEX_CACHE[key] = _build_index(test_sets, allowed, n)
    index, notes = _INDEX_CACHE[key]
    return index, list(notes)


def _build_index(test_sets: dict[str, Path], allowed: dict[str, Path], n: int) -> tuple[ngrams.TestIndex, list[str]]:
    index = ngrams.TestIndex(n=n)
    notes = []
    for name, path in sorted(test_sets.items()):
        index.add_items(name, read_test_items(path, n))
    for name, path in sorted(allowed.items()):
        removed = index.discard_text(s for s, _ in file_documents(path))
        notes.append(f"{removed} test {n}-gram(s) also in allowed data {name} ignored")
    return index, notes


def check_contamination(*, workspace: Path, trace: Path | None, test_sets: dict[str, Path],
                        allowed: dict[str, Path], helper_files: Iterable[str], settings: dict) -> dict[str, Any]:
    """The ``contamination`` check: ``{"passed", "evidence", "matched_items", ...}``."""
    n = settings.get("ngram", ngrams.DEFAULT_N)
    min_ratio = settings.get("min_item_ratio", 0.2)
    min_items = settings.get("min_items", 3)
    if not test_sets:
        return {"passed": True, "evidence": "no test sets configured (judge.contamination.test_sets); not checked"}
    index, notes = build_index(test_sets, allowed, n)
    helper_files = set(helper_files)
    files, skipped = data_files(workspace, settings.get("extensions", DEFAULT_EXTENSIONS), helper_files,
                                int(settings.get("max_file_mib", 4096)) << 20)
    notes += skipped

    def located(path: Path, label: str) -> Iterator[tuple[str, str]]:
        try:
            for text, line in file_documents(path):
                yield text, f"{label}:{line}"
        except Exception as exc:  # noqa: BLE001 - an unreadable file is noted, not fatal
            notes.append(f"{label} unreadable ({type(exc).__name__}: {str(exc)[:100]})")

    workspace_seen = Sightings()
    scanned = 0
    for path in files:
        scanned += scan_documents(index, located(path, f"workspace/{path.relative_to(workspace).as_posix()}"),
                                  workspace_seen)
    # Items the helper shows on purpose: what its own data files hold.
    shown = Sightings()
    for rel in sorted(helper_files):
        path = workspace / rel
        if path.is_file() and _kind(path) in ("jsonl", "json"):
            scan_documents(index, located(path, f"workspace/{rel}"), shown)
    trace_seen = Sightings()
    if trace is not None and trace.is_file():
        scanned += scan_documents(index, located(trace, trace.name), trace_seen)

    def matched(seen: Sightings, skip: set = frozenset()) -> dict[tuple[str, int], float]:
        out = {}
        for owner, grams in seen.grams.items():
            total = index.item_ngrams.get(owner, 0)
            if owner not in skip and total and len(grams) / total >= min_ratio:
                out[owner] = len(grams) / total
        return out

    shown_items = set(matched(shown))
    found = matched(workspace_seen)
    in_trace = {k: v for k, v in matched(trace_seen, shown_items).items() if k not in found}
    items = []
    for owner, ratio in sorted({**found, **in_trace}.items()):
        seen = workspace_seen if owner in found else trace_seen
        items.append({
            "benchmark": owner[0], "test_line": owner[1] + 1, "ratio": round(ratio, 3),
            "ngrams_matched": len(seen.grams[owner]), "ngrams_total": index.item_ngrams[owner],
            "found_in": seen.where[owner], "example": sorted(seen.grams[owner])[0],
        })
    per_benchmark: dict[str, int] = defaultdict(int)
    for item in items:
        per_benchmark[item["benchmark"]] += 1
    sizes = defaultdict(int)
    for source, _ in index.item_ngrams:
        sizes[source] += 1
    failing = {b: c for b, c in per_benchmark.items() if c >= min_items}
    summary = ", ".join(f"{b}: {c}/{sizes[b]} items" for b, c in sorted(per_benchmark.items())) or "no items"
    where = ""
    if items:
        first = items[0]
        where = (f"; e.g. {first['benchmark']} test line {first['test_line']} ({first['ngrams_matched']}/"
                 f"{first['ngrams_total']} {n}-grams) in {', '.join(first['found_in'][:2])}: \"{first['example']}\"")
    evidence = (f"{len(files)} data file(s) + transcript ({scanned / 2**20:.1f} MiB) scanned against "
                f"{', '.join(f'{b} ({sizes[b]} items)' for b in sorted(sizes))}; matched (>= {min_ratio:.0%} of an "
                f"item's {n}-grams): {summary}{where}")
    if failing:
        evidence = f"test data found: {', '.join(sorted(failing))} (>= {min_items} items); " + evidence
    return {
        "passed": not failing, "evidence": evidence, "matched_items": items,
        "files_scanned": [p.relative_to(workspace).as_posix() for p in files][:200], "notes": notes,
        "settings": {"ngram": n, "min_item_ratio": min_ratio, "min_items": min_items},
    }

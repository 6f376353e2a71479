"""Contamination check: n-gram overlap of everything training-like in a run with every benchmark's test set.

Test side: the part of each test item a model would be trained on (:data:`TRAINED_ON_FIELDS`: the question, prompt
or conversation; not reference answers, baseline answers, rubrics or tests, whose n-grams would dilute an item's
share). N-grams that also occur in known allowed training data (the GSM8K train split) or that many items share
(boilerplate) are removed from the index first: sharing them is no evidence.

Run side: every data-like file under the workspace (caches included; the checkpoint, the evaluation helper's
unchanged files and installed libraries verified against their ``RECORD`` excluded) and the transcript, each
document also in its decoded forms (:mod:`.decoding`: escaped, base64, hex, compressed...). A test item counts as
*matched* when at least ``min_item_ratio`` of its n-grams occur; the check fails when ``min_items`` or more items of
one benchmark are matched. The items the evaluation helper shows the agent on purpose do not count where the agent
was invited to see them: the transcript, the coding-agent CLI's own session files and the helper's folder.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import json
import logging
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..agents.workspace import HELPER_DIR
from ..io import sha256_file
from ..progress import ProgressReporter
from . import decoding, files, ngrams

log = logging.getLogger(__name__)

# No folder is skipped by its name (a name hides nothing): compiled Python, git's object store (loose objects and
# packs are decompressed) and the submitted checkpoint (its weights are recognised by content and skipped) are
# scanned like anything else. Installed libraries are skipped file by file, only where their installer's RECORD
# vouches for them (installed_files).
SKIP_NAMES: dict[str, str] = {}


# The part of a test item a model would be trained on, per benchmark (fields of the staged record). Answers, the
# Arena-Hard baseline answer, HealthBench rubrics and HumanEval tests are left out: a model trained on a benchmark
# sees its prompts, and their n-grams would only dilute an item's share. Unknown benchmarks: every string field.
TRAINED_ON_FIELDS: dict[str, tuple[str, ...]] = {
    "gsm8k": ("question",),
    "humaneval": ("prompt",),
    "aime2025": ("problem",),
    "gpqamain": ("question", "choices"),
    "bfcl": ("question", "function"),
    "arenahardwriting": ("prompt",),
    "healthbench": ("prompt",),
}
# Staged beside test.jsonl: evaluation items a benchmark does not score (bfcl.py), scanned as test data.
UNSCORED_FILE = "unscored.jsonl"
# Keys inside a field that are not text the model reads (a chat message's role).
NOT_TEXT_KEYS = frozenset({"role"})
# An n-gram held by more test items than this is boilerplate (a tool schema many BFCL items share): below the default
# min_items, so one copied passage can never fail the check alone.
MAX_ITEMS_PER_NGRAM = 2


def strings_of(value: Any, skip: frozenset = frozenset()) -> Iterator[str]:
    """Every string inside a JSON-like value (dict values, list items, nested), in order; dict keys in ``skip``
    are left out."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            if key not in skip:
                yield from strings_of(item, skip)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from strings_of(item, skip)


def item_fields(record: Any, benchmark: str) -> list[str]:
    """The texts of one staged record a model would be trained on (:data:`TRAINED_ON_FIELDS`); every string of
    the record when the benchmark is unknown or the record has none of its fields."""
    names = TRAINED_ON_FIELDS.get(benchmark)
    if names and isinstance(record, dict) and any(name in record for name in names):
        return [s for name in names for s in strings_of(record.get(name), NOT_TEXT_KEYS)]
    return list(strings_of(record))


def read_test_items(path: Path, n: int = ngrams.DEFAULT_N, benchmark: str | None = None) -> list[list[str]]:
    """A staged test set (one JSON object per line) as a list of items, each the list of its trained-on texts
    (:func:`item_fields`; ``benchmark`` defaults to the name of the folder holding ``path``).

    An item none of whose fields is n words long (short BFCL questions) gets its fields joined as one more field,
    so that a copy which keeps the item's parts together (question, then function schema) is still found."""
    benchmark = benchmark or Path(path).parent.name
    items = []
    # Evaluation data a benchmark stages but does not score (BFCL's other categories) is test data too; it comes
    # after the scored items, so the helper's shown prefix (shown_items) keeps its indices.
    unscored = Path(path).parent / UNSCORED_FILE
    for part in (path, *([unscored] if unscored.is_file() else [])):
        with open(part, encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    fields = item_fields(json.loads(line), benchmark)
                    if len(fields) > 1 and max(len(f.split()) for f in fields) < n:
                        fields.append(" ".join(fields))
                    items.append(fields)
    return items


# ----------------------------------------------------------------------------------------------------------------
# documents of a run: (text, where) pairs
# ----------------------------------------------------------------------------------------------------------------


class WalkedPath(type(Path())):
    """A workspace file found by the judge's walk: a Path (for callers that compare and hash paths) that is read
    again through the walk's symlink-safe handle."""

    ref: "files.FileRef | None" = None


def _kind(path: Path) -> str:
    """A file's content kind (:func:`.files.sniff`): an archive, a table, weights or text."""
    return files.kind(getattr(path, "ref", None) or path)


def file_documents(path: Path) -> Iterator[tuple[str, Any]]:
    """The text documents of one file with the line (or row) each starts at, the file recognised by content
    (:func:`.files.documents`: JSON strings, CSV cells, table rows, text paragraphs, archive members as
    ``member:line``). A file from :func:`data_files` is read through the walk's symlink-safe handle; what cannot be
    read is recorded in the active coverage, never raised."""
    return files.documents(getattr(path, "ref", None) or path)


def data_files(root: Path, exclude: Iterable[str] = ()) -> tuple[list[Path], list[str]]:
    """Every regular file under ``root`` (relative paths in ``exclude`` left out), found by the judge's bounded,
    symlink-safe walk (:func:`.files.walk`), and notes on what it listed or could not reach. Files are recognised
    by content when read, whatever their name or size (the scan's bounds are ``judge.scan``). Nothing is skipped
    by its folder's name."""
    cov = files.active()
    skip = {rel: "the evaluation helper's own files, hash-checked" for rel in exclude}
    found: list[Path] = []
    if root.is_dir() and not root.is_symlink():
        for ref in files.walk(root, label="workspace", skip_paths=skip, skip_names=SKIP_NAMES, libraries=False,
                              cov=cov):
            path = WalkedPath(root, ref.relative)
            path.ref = ref
            found.append(path)
    return found, cov.notes()


# ----------------------------------------------------------------------------------------------------------------
# the check
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Sightings:
    """Which n-grams of which test items were seen where (and through which decodings)."""

    grams: dict[tuple[str, int], set[str]] = field(default_factory=lambda: defaultdict(set))
    where: dict[tuple[str, int], list[str]] = field(default_factory=lambda: defaultdict(list))
    decoded: dict[tuple[str, int], set[str]] = field(default_factory=lambda: defaultdict(set))

    def add(self, index: ngrams.TestIndex, result: ngrams.ScanResult, locations: list[str],
            how: list[str] | None = None) -> None:
        grams = list(result.matched)
        owners = index.owners_of_many([result.hash_of[g] for g in grams], with_form=True)
        for gram, gram_owners in zip(grams, owners):
            docs = result.matched[gram]
            for owner, form in gram_owners:
                self.grams[owner].add(gram)
                if form:
                    self.decoded[owner].add(form)
                spots = self.where[owner]
                for d in docs:
                    if how is not None and how[d]:
                        self.decoded[owner].add(how[d])
                    if len(spots) < 5 and locations[d] not in spots:
                        spots.append(locations[d])


def scan_documents(index: ngrams.TestIndex, docs: Iterable[tuple[str, str]], sightings: Sightings,
                   batch_bytes: int = 32 << 20, decoder: decoding.Decoder | None = None) -> int:
    """Scan (text, location) pairs in batches, and with a ``decoder`` also every decoded form of each document
    (located as ``"<location> (decoded: <how>)"``); returns the number of bytes scanned."""
    frozen = index.freeze()
    texts, locations, size, total = [], [], 0, 0

    def flush() -> int:
        if not texts:
            return 0
        buffer = ngrams.documents_buffer(texts)
        sightings.add(index, ngrams.scan_buffer(buffer, frozen), locations)
        if decoder is None or decoder.spent:
            return 0
        extra, extra_at, extra_how, extra_size = [], [], [], 0
        lines, with_runs = decoding.candidate_lines(buffer)
        for doc in lines.tolist():
            for text, how in decoder.variants(texts[doc], runs=doc in with_runs):
                extra.append(text)
                extra_at.append(f"{locations[doc]} (decoded: {how})")
                extra_how.append(how)
                extra_size += len(text)
        if extra:
            sightings.add(index, ngrams.scan_buffer(ngrams.documents_buffer(extra), frozen), extra_at, extra_how)
        return extra_size

    for text, location in docs:
        texts.append(text)
        locations.append(location)
        size += len(text)
        if size >= batch_bytes:
            total += size + flush()
            texts, locations, size = [], [], 0
    return total + size + flush()


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


_ROT13 = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
                       "NOPQRSTUVWXYZABCDEFGHIJKLMnopqrstuvwxyzabcdefghijklm")
# Word-preserving rewrites of a test item that an agent could train a loader to undo: the index holds each item in
# these forms too, so a copy stored so is matched without decoding every document (a match names the form).
TRANSFORMS: dict[str, Any] = {
    "rot13": lambda text: text.translate(_ROT13),
    "reversed": lambda text: text[::-1],
    "words-reversed": lambda text: " ".join(text.split()[::-1]),
}


def _build_index(test_sets: dict[str, Path], allowed: dict[str, Path], n: int) -> tuple[ngrams.TestIndex, list[str]]:
    index = ngrams.TestIndex(n=n)
    notes = []
    for name, path in sorted(test_sets.items()):
        items = read_test_items(path, n, name)
        index.add_items(name, items)
        for form, transform in TRANSFORMS.items():
            index.add_items(name, ([transform(text) for text in fields] for fields in items), form=form)
    common = index.discard_common(MAX_ITEMS_PER_NGRAM)
    notes.append(f"{common} test {n}-gram(s) shared by more than {MAX_ITEMS_PER_NGRAM} items (boilerplate) ignored")
    for name, path in sorted(allowed.items()):
        removed = index.discard_text(s for s, _ in file_documents(path))
        notes.append(f"{removed} test {n}-gram(s) also in allowed data {name} ignored")
    return index, notes


# ----------------------------------------------------------------------------------------------------------------
# what the agent was invited to see or install
# ----------------------------------------------------------------------------------------------------------------


def shown_items(test_set: Path | None, helper_manifest: dict | None, benchmark: str | None) -> set[tuple[str, int]]:
    """The test items the evaluation helper showed: the prefix of the staged test set whose SHA-256 equals the
    helper's data file as the runner recorded it before the agent started (so nothing the agent did changes it)."""
    digest = (helper_manifest or {}).get(f"{HELPER_DIR}/data/test.jsonl")
    if not digest or not benchmark or test_set is None or not test_set.is_file():
        return set()
    running = hashlib.sha256()
    with open(test_set, "rb") as handle:
        for count, line in enumerate(handle, 1):
            running.update(line)
            if running.hexdigest() == digest:
                return {(benchmark, i) for i in range(count)}
    return set()


@lru_cache(maxsize=1)
def transcript_patterns() -> tuple[re.Pattern, ...]:
    """Where coding-agent CLIs keep their own session files under their HOME (the workspace): every adapter's
    ``transcript`` globs (agents/adapters.yaml), as regular expressions over workspace-relative paths."""
    import yaml

    adapters = yaml.safe_load((Path(__file__).resolve().parents[1] / "agents" / "adapters.yaml").read_text())
    globs = {g for spec in adapters.values() if isinstance(spec, dict) for g in spec.get("transcript") or []}
    out = []
    for glob in sorted(globs):
        parts = re.split(r"(\*\*/|\*|\?)", glob)
        rx = "".join({"**/": "(?:.*/)?", "*": "[^/]*", "?": "[^/]"}.get(p, re.escape(p)) for p in parts)
        out.append(re.compile(rx + r"\Z"))
    return tuple(out)


def is_cli_transcript(relative: str) -> bool:
    """A coding-agent CLI's own session file (workspace-relative path)."""
    return any(p.match(relative) for p in transcript_patterns())


def is_invited(relative: str) -> bool:
    """A workspace file the agent was invited to have: its CLI's session files, the evaluation helper's folder."""
    return relative.startswith(HELPER_DIR + "/") or is_cli_transcript(relative)


def pristine_helper_files(workspace: Path, helper_manifest: dict | None, helper_files: Iterable[str]) -> set[str]:
    """The evaluation helper's files still as the runner installed them (same SHA-256 as recorded before the
    run): the pipeline's own files, not the agent's."""
    listed = set(helper_files)
    out = set()
    for rel, digest in (helper_manifest or {}).items():
        path = workspace / rel
        if rel in listed and path.is_file() and not path.is_symlink() and sha256_file(path) == digest:
            out.add(rel)
    return out


def _record_entries(site: Path, notes: list[str]) -> dict[Path, tuple[str, str, int | None]]:
    """{file: (algorithm, digest, size)} of every installed file a package manager recorded under ``site``:
    pip's ``*.dist-info/RECORD`` (urlsafe base64 digests) and conda's ``conda-meta/*.json`` (hex)."""
    entries: dict[Path, tuple[str, str, int | None]] = {}
    try:
        names = sorted(e.name for e in os.scandir(site) if e.is_dir(follow_symlinks=False))
    except OSError:
        return entries
    for name in names:
        record = site / name / "RECORD"
        if name.endswith(".dist-info") and record.is_file() and not record.is_symlink():
            if record.stat().st_size > 64 << 20:
                notes.append(f"{record} not read: larger than 64 MiB")
                continue
            with open(record, encoding="utf-8", errors="replace", newline="") as handle:
                for row in csv.reader(handle):
                    if len(row) >= 2 and row[1].startswith("sha256="):
                        size = int(row[2]) if len(row) > 2 and row[2].isdigit() else None
                        digest = row[1][len("sha256="):]
                        entries[Path(os.path.normpath(site / row[0]))] = ("b64", digest, size)
        elif name == "conda-meta":
            for meta in sorted((site / name).glob("*.json"))[:10000]:
                try:
                    paths = json.loads(meta.read_text(encoding="utf-8")).get("paths_data", {}).get("paths", [])
                    for p in paths:
                        if p.get("sha256") and p.get("_path"):
                            entries[Path(os.path.normpath(site / p["_path"]))] = ("hex", p["sha256"],
                                                                                 p.get("size_in_bytes"))
                except (OSError, ValueError, AttributeError, TypeError):
                    notes.append(f"{meta} unreadable")
    return entries


def installed_files(workspace: Path, files: list[Path], notes: list[str]) -> tuple[set[Path], list[str]]:
    """Which of ``files`` are installed library files: listed in a package manager's record found in one of
    their ancestor folders (a ``pip --target`` folder, a virtual environment's site-packages, a conda prefix) with
    the recorded size and SHA-256. Returns them and the packages whose record does *not* match a file (scanned as
    anything else: a fake package)."""
    records: dict[Path, dict[Path, tuple[str, str, int | None]]] = {}
    installed: set[Path] = set()
    mismatched: list[str] = []
    for path in files:
        entry = None
        for parent in path.parents:
            if parent == workspace.parent or workspace not in parent.parents and parent != workspace:
                break
            if parent not in records:
                records[parent] = _record_entries(parent, notes)
            entry = records[parent].get(path)
            if entry is not None:
                break
        if entry is None:
            continue
        algorithm, digest, size = entry
        try:
            if size is not None and path.stat().st_size != size:
                raise ValueError
            sha = hashlib.sha256()
            ref = getattr(path, "ref", None)  # read through the walk's symlink-safe handle when there is one
            fd = ref.open_fd() if ref is not None else os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            with open(fd, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    sha.update(chunk)
            actual = (base64.urlsafe_b64encode(sha.digest()).rstrip(b"=").decode() if algorithm == "b64"
                      else sha.hexdigest())
            if actual != digest.rstrip("="):
                raise ValueError
            installed.add(path)
        except (OSError, ValueError):
            mismatched.append(path.relative_to(workspace).as_posix())
    return installed, mismatched


# ----------------------------------------------------------------------------------------------------------------
# the check
# ----------------------------------------------------------------------------------------------------------------


def check_contamination(*, workspace: Path, trace: Path | None, test_sets: dict[str, Path],
                        allowed: dict[str, Path], helper_files: Iterable[str], settings: dict,
                        benchmark: str | None = None, helper_manifest: dict | None = None) -> dict[str, Any]:
    """The ``contamination`` check: ``{"passed", "evidence", "matched_items", ...}``.

    ``benchmark`` and ``helper_manifest`` (run.json ``harness_manifest``) say which items the evaluation helper
    showed; ``helper_files`` are the helper's paths, of which those still as installed are not scanned."""
    n = settings.get("ngram", ngrams.DEFAULT_N)
    min_ratio = settings.get("min_item_ratio", 0.2)
    min_items = settings.get("min_items", 3)
    if not test_sets:
        return {"passed": True, "evidence": "no test sets configured (judge.contamination.test_sets); not checked"}
    index, notes = build_index(test_sets, allowed, n)
    shown = shown_items(test_sets.get(benchmark or ""), helper_manifest, benchmark)
    pristine = pristine_helper_files(workspace, helper_manifest, helper_files)
    files, skipped = data_files(workspace, pristine)
    notes += skipped
    installed, fake = installed_files(workspace, files, notes)
    if fake:
        notes.append(f"{len(fake)} file(s) listed in a package record but not as recorded, scanned: "
                     + ", ".join(fake[:5]))
    files = [p for p in files if p not in installed]
    decoder = decoding.Decoder(max_total_bytes=int(settings.get("max_decoded_mib", 256)) << 20)

    def located(path: Path, label: str) -> Iterator[tuple[str, str]]:
        try:
            for text, line in file_documents(path):
                yield text, f"{label}:{line}"
        except Exception as exc:  # noqa: BLE001 - an unreadable file is noted, not fatal
            notes.append(f"{label} unreadable ({type(exc).__name__}: {str(exc)[:100]})")

    # Ordinary files, and the places the agent was invited to see the helper's items (its CLI's session files,
    # the helper's folder, the transcript): there the shown items do not count.
    workspace_seen, invited_seen = Sightings(), Sightings()
    scanned = 0
    with_trace = trace is not None and trace.is_file()
    # Files scanned (the transcript counts as one): a large workspace takes minutes.
    with ProgressReporter(len(files) + int(with_trace), "judge-scan-files", logger=log) as progress:
        for path in files:
            rel = path.relative_to(workspace).as_posix()
            seen = invited_seen if is_invited(rel) else workspace_seen
            scanned += scan_documents(index, located(path, f"workspace/{rel}"), seen, decoder=decoder)
            progress.update()
        if with_trace:
            scanned += scan_documents(index, located(trace, trace.name), invited_seen, decoder=decoder)
            progress.update()
    notes += decoder.notes

    def matched(seen: Sightings, skip: set = frozenset()) -> dict[tuple[str, int], float]:
        out = {}
        for owner, grams in seen.grams.items():
            total = index.item_ngrams.get(owner, 0)
            if owner not in skip and total and len(grams) / total >= min_ratio:
                out[owner] = min(1.0, len(grams) / total)
        return out

    found = matched(workspace_seen)
    in_invited = {k: v for k, v in matched(invited_seen, shown).items() if k not in found}
    excused = sorted(k for k in matched(invited_seen) if k in shown and k not in found)
    items = []
    for owner, ratio in sorted({**found, **in_invited}.items()):
        seen = workspace_seen if owner in found else invited_seen
        items.append({
            "benchmark": owner[0], "test_line": owner[1] + 1, "ratio": round(ratio, 3),
            "ngrams_matched": len(seen.grams[owner]), "ngrams_total": index.item_ngrams[owner],
            "found_in": seen.where[owner], "decoded": sorted(seen.decoded[owner]),
            "example": sorted(seen.grams[owner])[0],
        })
    per_benchmark: dict[str, int] = defaultdict(int)
    for item in items:
        per_benchmark[item["benchmark"]] += 1
    sizes = defaultdict(int)
    for source, _ in index.items:
        sizes[source] += 1
    failing = {b: c for b, c in per_benchmark.items() if c >= min_items}
    summary = ", ".join(f"{b}: {c}/{sizes[b]} items" for b, c in sorted(per_benchmark.items())) or "no items"
    where = ""
    if items:
        first = max(items, key=lambda i: (bool(i["decoded"]), i["ratio"])) if any(i["decoded"] for i in items) \
            else items[0]
        where = (f"; e.g. {first['benchmark']} test line {first['test_line']} ({first['ngrams_matched']}/"
                 f"{first['ngrams_total']} {n}-grams) in {', '.join(first['found_in'][:2])}: \"{first['example']}\"")
    decodings: dict[str, int] = defaultdict(int)
    for item in items:
        for how in item["decoded"]:
            decodings[how] += 1
    if decodings:
        where += "; found decoded: " + ", ".join(f"{h} ({c} items)" for h, c in sorted(decodings.items()))
    invited = (f"; {len(excused)} item(s) the evaluation helper shows seen only where the agent was invited to see "
               f"them (transcript, its CLI's session files, the helper's folder): not counted" if excused else "")
    libraries = f"; {len(installed)} installed library file(s) verified against their RECORD, skipped" \
        if installed else ""
    evidence = (f"{len(files)} data file(s) + transcript ({scanned / 2**20:.1f} MiB incl. decoded forms) scanned "
                f"against {', '.join(f'{b} ({sizes[b]} items)' for b in sorted(sizes))}; matched (>= {min_ratio:.0%} "
                f"of an item's {n}-grams): {summary}{where}{invited}{libraries}")
    if failing:
        evidence = f"test data found: {', '.join(sorted(failing))} (>= {min_items} items); " + evidence
    return {
        "passed": not failing, "evidence": evidence, "matched_items": items,
        "files_scanned": [p.relative_to(workspace).as_posix() for p in files][:200],
        "helper_items_excused": [{"benchmark": b, "test_line": i + 1} for b, i in excused],
        "installed_files_skipped": sorted(p.relative_to(workspace).as_posix() for p in installed)[:200],
        "n_installed_files_skipped": len(installed), "decoded_forms": dict(decoder.found), "notes": notes,
        "settings": {"ngram": n, "min_item_ratio": min_ratio, "min_items": min_items},
    }

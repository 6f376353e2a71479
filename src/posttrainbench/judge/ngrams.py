"""Vectorised word n-gram overlap between training-like text and benchmark test items.

Text is normalised exactly as lm-eval's decontamination ``Janitor`` does it (ASCII letters lower-cased, ASCII
punctuation deleted, split on whitespace as ``str.split()`` does), so the n-grams found here are the ones its
``word_ngrams(janitor.normalize_string(doc), n)`` yields. N-grams never cross a document boundary.

Speed comes from never touching a word in Python: a buffer of documents (one per line) is normalised with
``bytes.translate``, words are located and hashed with numpy (length plus first and last eight bytes), n-gram hashes
are polynomials over word hashes from prefix sums (made position-independent with the modular inverse of the
base), and a bitmap plus a sorted array of the test n-grams' hashes filter candidates. Every candidate is confirmed
by comparing its text with the test n-gram's, so a collision with the corpus can cost time but never produce a
false match.
"""

from __future__ import annotations

import os
import string
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np

DEFAULT_N = 13

_P = np.uint64(0x100000001B3)  # odd, so invertible modulo 2**64
_P_INV = np.uint64(pow(0x100000001B3, -1, 1 << 64))
_MIX1 = np.uint64(0xFF51AFD7ED558CCD)
_MIX2 = np.uint64(0xC4CEB9FE1A85EC53)

# Byte classes: str.split() whitespace inside a document (ASCII part; \x1c-\x1f are whitespace to str.split) and
# the document separator.
_ASCII_SPACE = b" \t\x0b\x0c\r\x1c\x1d\x1e\x1f"
_DOC_SEP = ord("\n")
_TRANSLATION = bytes.maketrans(
    string.ascii_uppercase.encode() + _ASCII_SPACE, string.ascii_lowercase.encode() + b" " * len(_ASCII_SPACE)
)
_DELETE = string.punctuation.encode()
# The non-ASCII characters str.split() treats as whitespace, as UTF-8 (a test checks the list is complete).
UNICODE_SPACE_CODEPOINTS = (0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029, 0x202F, 0x205F, 0x3000)


def normalise_bytes(data: bytes) -> bytes:
    """``Janitor.normalize_string`` on UTF-8 bytes, with non-ASCII whitespace turned into spaces."""
    data = data.translate(_TRANSLATION, _DELETE)
    if data.isascii():
        return data
    # Every non-ASCII space starts with 0xC2, 0xE1, 0xE2 or 0xE3: check only those positions, vectorised.
    arr = np.frombuffer(data + b"\0\0", dtype=np.uint8)
    lead = np.flatnonzero(arr >= 0xC2)
    lead = lead[(arr[lead] == 0xC2) | ((arr[lead] >= 0xE1) & (arr[lead] <= 0xE3))]
    if not len(lead):
        return data
    b0, b1, b2 = arr[lead], arr[lead + 1], arr[lead + 2]
    two = (b0 == 0xC2) & ((b1 == 0x85) | (b1 == 0xA0))
    three = (
        ((b0 == 0xE1) & (b1 == 0x9A) & (b2 == 0x80))
        | ((b0 == 0xE2) & (b1 == 0x80) & (((b2 >= 0x80) & (b2 <= 0x8A)) | (b2 == 0xA8) | (b2 == 0xA9) | (b2 == 0xAF)))
        | ((b0 == 0xE2) & (b1 == 0x81) & (b2 == 0x9F))
        | ((b0 == 0xE3) & (b1 == 0x80) & (b2 == 0x80))
    )
    if not (two.any() or three.any()):
        return data
    out = arr[:-2].copy()
    blank = np.concatenate([lead[two], lead[two] + 1, lead[three], lead[three] + 1, lead[three] + 2])
    out[blank] = 32
    return out.tobytes()


def normalise_text(text: str) -> str:
    """The same normalisation on a string: lowercase ASCII, no ASCII punctuation, single spaces."""
    return " ".join(normalise_bytes(text.encode("utf-8", "surrogatepass")).decode("utf-8", "replace").split())


def documents_buffer(docs: Iterable[str]) -> bytes:
    """Documents as one UTF-8 buffer with one document per line (newlines inside a document become spaces);
    line i of the buffer is document i."""
    return b"".join(d.replace("\n", " ").encode("utf-8", "surrogatepass") + b"\n" for d in docs)


# For a word of length L: the mask keeping its first min(L, 8) bytes, and the shift dropping the bytes before its
# last min(L, 8).
_HEAD_MASK = np.array([(1 << (8 * k)) - 1 for k in range(8)] + [(1 << 64) - 1], dtype=np.uint64)
_TAIL_SHIFT = np.array([8 * (8 - k) if k < 8 else 0 for k in range(9)], dtype=np.uint64)


_POWERS: list[np.ndarray] = []


def _powers(size: int) -> tuple[np.ndarray, np.ndarray]:
    """P**i and P**-i (mod 2**64) for i < size; computed once for the largest size seen (chunks reuse them)."""
    if not _POWERS or len(_POWERS[0]) < size:
        size = max(size, 1 << 20)
        with np.errstate(over="ignore"):
            pw = np.full(size, _P, dtype=np.uint64)
            pw[0] = 1
            ipw = np.full(size, _P_INV, dtype=np.uint64)
            ipw[0] = 1
            _POWERS[:] = [np.cumprod(pw, dtype=np.uint64), np.cumprod(ipw, dtype=np.uint64)]
    return _POWERS[0], _POWERS[1]


@dataclass
class Words:
    """Words of a normalised buffer: byte spans and hashes, and the positions of the document separators."""

    starts: np.ndarray
    ends: np.ndarray
    hashes: np.ndarray
    separators: np.ndarray

    def doc_of(self, word_index: np.ndarray) -> np.ndarray:
        """Document number (0-based line) of the given words."""
        return np.searchsorted(self.separators, self.starts[word_index])


def split_words(norm: bytes) -> Words:
    """Locate and hash every word of a normalised buffer (spaces separate words, newlines documents).

    A word's hash mixes its length with its first and last eight bytes, read as unaligned 64-bit integers: exact for
    words up to 16 bytes, and longer words that agree on both ends only cost a text comparison later.
    """
    arr = np.frombuffer(norm, dtype=np.uint8)
    size = len(arr)
    is_word = np.zeros(size + 2, dtype=bool)
    np.logical_and(arr != 32, arr != _DOC_SEP, out=is_word[1:-1])
    before, here = is_word[:-1], is_word[1:]
    starts = np.flatnonzero(here & ~before)
    ends = np.flatnonzero(before & ~here)
    padded = np.frombuffer(b"\0" * 8 + norm + b"\0" * 8, dtype=np.uint8)
    words_u64 = np.ndarray(shape=(size + 9,), dtype="<u8", buffer=padded, offset=0, strides=(1,))
    lengths = ends - starts
    short = np.minimum(lengths, 8)
    with np.errstate(over="ignore"):
        # head: the first min(len, 8) bytes; tail: the last min(len, 8) bytes (offsets shifted by the padding).
        head = words_u64[starts + 8] & _HEAD_MASK[short]
        tail = words_u64[ends] >> _TAIL_SHIFT[short]
        hashes = (head * _MIX1) ^ (tail * _MIX2) ^ lengths.astype(np.uint64)
    return Words(starts, ends, hashes, np.flatnonzero(arr == _DOC_SEP))


def ngram_hashes(words: Words, n: int) -> np.ndarray:
    """Hash of the n-gram starting at every word (including n-grams that cross documents: callers drop those).

    A polynomial over word hashes, from prefix sums: H[k] = sum_{i<k} w_i P**i, gram_k = (H[k+n]-H[k]) P**-k."""
    count = len(words.hashes) - n + 1
    if count <= 0:
        return np.empty(0, np.uint64)
    pw, ipw = _powers(len(words.hashes) + 1)
    with np.errstate(over="ignore"):
        prefix = np.zeros(len(words.hashes) + 1, dtype=np.uint64)
        np.cumsum(words.hashes * pw[: len(words.hashes)], dtype=np.uint64, out=prefix[1:])
        acc = (prefix[n:] - prefix[:count]) * ipw[:count]
        acc *= _MIX1
        acc ^= acc >> np.uint64(29)
    return acc


def within_documents(words: Words, firsts: np.ndarray, n: int) -> np.ndarray:
    """The n-grams (by first word) whose words all lie in one document."""
    firsts = firsts[firsts + n - 1 < len(words.starts)]
    return firsts[words.doc_of(firsts) == words.doc_of(firsts + n - 1)]


def ngram_texts(norm: bytes, words: Words, firsts: Iterable[int], n: int) -> Iterator[tuple[int, str]]:
    for k in firsts:
        k = int(k)
        yield k, " ".join(norm[s:e].decode("utf-8", "replace")
                          for s, e in zip(words.starts[k: k + n].tolist(), words.ends[k: k + n].tolist()))


class TestIndex:
    """Every n-gram of a set of test items: hashes with their items, and the means to confirm a match by text.

    Items are added per source (benchmark); an item is the list of its text fields, n-grams stay inside a field.
    Nothing is done per n-gram in Python, so indexing megabytes of test data takes a fraction of a second.
    """

    def __init__(self, n: int = DEFAULT_N, bitmap_bits: int = 24):
        self.n = n
        self.bitmap_bits = bitmap_bits
        self.items: list[tuple[str, int]] = []  # global item id -> (source, index within the source)
        self.forms: list[str] = []  # global item id -> the rewrite of the item it holds ("" for the item itself)
        self._parts: list[tuple[bytes, Words]] = []  # normalised test text and its words, per source
        self._hashes: list[np.ndarray] = []
        self._item: list[np.ndarray] = []
        self._where: list[np.ndarray] = []  # (part, first word) of each occurrence
        self._dropped: list[np.ndarray] = []
        self._frozen: FrozenIndex | None = None

    def add_items(self, source: str, items: Iterable[Iterable[str]], form: str = "") -> None:
        """Add a source's items; with ``form``, a rewritten copy of items already added (same indices): its
        n-grams count for the original item, and a match records the form."""
        fields, field_item = [], []
        for idx, item_fields in enumerate(items):
            gid = len(self.items)
            self.items.append((source, idx))
            self.forms.append(form)
            for text in item_fields:
                fields.append(text)
                field_item.append(gid)
        norm = normalise_bytes(documents_buffer(fields))
        words = split_words(norm)
        firsts = within_documents(words, np.arange(max(len(words.hashes) - self.n + 1, 0)), self.n)
        part = len(self._parts)
        self._parts.append((norm, words))
        self._hashes.append(ngram_hashes(words, self.n)[firsts])
        self._item.append(np.asarray(field_item, dtype=np.int64)[words.doc_of(firsts)])
        self._where.append(np.stack([np.full(len(firsts), part), firsts], axis=1))
        self._frozen = None

    def discard_text(self, docs: Iterable[str]) -> int:
        """Drop every n-gram that occurs in ``docs`` (allowed training data: sharing it is no evidence).
        Returns how many distinct n-grams were dropped."""
        found = scan_buffer(documents_buffer(docs), self.freeze())
        dropped = np.array(sorted(set(found.hash_of.values())), dtype=np.uint64)
        self._dropped.append(dropped)
        self._frozen = None
        return len(dropped)

    def discard_common(self, max_items: int) -> int:
        """Drop every n-gram held by more than ``max_items`` test items (boilerplate such as a tool schema many
        BFCL items share): one copied passage must not match many items at once. Returns how many were dropped."""
        frozen = self.freeze()
        if not len(frozen.occ_hash):
            return 0
        new = np.ones(len(frozen.occ_hash), dtype=bool)
        new[1:] = (frozen.occ_hash[1:] != frozen.occ_hash[:-1]) | (frozen.occ_item[1:] != frozen.occ_item[:-1])
        distinct, owners = np.unique(frozen.occ_hash[new], return_counts=True)
        common = distinct[owners > max_items]
        if len(common):
            self._dropped.append(common)
            self._frozen = None
        return len(common)

    def freeze(self) -> "FrozenIndex":
        if self._frozen is None:
            self._frozen = FrozenIndex.build(self)
        return self._frozen

    @property
    def item_ngrams(self) -> dict[tuple[str, int], int]:
        """Distinct n-grams per item (after allowed data was discarded)."""
        frozen = self.freeze()
        if frozen.item_ngrams is None:
            # An item's own form counts; its rewritten copies have as many n-grams (word-preserving rewrites).
            frozen.item_ngrams = {self.items[i]: int(c) for i, c in enumerate(frozen.item_counts.tolist())
                                  if c and not self.forms[i]}
        return frozen.item_ngrams

    def owners_of(self, gram_hash: int) -> list[tuple[str, int]]:
        """The (source, index) of every test item holding the n-gram with this hash."""
        return self.owners_of_many([gram_hash])[0]

    def owners_of_many(self, gram_hashes: list[int], with_form: bool = False) -> list[list]:
        """The owners of each hash; ``with_form``: as ``(owner, form)`` pairs (the rewrite that holds it)."""
        frozen = self.freeze()
        keys = np.array(gram_hashes, dtype=np.uint64)
        lows = np.searchsorted(frozen.occ_hash, keys, side="left").tolist()
        highs = np.searchsorted(frozen.occ_hash, keys, side="right").tolist()
        if with_form:
            return [[(self.items[i], self.forms[i]) for i in sorted(set(frozen.occ_item[lo:hi].tolist()))]
                    for lo, hi in zip(lows, highs)]
        return [[self.items[i] for i in sorted(set(frozen.occ_item[lo:hi].tolist()))] for lo, hi in zip(lows, highs)]


@dataclass
class FrozenIndex:
    n: int
    bitmap: np.ndarray
    shift: np.uint64
    sorted_hashes: np.ndarray  # distinct n-gram hashes
    first_where: np.ndarray  # (part, first word) of one occurrence of each distinct hash
    occ_hash: np.ndarray  # every (hash, item) occurrence, sorted by hash
    occ_item: np.ndarray
    item_counts: np.ndarray
    parts: list[tuple[bytes, Words]]
    item_ngrams: dict | None = None

    @classmethod
    def build(cls, index: TestIndex) -> "FrozenIndex":
        hashes = np.concatenate(index._hashes) if index._hashes else np.empty(0, np.uint64)
        items = np.concatenate(index._item) if index._item else np.empty(0, np.int64)
        where = np.concatenate(index._where) if index._where else np.empty((0, 2), np.int64)
        if index._dropped:
            keep = ~np.isin(hashes, np.concatenate(index._dropped))
            hashes, items, where = hashes[keep], items[keep], where[keep]
        order = np.lexsort((items, hashes))
        hashes, items, where = hashes[order], items[order], where[order]
        distinct, first = np.unique(hashes, return_index=True)
        pair_new = np.ones(len(hashes), dtype=bool)
        pair_new[1:] = (hashes[1:] != hashes[:-1]) | (items[1:] != items[:-1])
        counts = np.bincount(items[pair_new], minlength=len(index.items))
        bits = index.bitmap_bits
        bitmap = np.zeros(1 << bits, dtype=bool)
        shift = np.uint64(64 - bits)
        bitmap[distinct >> shift] = True
        return cls(index.n, bitmap, shift, distinct, where[first], hashes, items, counts, index._parts)

    def text_of(self, slot: int) -> str:
        """The text of the distinct n-gram at ``slot`` of ``sorted_hashes``."""
        part, k = self.first_where[slot]
        norm, words = self.parts[int(part)]
        return next(ngram_texts(norm, words, [int(k)], self.n))[1]


@dataclass
class ScanResult:
    matched: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))  # n-gram -> doc numbers
    hash_of: dict[str, int] = field(default_factory=dict)  # n-gram -> its hash (to find its test items)
    n_ngrams: int = 0
    n_docs: int = 0
    n_bytes: int = 0

    def merge(self, other: "ScanResult", doc_offset: int = 0) -> None:
        for gram, docs in other.matched.items():
            self.matched[gram].extend(d + doc_offset for d in docs)
        self.hash_of.update(other.hash_of)
        self.n_ngrams += other.n_ngrams
        self.n_docs += other.n_docs
        self.n_bytes += other.n_bytes


def scan_buffer(buffer: bytes, index: FrozenIndex) -> ScanResult:
    """Test n-grams found in ``buffer`` (UTF-8, one document per line), with the line numbers (0-based)."""
    norm = normalise_bytes(buffer)
    words = split_words(norm)
    hashes = ngram_hashes(words, index.n)
    result = ScanResult(n_ngrams=len(hashes), n_docs=buffer.count(b"\n"), n_bytes=len(buffer))
    if not len(index.sorted_hashes):
        return result
    firsts = np.flatnonzero(index.bitmap[hashes >> index.shift])
    candidate = hashes[firsts]
    slot = np.minimum(np.searchsorted(index.sorted_hashes, candidate), len(index.sorted_hashes) - 1)
    hit = index.sorted_hashes[slot] == candidate
    firsts, slot = firsts[hit], slot[hit]
    inside = words.doc_of(firsts) == words.doc_of(firsts + index.n - 1)
    firsts, slot = firsts[inside], slot[inside]
    docs = words.doc_of(firsts).tolist()
    confirmed: dict[int, str] = {}
    for (_, text), doc, s in zip(ngram_texts(norm, words, firsts, index.n), docs, slot.tolist()):
        if s not in confirmed:
            confirmed[s] = index.text_of(s)
        # Equal hashes with different text (a collision) are not a match.
        if text == confirmed[s]:
            result.matched[text].append(doc)
            result.hash_of[text] = int(index.sorted_hashes[s])
    return result


def _line_chunks(path, chunk_bytes: int) -> Iterator[tuple[int, int]]:
    """(offset, length) of consecutive pieces of a file, each ending at a line end (or the end of the file)."""
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        offset = 0
        while offset < size:
            handle.seek(min(offset + chunk_bytes, size))
            handle.readline()
            end = min(handle.tell(), size)
            yield offset, end - offset
            offset = end


_WORKER_INDEX: FrozenIndex | None = None


def _scan_piece(args: tuple[str, int, int]) -> ScanResult:
    path, offset, length = args
    with open(path, "rb") as handle:
        handle.seek(offset)
        data = handle.read(length)
    if not data.endswith(b"\n"):
        data += b"\n"
    assert _WORKER_INDEX is not None
    return scan_buffer(data, _WORKER_INDEX)


def scan_file_lines(path, index: FrozenIndex, *, chunk_bytes: int = 8 << 20, workers: int = 1) -> ScanResult:
    """``scan_buffer`` over a large file of one document per line, in pieces cut at line ends, on ``workers``
    processes (forked: the index is shared, not copied). Document numbers are the file's 0-based line numbers."""
    global _WORKER_INDEX
    _WORKER_INDEX = index
    pieces = [(str(path), offset, length) for offset, length in _line_chunks(path, chunk_bytes)]
    total = ScanResult()
    if workers > 1 and len(pieces) > 1:
        import multiprocessing

        with multiprocessing.get_context("fork").Pool(workers) as pool:
            results = pool.imap(_scan_piece, pieces, chunksize=1)
            for result in results:
                total.merge(result, total.n_docs)
    else:
        for piece in pieces:
            total.merge(_scan_piece(piece), total.n_docs)
    return total

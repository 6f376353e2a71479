"""Decoded forms of escaped or encoded text, so that test items hidden in them can be matched.

A test item printed into a transcript comes back JSON-escaped once per layer of JSON it went through; an item in a
Python file may be a string literal, base64 (possibly of gzip), hex, a list of byte values, percent-encoded or
HTML-escaped. :func:`variants` returns every decoded form of a text with the chain of decodings that produced it
(``"unescape+unescape"``, ``"base64+gzip"``), nested up to :data:`MAX_DEPTH` layers.

The work is bounded: only documents that show a trigger (a backslash, ``%XX``, an HTML entity, a run of base64 or
hex characters) are decoded (:func:`candidate_lines` finds them in a whole batch at numpy speed), decompression
stops at :attr:`Decoder.max_piece_bytes`, and a :class:`Decoder` stops producing output after ``max_total_bytes``
(noting that it did).
"""

from __future__ import annotations

import bz2
import html
import lzma
import re
import zlib
from dataclasses import dataclass, field
from urllib.parse import unquote, unquote_plus

import numpy as np

MAX_DEPTH = 4
MIN_RUN = 24  # shortest base64 / hex run worth decoding (18 bytes of payload)
MIN_TEXT = 16  # shortest decoded text kept

_ESCAPE = re.compile(r"\\(?:u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}"
                     r"|x[0-9a-fA-F]{2}|[0-7]{1,3}|[nrtbfva\"'\\/])")
_SIMPLE = {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f", "v": "\v", "a": "\a", '"': '"', "'": "'",
           "\\": "\\", "/": "/"}
# Escapes that only string escaping produces (LaTeX's "\frac" or "\theta" look like "\f" and "\t" escapes, so
# a text with only those is left alone; a reader already turns a code file's "\n" and "\t" into whitespace).
_STRING_ESCAPE = re.compile(r"\\(?:[\"'\\/]|u[0-9a-fA-F]{4}|x[0-9a-fA-F]{2}|U[0-9a-fA-F]{8})")
_PERCENT = re.compile(r"%[0-9A-Fa-f]{2}")
_ENTITY = re.compile(r"&(?:#[0-9]{2,7}|#[xX][0-9a-fA-F]{2,6}|[A-Za-z][A-Za-z0-9]{1,31});")
_B64_RUN = re.compile(r"[A-Za-z0-9+/_-]{16,}={0,2}")
# Between two pieces of one base64 payload: line breaks, quotes and "+" of concatenated string literals, "\n".
_B64_GAP = re.compile(r"(?:\s|\\n|[\"'+,()])*")
_HEX_RUN = re.compile(r"(?:[0-9a-fA-F]{2}[ :]?){%d,}" % (MIN_RUN // 2))
_B32_RUN = re.compile(r"[A-Z2-7]{%d,}={0,6}" % MIN_RUN)
# A run of at least 8 words joined by one punctuation character instead of spaces ("what-is-the-sum-of").
_JOINED = re.compile(r"[A-Za-z']+(?:[-_~+][A-Za-z']+){7,}")
_JOINER = re.compile(r"(?<=[A-Za-z'])[-_~+](?=[A-Za-z'])")
# Tokens that can only be base85 (RFC 1924: no quotes, commas, dots, slashes, colons or brackets, which code and
# prose are full of) or Ascii85 (no letters v-z), 24+ characters.
_B85_TOKEN = re.compile(r"(?<![!-~])[0-9A-Za-z!#$%&()*+\-;<=>?@^_`{|}~]{" + str(MIN_RUN) + r",}(?![!-~])")
_A85_TOKEN = re.compile(r"(?<![!-~])(?:<~)?[!-uz]{" + str(MIN_RUN) + r",}(?:~>)?(?![!-~])")
_BYTE_LIST = re.compile(r"(?:\b(?:0x[0-9a-fA-F]{1,2}|[0-9]{1,3})\s*,\s*){%d,}(?:0x[0-9a-fA-F]{1,2}|[0-9]{1,3})\b"
                        % (MIN_TEXT - 1))


_FOLD_TABLE: dict[int, str | None] | None = None
# Letters of other scripts that look like Latin ones (the usual homoglyphs), folded to the Latin letter.
_CONFUSABLES = {
    "а": "a", "е": "e", "о": "o", "р": "p", "с": "c", "у": "y", "х": "x", "і": "i", "ј": "j", "ѕ": "s",
    "ԁ": "d", "ԛ": "q", "ԝ": "w", "һ": "h", "ӏ": "l", "ɡ": "g", "ո": "n", "ս": "u", "ᴠ": "v",
    "А": "A", "В": "B", "Е": "E", "К": "K", "М": "M", "Н": "H", "О": "O", "Р": "P", "С": "C", "Т": "T",
    "Х": "X", "І": "I", "Ј": "J", "Ѕ": "S", "У": "Y",
    "α": "a", "ο": "o", "ν": "v", "ι": "i", "κ": "k", "ρ": "p", "τ": "t", "υ": "u", "χ": "x",
    "Α": "A", "Β": "B", "Ε": "E", "Ζ": "Z", "Η": "H", "Ι": "I", "Κ": "K", "Μ": "M", "Ν": "N", "Ο": "O",
    "Ρ": "P", "Τ": "T", "Υ": "Y", "Χ": "X",
}


def _fold_table() -> dict[int, str | None]:
    """Invisible format characters (zero-width spaces and joiners, soft hyphens, BOMs: Unicode category Cf)
    removed; homoglyphs folded to Latin."""
    global _FOLD_TABLE
    if _FOLD_TABLE is None:
        import sys
        import unicodedata

        table: dict[int, str | None] = {c: None for c in range(sys.maxunicode + 1)
                                         if unicodedata.category(chr(c)) == "Cf"}
        table.update({ord(k): v for k, v in _CONFUSABLES.items()})
        _FOLD_TABLE = table
    return _FOLD_TABLE


def fold(text: str) -> str:
    """``text`` as it reads: compatibility forms (full-width letters, ligatures) normalised (NFKC), invisible
    characters removed, homoglyphs folded to Latin."""
    import unicodedata

    return unicodedata.normalize("NFKC", text).translate(_fold_table())


def _unescape_match(match: re.Match) -> str:
    body = match.group()[1:]
    head = body[0]
    if head in "uU" and len(body) == 11:  # a UTF-16 surrogate pair
        high, low = int(body[1:5], 16), int(body[7:11], 16)
        return chr(0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00))
    if head in "uUx":
        code = int(body[1:], 16)
        return chr(code) if code <= 0x10FFFF and not 0xD800 <= code <= 0xDFFF else " "
    if head.isdigit():
        return chr(int(body, 8))
    return _SIMPLE[head]


def unescape(text: str) -> str:
    """One layer of JSON / Python string escapes undone (``\\n``, ``\\"``, ``\\uXXXX`` with surrogate pairs,
    ``\\xXX``, ``\\UXXXXXXXX``, octal); unknown escapes are left as they are."""
    return _ESCAPE.sub(_unescape_match, text)


def _text_of(data: bytes) -> str | None:
    """``data`` as text when it is mostly printable UTF-8 (or UTF-16 with a byte-order mark), else None."""
    if len(data) < MIN_TEXT:
        return None
    try:
        if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
            text = data.decode("utf-16")
        else:
            text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    sample = text[:4096]
    printable = sum(1 for c in sample if c.isprintable() or c in "\n\r\t")
    letters = sum(1 for c in sample if c.isalpha())
    if printable < 0.9 * len(sample) or letters < 0.3 * len(sample):
        return None
    return text


@dataclass
class Decoder:
    """Decodes documents within a budget; ``notes`` says when the budget ran out."""

    max_total_bytes: int = 256 << 20
    max_piece_bytes: int = 16 << 20
    max_doc_chars: int = 16 << 20
    max_depth: int = MAX_DEPTH
    produced: int = 0
    notes: list[str] = field(default_factory=list)
    found: dict[str, int] = field(default_factory=dict)  # decoding chain -> variants produced

    @property
    def spent(self) -> bool:
        return self.produced >= self.max_total_bytes

    def _decompress(self, data: bytes) -> tuple[bytes, str] | None:
        """Gzip, zlib, bzip2 or xz payloads, decompressed to at most ``max_piece_bytes``."""
        limit = self.max_piece_bytes
        try:
            if data[:2] == b"\x1f\x8b":
                return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data, limit), "gzip"
            if len(data) > 2 and data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0:
                return zlib.decompressobj().decompress(data, limit), "zlib"
            if data[:3] == b"BZh":
                return bz2.BZ2Decompressor().decompress(data, limit), "bz2"
            if data[:6] == b"\xfd7zXZ\x00":
                return lzma.LZMADecompressor().decompress(data, limit), "xz"
        except (zlib.error, OSError, EOFError, lzma.LZMAError, ValueError):
            return None
        return None

    def _payload(self, data: bytes, how: str) -> tuple[str, str] | None:
        """Decoded bytes as text, through one layer of compression if there is one."""
        unpacked = self._decompress(data)
        if unpacked is not None:
            data, how = unpacked[0], f"{how}+{unpacked[1]}"
        text = _text_of(data)
        return (text, how) if text is not None else None

    def _base64(self, text: str) -> list[tuple[str, str]]:
        import base64
        import binascii

        runs = [m for m in _B64_RUN.finditer(text)]
        groups: list[list[re.Match]] = []
        for run in runs:
            if groups and _B64_GAP.fullmatch(text, groups[-1][-1].end(), run.start()) and \
                    not groups[-1][-1].group().endswith("="):
                groups[-1].append(run)
            else:
                groups.append([run])
        out = []
        for group in groups:
            # The whole group (a payload split over lines or literals), else each piece alone.
            tries = [group] + ([[r] for r in group] if len(group) > 1 else [])
            for pieces in tries:
                blob = "".join(p.group() for p in pieces)
                if len(blob) < MIN_RUN:
                    continue
                urlsafe = "-" in blob or "_" in blob
                if urlsafe and ("+" in blob or "/" in blob):
                    continue
                core = blob.rstrip("=")
                if len(core) % 4 == 1:
                    core = core[:-1]
                core += "=" * (-len(core) % 4)
                try:
                    data = (base64.urlsafe_b64decode if urlsafe else base64.b64decode)(core)
                except (binascii.Error, ValueError):
                    continue
                decoded = self._payload(data, "base64url" if urlsafe else "base64")
                if decoded is not None:
                    out.append(decoded)
                    break
        return out

    def _base32(self, text: str) -> list[tuple[str, str]]:
        import base64
        import binascii

        out = []
        for run in _B32_RUN.finditer(text):
            blob = run.group().rstrip("=")
            blob = blob[: len(blob) // 8 * 8] if len(blob) % 8 not in (0, 2, 4, 5, 7) else blob
            try:
                data = base64.b32decode(blob + "=" * (-len(blob) % 8))
            except (binascii.Error, ValueError):
                continue
            decoded = self._payload(data, "base32")
            if decoded is not None:
                out.append(decoded)
        return out

    def _base85(self, text: str) -> list[tuple[str, str]]:
        import base64

        out = []
        for pattern, how, decode in ((_B85_TOKEN, "base85", base64.b85decode),
                                     (_A85_TOKEN, "ascii85", lambda t: base64.a85decode(t, adobe=t.startswith("<~")))):
            for run in pattern.finditer(text):
                token = run.group()
                # An encoding's output mixes cases, digits and punctuation; a word or identifier does not.
                if not (re.search(r"[0-9]", token) and re.search(r"[A-Z]", token) and re.search(r"[a-z]", token)
                        and re.search(r"[^0-9A-Za-z]", token)):
                    continue
                try:
                    data = decode(token)
                except ValueError:
                    continue
                decoded = self._payload(data, how)
                if decoded is not None:
                    out.append(decoded)
        return out

    def _hex(self, text: str) -> list[tuple[str, str]]:
        out = []
        for run in _HEX_RUN.finditer(text):
            digits = re.sub(r"[ :]", "", run.group())
            if len(digits) < MIN_RUN:
                continue
            decoded = self._payload(bytes.fromhex(digits[: len(digits) // 2 * 2]), "hex")
            if decoded is not None:
                out.append(decoded)
        return out

    def _byte_list(self, text: str) -> list[tuple[str, str]]:
        out = []
        for run in _BYTE_LIST.finditer(text):
            values = [int(v, 0) for v in re.split(r"\s*,\s*", run.group())]
            if max(values) < 256:
                decoded = self._payload(bytes(values), "byte-list")
                if decoded is not None:
                    out.append(decoded)
        return out

    def _step(self, text: str, escaped: bool, runs: bool) -> list[tuple[str, str]]:
        """Every one-layer decoding of ``text`` that changes it (``escaped``: known to be escaped text already;
        ``runs``: it may hold base64, hex or byte-list runs)."""
        out: list[tuple[str, str]] = []
        if "\\" in text and (escaped or _STRING_ESCAPE.search(text)):
            plain = unescape(text)
            if plain != text:
                out.append((plain, "unescape"))
        if "&" in text and _ENTITY.search(text):
            plain = html.unescape(text)
            if plain != text:
                out.append((plain, "html-entities"))
        if "%" in text and len(_PERCENT.findall(text, 0, 1 << 16)) >= 3:
            plain = unquote_plus(text) if " " not in text.strip() else unquote(text)
            if plain != text:
                out.append((plain, "percent"))
        if not text.isascii():
            plain = fold(text)
            if plain != text:
                out.append((plain, "unicode-fold"))
        if runs and _JOINED.search(text):
            out.append((_JOINED.sub(lambda m: _JOINER.sub(" ", m.group()), text), "joined-words"))
        # Base85 and Ascii85 hold "%" and "&" (a trigger) in all but the shortest payloads, never long base64 runs.
        for finder in (self._base64, self._base32, self._base85, self._hex, self._byte_list) if runs else \
                ((self._base85,) if "%" in text or "&" in text else ()):
            pieces = finder(text)
            by_how: dict[str, list[str]] = {}
            for piece, how in pieces:
                by_how.setdefault(how, []).append(piece)
            out.extend(("\n".join(ps), how) for how, ps in by_how.items())
        return out

    def variants(self, text: str, runs: bool = True) -> list[tuple[str, str]]:
        """Decoded forms of ``text`` (not ``text`` itself), each with its chain of decodings, breadth first."""
        if self.spent:
            return []
        if len(text) > self.max_doc_chars:
            self.notes.append(f"only the first {self.max_doc_chars >> 20} MiB of a "
                              f"{len(text) >> 20} MiB document decoded")
            text = text[: self.max_doc_chars]
        out: list[tuple[str, str]] = []
        layer = [(text, "")]
        for _ in range(self.max_depth):
            nxt = []
            for current, chain in layer:
                for decoded, how in self._step(current, chain.endswith("unescape"), runs or bool(chain)):
                    if self.produced + len(decoded) >= self.max_total_bytes:
                        self.produced = self.max_total_bytes
                        self.notes.append(f"decoding stopped after {self.max_total_bytes >> 20} MiB of output "
                                          "(judge.contamination.max_decoded_mib): later documents were scanned as "
                                          "they are")
                        return out
                    self.produced += len(decoded)
                    full = f"{chain}+{how}" if chain else how
                    self.found[full] = self.found.get(full, 0) + 1
                    out.append((decoded, full))
                    nxt.append((decoded, full))
            if not nxt:
                break
            layer = nxt
        return out


# Bytes that can start a decoding: backslash, percent, ampersand; and the base64 / hex alphabets for runs.
_TRIGGER = np.zeros(256, dtype=bool)
_TRIGGER[[ord("\\"), ord("%"), ord("&")]] = True
_B64_BYTES = np.zeros(256, dtype=bool)
_B64_BYTES[list(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/_-=")] = True
# Lead bytes of Cyrillic and Greek letters (homoglyphs), of full-width forms and BOMs (0xEF), and 0xE2 (followed by
# 0x80 or 0x81: zero-width spaces and joiners, word joiner) and 0xC2 0xAD (soft hyphen) are checked in place.
_FOLD_LEADS = np.zeros(256, dtype=bool)
_FOLD_LEADS[[0xCE, 0xCF, 0xD0, 0xD1, 0xD3, 0xD4, 0xEF]] = True
_DIGIT_LIST = np.zeros(256, dtype=bool)
_DIGIT_LIST[list(b"0123456789, x")] = True


def _long_runs(mask: np.ndarray, min_len: int) -> np.ndarray:
    """Start positions of runs of True at least ``min_len`` long."""
    padded = np.concatenate(([False], mask, [False]))
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    starts, ends = edges[::2], edges[1::2]
    return starts[(ends - starts) >= min_len]


def candidate_lines(buffer: bytes) -> tuple[np.ndarray, set[int]]:
    """Line numbers (0-based) of ``buffer`` (one document per line) that may hold escaped or encoded text, and
    those of them with a run of base64, hex or byte-list characters (only those are searched for runs)."""
    empty = np.empty(0, dtype=np.int64)
    if not buffer:
        return empty, set()
    arr = np.frombuffer(buffer, dtype=np.uint8)
    runs = np.concatenate([_long_runs(_B64_BYTES[arr], MIN_RUN), _long_runs(_DIGIT_LIST[arr], 3 * MIN_TEXT)])
    e2 = np.flatnonzero(arr[:-2] == 0xE2)
    e2 = e2[((arr[e2 + 1] == 0x80) & (arr[e2 + 2] >= 0x8B) & (arr[e2 + 2] <= 0x8F))
            | ((arr[e2 + 1] == 0x81) & (arr[e2 + 2] >= 0xA0) & (arr[e2 + 2] <= 0xAF))]
    c2 = np.flatnonzero(arr[:-1] == 0xC2)
    fold_hits = np.concatenate([np.flatnonzero(_FOLD_LEADS[arr]), e2, c2[arr[c2 + 1] == 0xAD]])
    hits = np.concatenate([np.flatnonzero(_TRIGGER[arr]), runs, fold_hits])
    if not len(hits):
        return empty, set()
    newlines = np.flatnonzero(arr == 10)
    return np.unique(np.searchsorted(newlines, hits)), set(np.searchsorted(newlines, runs).tolist())

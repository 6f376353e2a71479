"""ProgressReporter: time-based throttling, rate and ETA, percent marks, threads, the line format, and the
folder watcher, with a fake clock (no sleeping) where time matters."""

from __future__ import annotations

import logging
import threading

import pytest

from posttrainbench.progress import (
    INTERVAL_ENV,
    ProgressReporter,
    folder_bytes,
    format_duration,
    parse_progress_line,
    watch_folder,
)


class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def _lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("progress ")]


def test_lines_are_throttled_to_the_interval_and_carry_rate_and_eta(caplog):
    clock = FakeClock()
    caplog.set_level(logging.INFO, logger="t")
    rep = ProgressReporter(100, "generate:gsm8k", interval_s=30, logger=logging.getLogger("t"), clock=clock)
    assert _lines(caplog) == ["progress generate:gsm8k 0/100 (0.0%) 0/s eta ? elapsed 0:00:00"]
    for _ in range(9):  # 9 items over 27 s: no line is due yet
        clock.now += 3
        rep.update()
    assert len(_lines(caplog)) == 1
    clock.now += 3
    rep.update()  # 10 items in 30 s: a line, 1/3 item per second, 90 items left -> 270 s
    assert _lines(caplog)[-1] == "progress generate:gsm8k 10/100 (10.0%) 0.333/s eta 0:04:30 elapsed 0:00:30"
    clock.now += 10
    rep.update(5)
    assert len(_lines(caplog)) == 2
    clock.now += 4000
    rep.update(85)
    assert _lines(caplog)[-1] == "progress generate:gsm8k 100/100 (100.0%) 0.0248/s eta 0:00:00 elapsed 1:07:20"
    rep.finish()  # the last line already shows the whole total: no repeat
    assert len(_lines(caplog)) == 3
    rep2 = ProgressReporter(10, "x", interval_s=30, logger=logging.getLogger("t"), clock=clock)
    rep2.update(4)
    rep2.finish()
    rep2.finish()  # once only
    assert [parse_progress_line(line)["done"] for line in _lines(caplog)[3:]] == [0, 10]


def test_percent_marks_add_lines_between_intervals(caplog):
    clock = FakeClock()
    caplog.set_level(logging.INFO, logger="t")
    rep = ProgressReporter(200, "steps", interval_s=3600, every_pct=25, logger=logging.getLogger("t"), clock=clock)
    for _ in range(200):
        clock.now += 1
        rep.update()
    shown = [parse_progress_line(line)["done"] for line in _lines(caplog)]
    assert shown == [0, 50, 100, 150, 200]


def test_unknown_total_and_failed_block_show_how_far_it_got(caplog):
    clock = FakeClock()
    caplog.set_level(logging.INFO, logger="t")
    with pytest.raises(RuntimeError):
        with ProgressReporter(None, "bytes of x", interval_s=1, logger=logging.getLogger("t"), clock=clock) as rep:
            clock.now += 2
            rep.set(4096)
            raise RuntimeError("boom")
    lines = _lines(caplog)
    assert lines[-1] == "progress bytes-of-x 4096/? (?%) 2.05e+03/s eta ? elapsed 0:00:02"
    with ProgressReporter(10, "x", interval_s=100, logger=logging.getLogger("t"), clock=clock) as rep:
        rep.update(3)
    # A completed block reports the whole total even when the worker counted less.
    assert parse_progress_line("\n".join(_lines(caplog)))["done"] == 10


def test_parse_reads_the_last_line_of_a_log():
    log = ("2026-01-01 INFO x: progress judge-scan 3/40 (7.5%) 1.5/s eta 0:00:25 elapsed 0:00:02\n"
           "2026-01-01 INFO x: something else\n"
           "2026-01-01 INFO x: progress judge-scan 12/40 (30.0%) 2/s eta 0:00:14 elapsed 0:00:06\n")
    assert parse_progress_line(log) == {"label": "judge-scan", "done": 12, "total": 40, "pct": 30.0, "rate": 2.0,
                                        "eta": "0:00:14", "elapsed": "0:00:06"}
    assert parse_progress_line("no progress here") is None
    assert format_duration(3 * 3600 + 62) == "3:01:02" and format_duration(None) == "?"


def test_updates_from_many_threads_are_all_counted(caplog):
    caplog.set_level(logging.INFO, logger="t")
    rep = ProgressReporter(8000, "items", interval_s=0, logger=logging.getLogger("t"))

    def work():
        for _ in range(1000):
            rep.update()

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert rep.done == 8000
    # Every line is whole and parses (no interleaving inside a line).
    assert all(parse_progress_line(line) for line in _lines(caplog))
    assert parse_progress_line(_lines(caplog)[-1])["done"] == 8000


def test_interval_comes_from_the_environment_and_bad_values_are_named(monkeypatch):
    monkeypatch.setenv(INTERVAL_ENV, "5")
    assert ProgressReporter(1, "x", announce=False).interval_s == 5.0
    monkeypatch.setenv(INTERVAL_ENV, "often")
    with pytest.raises(ValueError, match=INTERVAL_ENV):
        ProgressReporter(1, "x", announce=False)


def test_watch_folder_measures_bytes_written_during_the_block(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="t")
    rep = ProgressReporter(3000, "stage-bytes", interval_s=0, logger=logging.getLogger("t"))
    with watch_folder(tmp_path, rep, poll_s=0.01):
        (tmp_path / "a.bin").write_bytes(b"x" * 1000)
        (tmp_path / "sub").mkdir()
        (tmp_path / "sub" / "b.bin").write_bytes(b"y" * 2000)
    assert folder_bytes(tmp_path) == 3000
    last = parse_progress_line("\n".join(_lines(caplog)))
    assert last["done"] == 3000 and last["pct"] == 100.0


def test_a_real_evaluation_logs_progress_with_an_eta(tmp_path, tiny_model_dir, caplog, monkeypatch):
    """evaluate_checkpoint on the tiny model (real transformers generation, CPU, 3 GSM8K items one per batch):
    the evaluation's log holds a progress line per batch, each with done/total, rate and ETA."""
    from posttrainbench.benchmarks import stage_benchmark
    from posttrainbench.evaluation import evaluate_checkpoint

    stage_benchmark("gsm8k", tmp_path / "gsm8k")
    monkeypatch.setenv(INTERVAL_ENV, "0.000001")
    caplog.set_level(logging.INFO, logger="posttrainbench.evaluation")
    record = evaluate_checkpoint(tiny_model_dir, "gsm8k", tmp_path / "gsm8k", limit=3, max_tokens=4, batch_size=1,
                                 device="cpu", dtype="auto", family="qwen3", templates="project")
    assert record["n"] == 3
    lines = [r.getMessage() for r in caplog.records
             if r.name == "posttrainbench.evaluation" and r.getMessage().startswith("progress ")]
    parsed = [parse_progress_line(line) for line in lines]
    assert [(p["label"], p["done"], p["total"]) for p in parsed] == [("generate:gsm8k", k, 3) for k in range(4)]
    assert parsed[1]["rate"] > 0 and parsed[1]["eta"] != "?" and parsed[-1]["eta"] == "0:00:00"

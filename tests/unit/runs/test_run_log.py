"""RUN_DIR/log.txt's set-up (``runs.run_log``): what goes to the file, what stays on the console,
and that a run leaves no handler behind."""

from __future__ import annotations

import logging
import warnings
from types import SimpleNamespace

import pytest

from everlearn.runs.run_log import LOGGERS, cost_line, run_log, score_line

log = logging.getLogger("everlearn")


def handlers() -> list[list[logging.Handler]]:
    return [list(lg.handlers) for lg in LOGGERS]


def test_lines_go_to_the_file_and_the_handlers_go_away(tmp_path):
    before = handlers()
    for k in range(3):  # a process that runs several times (a notebook, cli.main in tests)
        with run_log(tmp_path / f"run{k}"):
            log.info("line of run %d", k)
        assert handlers() == before
    for k in range(3):
        text = (tmp_path / f"run{k}" / "log.txt").read_text()
        assert f"INFO line of run {k}" in text
        assert [f"line of run {j}" in text for j in range(3)].count(True) == 1
    log.info("after the runs")
    assert "after the runs" not in (tmp_path / "run2" / "log.txt").read_text()


def test_a_failure_is_logged_with_its_traceback_to_the_file_only(tmp_path, capsys):
    def train():
        raise ValueError("boom\nsecond line")

    with pytest.raises(ValueError), run_log(tmp_path):
        train()
    text = (tmp_path / "log.txt").read_text()
    assert "ERROR run failed: ValueError: boom second line" in text
    assert "Traceback (most recent call last):" in text and "in train" in text
    assert "Traceback" not in capsys.readouterr().err  # the CLI prints one line itself


def test_warnings_reach_the_console_and_the_file(tmp_path, capsys):
    with run_log(tmp_path):
        log.warning("everlearn's own warning")
        warnings.warn("a library's warning", UserWarning, stacklevel=1)
    text = (tmp_path / "log.txt").read_text()
    assert "WARNING everlearn's own warning" in text
    assert "UserWarning: a library's warning" in text
    assert "everlearn's own warning" in capsys.readouterr().err
    assert getattr(warnings.showwarning, "__module__", "") != "logging"  # capture undone


def test_an_interrupt_is_noted(tmp_path):
    with pytest.raises(KeyboardInterrupt), run_log(tmp_path):
        raise KeyboardInterrupt
    assert "INFO interrupted" in (tmp_path / "log.txt").read_text()


def test_nested_for_the_same_directory_attaches_once(tmp_path):
    before = handlers()
    with pytest.raises(RuntimeError), run_log(tmp_path):
        with run_log(tmp_path):
            assert sum(isinstance(h, logging.FileHandler) for h in log.handlers) == 1
            log.info("inside")
            raise RuntimeError("once")
    text = (tmp_path / "log.txt").read_text()
    assert text.count("INFO inside") == 1 and text.count("run failed: RuntimeError") == 1
    assert handlers() == before


def test_score_and_cost_lines():
    stage = SimpleNamespace(name="red", metric="reliability")
    score = SimpleNamespace(score=66.666, n=6, side={"locality": 50.0})
    assert score_line(2, stage, score) == "row 2: red reliability = 66.67 (n=6), locality = 50.00"
    line = cost_line({"phase": 3, "steps": 30, "final_loss": 1.23456, "tokens_trained": 12345,
                      "wall_time_s": 2.26, "buffer_size": 0, "peak_memory_mb": None})
    assert line == "phase 3 cost: steps 30, final loss 1.2346, tokens 12,345, wall 2.3 s, buffer 0"

"""A run's log.txt: what a finished run logs, and why a failed run stopped."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from everlearn.runs.run_log import LOGGERS
from tests.helpers.cli import call, one_line_error, write_config


def handler_counts() -> list[int]:
    return [len(lg.handlers) for lg in LOGGERS]


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory) -> tuple[Path, str]:
    tmp = tmp_path_factory.mktemp("log")
    before = handler_counts()
    code, _, err = call(["run", str(write_config(tmp)), "-o", str(tmp / "run"), "-q"])
    assert code == 0, err
    assert handler_counts() == before  # cli.main leaves no handler behind
    return tmp / "run", (tmp / "run" / "log.txt").read_text()


def test_a_run_logs_config_phases_evaluations_and_cost(logged_run):
    _, text = logged_run
    assert "resolved config:\nname: tiny\n" in text and "  steps: 3\n" in text
    assert "environment: torch " in text
    for phase, stage in ((1, "red"), (2, "green")):
        assert f"phase {phase}: training {stage} (strategy seqft)" in text
        assert f"phase {phase} cost: steps 3, final loss " in text
    for row in (0, 1, 2):
        for stage in ("red", "green"):
            assert f"INFO row {row}: {stage} exact_match = " in text
    assert "INFO run complete: metrics {" in text and '"final_ap"' in text
    # in order: config, base row, phase 1, its row, its cost, phase 2, ..., the end
    marks = ["resolved config", "row 0: red", "phase 1: training", "row 1: red",
             "phase 1 cost", "phase 2: training", "row 2: green", "run complete"]
    assert [text.index(m) for m in marks] == sorted(text.index(m) for m in marks)


def test_resume_appends_to_the_log(logged_run):
    run, before = logged_run
    code, _, err = call(["run", "--resume", str(run), "-q"])
    assert code == 0, err
    text = (run / "log.txt").read_text()
    assert text.startswith(before)
    assert f"resuming the run in {run}" in text[len(before):]


def test_a_bad_data_file_found_during_the_run_is_in_the_log(tmp_path):
    cfg = write_config(tmp_path)
    (tmp_path / "green_train.jsonl").write_text('{"prompt": "x", "response": "y"}\n{"prompt": ')
    code, _, err = call(["run", str(cfg), "-o", str(tmp_path / "run"), "-q"])
    assert code == 2
    line = one_line_error(err)
    assert "green_train.jsonl" in line
    text = (tmp_path / "run" / "log.txt").read_text()
    assert "ERROR run failed: DataError: " in text and "green_train.jsonl" in text
    assert "Traceback (most recent call last):" in text


def test_an_error_in_training_is_in_the_log(tmp_path, monkeypatch):
    from everlearn.training.trainer import Trainer

    original = Trainer.train_phase

    def fails_in_phase_2(self, model, stages, phase, **kwargs):
        if phase == 2:
            raise RuntimeError("CUDA out of memory (simulated)")
        return original(self, model, stages, phase, **kwargs)

    monkeypatch.setattr(Trainer, "train_phase", fails_in_phase_2)
    before = handler_counts()
    with pytest.raises(RuntimeError):
        call(["run", str(write_config(tmp_path)), "-o", str(tmp_path / "run"), "-q"])
    assert handler_counts() == before
    text = (tmp_path / "run" / "log.txt").read_text()
    assert "phase 1 cost: steps 3" in text and "phase 2: training green" in text
    assert "ERROR run failed: RuntimeError: CUDA out of memory (simulated)" in text
    assert "in fails_in_phase_2" in text  # the traceback, down to where it was raised
    assert text.index("phase 2: training green") < text.index("run failed")


def test_python_warnings_of_a_run_are_in_the_log(tmp_path, monkeypatch):
    import warnings

    from everlearn.training.trainer import Trainer

    original = Trainer.train_phase

    def warns(self, *args, **kwargs):
        warnings.warn("a library deprecation (simulated)", FutureWarning, stacklevel=1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "train_phase", warns)
    code, _, err = call(["run", str(write_config(tmp_path)), "train.steps=1",
                         "-o", str(tmp_path / "run"), "-q"])
    assert code == 0, err
    text = (tmp_path / "run" / "log.txt").read_text()
    assert "FutureWarning: a library deprecation (simulated)" in text
    assert logging.getLogger("everlearn").level == logging.NOTSET  # restored after the run

"""The predictions files' names and lines (``runs.predictions``)."""

from __future__ import annotations

import json
from types import SimpleNamespace

from everlearn.evaluation.evaluator_base import StageScore
from everlearn.runs.predictions import finite, prediction_file, read_predictions, write_predictions


def test_file_names_are_safe_and_apart():
    assert prediction_file(0, 1, "red") == "predictions/row-00/01-red.jsonl"
    assert prediction_file(12, 3, "a/b c") == "predictions/row-12/03-a_b_c.jsonl"
    assert prediction_file(1, 2, "..") == "predictions/row-01/02-stage.jsonl"
    assert prediction_file(1, 1, "a b") != prediction_file(1, 2, "a/b")  # same clean name


def test_written_lines_and_skipped_stages(tmp_path):
    stages = [SimpleNamespace(name=n) for n in ("red", "text", "skipped")]
    samples = [{"index": 0, "generation": "é", "loglikelihoods": [-1.5, float("-inf")],
                "score": 100.0}, {"index": 1, "generation": "", "score": 0.0}]
    scores = [StageScore(50.0, 2, ["é", ""], samples=samples),
              StageScore(12.3, 2, ["", ""]),  # perplexity: no samples, no file
              None]  # not scored in this row (the eval schedule)
    written = write_predictions(tmp_path, 3, stages, scores)
    assert written == {"red": "predictions/row-03/01-red.jsonl"}
    raw = (tmp_path / written["red"]).read_text(encoding="utf-8")
    assert "é" in raw and "Infinity" not in raw  # UTF-8 as is; valid JSON only
    lines = read_predictions(tmp_path, written["red"])
    assert lines[0] == {"row": 3, "stage": "red", "index": 0, "generation": "é",
                        "loglikelihoods": [-1.5, None], "score": 100.0}
    assert list(lines[0]) == ["row", "stage", "index", "generation", "loglikelihoods", "score"]
    assert [json.loads(ln)["index"] for ln in raw.splitlines()] == [0, 1]
    assert not (tmp_path / "predictions" / "row-03" / "02-text.jsonl").exists()


def test_finite_keeps_everything_else():
    assert finite({"a": (1.0, float("nan")), "b": True, "c": "x", "d": None}) == {
        "a": [1.0, None], "b": True, "c": "x", "d": None}

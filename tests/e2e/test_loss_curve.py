"""The training-loss curve: results.json keeps, per phase, the mean loss of every
``tracker.log_every`` steps (and of the last, shorter window), the report plots it."""

from __future__ import annotations

from pathlib import Path

import pytest

from everlearn.runs.runner import start_run
from everlearn.validation import build_config
from tests.conftest import constant_task, tiny_config


def run(tmp: Path, every: int) -> dict:
    stages = [constant_task(tmp, "red", "alpha"), constant_task(tmp, "green", "bravo")]
    cfg = tiny_config(tmp, stages, tracker={"backend": "none", "log_every": every})
    cfg["train"]["steps"] = 9
    _, results = start_run(build_config(cfg), tmp / f"every-{every}", quiet=True)
    return results


def test_loss_curve_follows_the_logging_cadence(tmp_path: Path):
    each = run(tmp_path, 1)
    every4 = run(tmp_path, 4)
    for phase in range(2):
        steps = [p[1] for p in each["cost"][phase]["loss_curve"]]
        assert [p[0] for p in each["cost"][phase]["loss_curve"]] == list(range(1, 10))
        assert steps[-1] == each["cost"][phase]["final_loss"]
        # the same seed trains the same steps: each point is the mean of its window
        curve = every4["cost"][phase]["loss_curve"]
        assert [p[0] for p in curve] == [4, 8, 9]
        for (_, mean), window in zip(curve, (steps[0:4], steps[4:8], steps[8:9])):
            assert mean == pytest.approx(sum(window) / len(window), rel=1e-6)
    # the tiny model learns its constant answer: the loss falls within the phase
    first = each["cost"][0]["loss_curve"]
    assert first[-1][1] < first[0][1]

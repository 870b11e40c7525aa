"""Align stages in runs on the tiny model: DPO from log 2, sft then align, resume, strategies, and
what may not share an align stage."""

from __future__ import annotations

import json
import math

import pytest

from everlearn.errors import TrainingError
from everlearn.runs.runner import resume_run, start_run
from everlearn.validation import build_config
from tests.conftest import constant_task, killed_at_phase, tiny_config
from tests.helpers.align import pref_stage


def _run(tmp_path, stages, name="run", **overrides):
    cfg = build_config(tiny_config(tmp_path, stages, **overrides))
    return start_run(cfg, tmp_path / name, quiet=True)


# --- runs on the tiny model -----------------------------------------------------------------
def test_loss_starts_at_log_2(tmp_path):
    """One step: the loss is taken before the update, with policy == reference."""
    _, res = _run(tmp_path, [pref_stage("pref_concise")],
                  train={"steps": 1, "precision": "fp32", "max_length": 96})
    assert res["cost"][0]["final_loss"] == pytest.approx(math.log(2), abs=1e-5)


def test_sft_then_align_stream_end_to_end(tmp_path):
    stages = [constant_task(tmp_path, "red", "alpha"), pref_stage("pref_concise"),
              pref_stage("pref_format")]
    path, res = _run(tmp_path, stages, train={"lr": 1e-3, "steps": 20, "precision": "fp32",
                                              "max_length": 96, "warmup_ratio": 0.0})
    R = res["R"]
    assert res["status"] == "complete" and len(R) == 4 and all(len(r) == 3 for r in R)
    assert all(math.isfinite(v) for row in R for v in row)
    assert R[0][1:] == [50.0, 50.0]  # the base model against itself: ties, half credit each
    assert R[2][1] > 75.0 and R[3][2] > 75.0  # each preference is learned on held-out pairs
    assert [s["kind"] for s in res["stages"]] == ["sft", "align", "align"]
    assert [s["metric"] for s in res["stages"]][1:] == ["preference_accuracy"] * 2
    side = res["side_metrics"]
    assert len(side) == 4 and side[0]["pref_concise"]["mean_margin"] == 0.0
    assert side[2]["pref_concise"]["mean_margin"] > 0 and "red" not in side[2]
    assert len(res["preference_logratios"]) == 4
    for c in res["cost"]:
        assert math.isfinite(c["final_loss"]) and c["tokens_trained"] > 0
        assert 0.0 <= c["padding_fraction"] < 1.0
    assert res["cost"][1]["examples"] == 32  # pairs
    # 2 rows per pair, each at least as long as the prompt: more tokens than sft on chosen only
    assert res["cost"][1]["tokens_trained"] > 20 * 8 * 2 * 10
    assert res["metrics"]["final_ap"] == pytest.approx(sum(R[3]) / 3)
    assert json.loads((path / "results.json").read_text())["side_metrics"] == side


def test_resume_after_crash_equals_uninterrupted(tmp_path, monkeypatch):
    stages = [constant_task(tmp_path, "red", "alpha"), pref_stage("pref_concise"),
              pref_stage("pref_refuse")]
    train = {"lr": 1e-3, "steps": 6, "precision": "fp32", "max_length": 96}
    _, full = _run(tmp_path, stages, name="full", train=train)

    with killed_at_phase(monkeypatch, 3):
        _run(tmp_path, stages, name="crashed", train=train)
    _, resumed = resume_run(tmp_path / "crashed", quiet=True)
    for key in ("R", "metrics", "side_metrics", "preference_logratios"):
        assert resumed[key] == full[key], key
    assert [c["final_loss"] for c in resumed["cost"]] == [c["final_loss"] for c in full["cost"]]


@pytest.mark.parametrize("strategy", ["replay", "lwf", "ewc"])
def test_strategies_run_on_align_stages(tmp_path, strategy):
    """Pairs replay into a later align stage; extra_loss hooks see the 2B-row pair batch."""
    spec = {"name": "replay", "buffer_size": 8} if strategy == "replay" else strategy
    _, res = _run(tmp_path, [pref_stage("pref_concise"), pref_stage("pref_format")],
                  strategies=[spec], train={"steps": 3, "precision": "fp32", "max_length": 96})
    assert all(math.isfinite(c["final_loss"]) for c in res["cost"])
    if strategy == "replay":
        assert res["cost"][1]["examples"] > 32  # the buffered pairs joined the stage


def test_instruction_records_cannot_join_an_align_stage(tmp_path):
    stages = [constant_task(tmp_path, "red", "alpha"), pref_stage("pref_concise")]
    with pytest.raises(TrainingError, match="not preference pairs"):
        _run(tmp_path, stages, strategies=[{"name": "replay", "buffer_size": 8}],
             train={"steps": 2, "precision": "fp32", "max_length": 96})


def test_pairs_replayed_into_an_sft_stage_train_on_the_chosen_answer(tmp_path):
    stages = [pref_stage("pref_concise"), constant_task(tmp_path, "red", "alpha")]
    _, res = _run(tmp_path, stages, strategies=[{"name": "replay", "buffer_size": 8}],
                  train={"steps": 2, "precision": "fp32", "max_length": 96})
    assert res["cost"][1]["examples"] > 24 and math.isfinite(res["cost"][1]["final_loss"])

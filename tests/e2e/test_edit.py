"""Edit stages in runs on the tiny model: the constrained fine-tuning editor, a GRACE stream,
resume, and the built-in counterfactual stream."""

from __future__ import annotations

import math

import pytest
import torch

from everlearn.models.loading import build_tiny_model, build_tiny_tokenizer
from everlearn.report.tables import format_summary
from everlearn.runs.runner import resume_run, start_run
from everlearn.validation import build_config
from tests.conftest import killed_at_phase, tiny_config
from tests.helpers.edit import GRACE, WISE, three_batches


# --- runs on the tiny model -----------------------------------------------------------------
def _run(tmp_path, stages, name="run", **overrides):
    cfg = build_config(tiny_config(tmp_path, stages, **overrides))
    return start_run(cfg, tmp_path / name, quiet=True)


def test_constrained_finetuning_trains_only_the_chosen_layer_within_the_bound(tmp_path):
    bound = 0.02
    path, res = _run(tmp_path, three_batches(tmp_path)[:2], edit={"layers": [-1],
                     "max_change": bound, "lr": 1e-2}, train={"steps": 25, "batch_size": 8,
                     "max_length": 64, "precision": "fp32", "warmup_ratio": 0.0,
                     "schedule": "constant", "lr": 1e-2}, keep_stage_weights="all")
    R = res["R"]
    assert res["status"] == "complete" and [s["kind"] for s in res["stages"]] == ["edit"] * 2
    assert [s["metric"] for s in res["stages"]] == ["reliability"] * 2
    assert R[1][0] == 100.0 and R[2][1] == 100.0  # each batch learned
    side = res["side_metrics"]
    assert side[0]["b1"]["locality"] == 100.0  # the base model against itself
    assert {"generalisation", "locality", "n_edits"} <= set(side[2]["b1"])
    mlp = 3 * 64 * 128  # gate, up and down projection of the last layer's MLP
    assert [c["trainable_params"] for c in res["cost"]] == [mlp, mlp]
    ed = res["editing"]
    assert ed["rows"][0] is None and ed["rows"][1]["edits"] == 2 and ed["final"]["edits"] == 4
    assert ed["final"]["reliability"] == pytest.approx((R[2][0] * 2 + R[2][1] * 2) / 4)
    assert ed["matrices"]["reliability"] == R
    from safetensors.torch import load_file

    base = build_tiny_model(build_tiny_tokenizer()).state_dict()
    for phase in (1, 2):
        weights = load_file(path / "checkpoints" / f"phase-{phase:02d}" /
                            "trainable.safetensors")
        previous = base if phase == 1 else load_file(
            path / "checkpoints" / "phase-01" / "trainable.safetensors")
        moved = {n for n, w in weights.items() if not torch.equal(w, previous[n])}
        assert moved and all(n.startswith("model.layers.1.mlp.") for n in moved), moved
        for n in moved:  # L-inf ball around the weights entering the stage (fp32 slack)
            assert (weights[n] - previous[n]).abs().max().item() <= bound + 1e-6


def test_grace_stream_end_to_end(tmp_path):
    _, res = _run(tmp_path, three_batches(tmp_path), strategies=[GRACE])
    R = res["R"]
    assert R[0] == [0.0, 0.0, 0.0]  # the tiny model predicts none of the new targets
    assert R[1][0] == 100.0 and R[2][:2] == [100.0, 100.0] and R[3] == [100.0] * 3
    side = res["side_metrics"]
    assert all(side[t][n]["locality"] == 100.0 for t in range(4) for n in ("b1", "b2", "b3"))
    assert res["editing"]["final"] == {"edits": 6, "reliability": 100.0,
                                       "generalisation": res["editing"]["final"][
                                           "generalisation"], "locality": 100.0}
    summary = format_summary(res)  # the console shows the edits-so-far table
    assert "Edits so far" in summary
    table = summary.split("Edits so far")[1].splitlines()
    assert table[3].split()[-4] == "2" and table[5].split()[-4:-2] == ["6", "100.0"]
    assert table[5].split()[-1] == "100.0"  # locality of all six edits
    metrics = res["strategy_metrics"]["grace"]
    assert metrics["codebook_size"] == 6 and metrics["layer"] == 1
    for c in res["cost"]:
        assert c["examples"] == 2 and c["steps"] >= 2 and c["buffer_size"] in (2, 4, 6)
        assert c["trainable_params"] == 2 * 64  # one value vector per edit
        assert math.isfinite(c["final_loss"])


def test_resume_after_crash_equals_uninterrupted(tmp_path, monkeypatch):
    stages = three_batches(tmp_path)
    _, full = _run(tmp_path, stages, name="full", strategies=[GRACE])
    with killed_at_phase(monkeypatch, 3):
        _run(tmp_path, stages, name="crashed", strategies=[GRACE])
    _, resumed = resume_run(tmp_path / "crashed", quiet=True)
    for key in ("R", "metrics", "side_metrics", "editing", "strategy_metrics"):
        assert resumed[key] == full[key], key
    assert [c["final_loss"] for c in resumed["cost"]] == [c["final_loss"] for c in full["cost"]]


def test_builtin_counterfactual_stream_runs_on_the_tiny_model(tmp_path):
    stage = {"builtin": "edits_counterfactual", "periods": 2,
             "builtin_options": {"edits_per_batch": 3}}
    _, res = _run(tmp_path, [stage], edit={"layers": [0]},
                  train={"steps": 3, "precision": "fp32", "max_length": 64})
    assert [s["name"] for s in res["stages"]] == ["edits_counterfactual-01",
                                                   "edits_counterfactual-02"]
    assert [s["n_test"] for s in res["stages"]] == [3, 3]
    assert res["side_metrics"][0]["edits_counterfactual-01"]["locality"] == 100.0
    assert res["editing"]["final"]["edits"] == 6


def test_wise_stream_scores_every_edit_so_far_and_resumes_exactly(tmp_path, monkeypatch):
    """WISE one edit at a time (edit.batch_size 1): after every stage all edits so far are
    scored, locality against the base model's cached predictions; a run killed in phase 3 and
    resumed (side memories and thresholds from the stage checkpoint, the locality reference
    from the run directory) ends as the uninterrupted run."""
    stages = three_batches(tmp_path)
    path, full = _run(tmp_path, stages, name="full", strategies=[WISE],
                      edit={"batch_size": 1})
    R = full["R"]
    # each batch is edited (the tiny model's prompts differ in two characters, so a later
    # side memory may outscore an earlier one on its prompt: WISE-Retrieve's weak spot)
    assert R[0] == [0.0, 0.0, 0.0] and R[1][0] == 100.0
    assert all(R[t][t - 1] >= 50.0 for t in (2, 3))
    assert [r["edits"] for r in full["editing"]["rows"][1:]] == [2, 4, 6]  # all so far
    side = full["side_metrics"]
    assert all(side[t][n]["locality"] == 100.0 for t in range(4) for n in ("b1", "b2", "b3"))
    metrics = full["strategy_metrics"]["wise"]
    assert metrics["side_memories"] == 6 and metrics["edits"] == 6 and metrics["layer"] == 1
    assert all(c["examples"] == 2 and c["steps"] >= 2 for c in full["cost"])
    assert (path / "edit_locality.json").exists()
    with killed_at_phase(monkeypatch, 3):
        _run(tmp_path, stages, name="cut", strategies=[WISE], edit={"batch_size": 1})
    cached = (tmp_path / "cut" / "edit_locality.json").read_text()
    from everlearn.evaluation import edit_scoring

    def no_recompute(self, model, st):
        raise AssertionError(f"{st.name}: the locality reference was recomputed on resume")

    monkeypatch.setattr(edit_scoring.EditScoring, "_compute_reference", no_recompute)
    _, resumed = resume_run(tmp_path / "cut", quiet=True)
    for key in ("R", "metrics", "side_metrics", "editing", "strategy_metrics"):
        assert resumed[key] == full[key], key
    assert [c["final_loss"] for c in resumed["cost"]] == [c["final_loss"] for c in full["cost"]]
    assert (tmp_path / "cut" / "edit_locality.json").read_text() == cached


def test_batch_size_is_refused_for_constrained_finetuning(tmp_path):
    from everlearn.errors import ConfigError

    with pytest.raises(ConfigError, match=r"edit\.batch_size: applies to editor strategies"):
        build_config(tiny_config(tmp_path, three_batches(tmp_path)[:1],
                                 edit={"batch_size": 1}))
    build_config(tiny_config(tmp_path, three_batches(tmp_path)[:1], edit={"batch_size": 1},
                             strategies=[GRACE]))  # an editor takes it

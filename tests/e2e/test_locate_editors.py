"""ROME, MEMIT and AlphaEdit in whole runs on the tiny model: edit stages through the runner,
the covariance cached once in the run directory with its token count in results.json, and a
run killed before its last stage and resumed equal to an uninterrupted one."""

from __future__ import annotations

import math

import pytest
from safetensors import safe_open

from everlearn.runs.runner import resume_run, start_run
from everlearn.validation import build_config
from tests.conftest import killed_at_phase, tiny_config
from tests.helpers.edit import three_batches
from tests.helpers.locate import TINY_VALUES

EDITORS = {
    "rome": {"layer": -1},
    "memit": {"layers": [0, 1], "mom2_weight": 1.0},
    # 60 corpus tokens < 128 key dimensions: a null space to edit in
    "alphaedit": {"layers": [0, 1], "covariance_tokens": 60, "null_space_threshold": 1e-9,
                  "l2": 1e-3},
}


def _run(tmp_path, name: str, out: str):
    spec = {"name": name, **TINY_VALUES, **EDITORS[name]}
    cfg = build_config(tiny_config(tmp_path, three_batches(tmp_path), strategies=[spec]))
    return start_run(cfg, tmp_path / out, quiet=True)


@pytest.mark.parametrize("name", sorted(EDITORS))
def test_editor_stream_end_to_end_and_resume(tmp_path, name, monkeypatch):
    path, full = _run(tmp_path, name, "full")
    R = full["R"]
    assert full["status"] == "complete" and R[0] == [0.0, 0.0, 0.0]
    assert R[1][0] > 0 and R[3][2] > 0  # each batch's edits took (some of them) when made
    assert full["editing"]["final"]["edits"] == 6
    assert all(math.isfinite(c["final_loss"]) for c in full["cost"])
    assert [c["examples"] for c in full["cost"]] == [2, 2, 2]
    layers = [1] if name == "rome" else [0, 1]
    assert all(c["trainable_params"] == len(layers) * 64 * 128 for c in full["cost"])
    metrics = full["strategy_metrics"][name]
    assert metrics["layers"] == layers and metrics["edits"] == 6
    files = sorted((path / "cache" / "covariance").glob("*.safetensors"))
    assert len(files) == len(layers)  # once per layer, for every stage
    for f in files:
        with safe_open(str(f), framework="pt") as fh:
            meta = fh.metadata()
        assert int(meta["count"]) == metrics["covariance_tokens"] > 0
        assert meta["corpus"] == metrics["covariance_corpus"]
    if name == "alphaedit":
        assert set(metrics["null_space_dim"]) == {"0", "1"}

    with killed_at_phase(monkeypatch, 3):
        _run(tmp_path, name, "crashed")
    _, resumed = resume_run(tmp_path / "crashed", quiet=True)
    for key in ("R", "metrics", "side_metrics", "editing", "strategy_metrics"):
        assert resumed[key] == full[key], key
    assert [c["final_loss"] for c in resumed["cost"]] == [c["final_loss"] for c in full["cost"]]

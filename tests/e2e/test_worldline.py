"""The worldline suite in runs: three periods end to end with per-split accuracy and FUAR, and a
resumed run that continues the temporal rows."""

from __future__ import annotations

import json

import pytest

from everlearn.report.tables import format_summary
from everlearn.runs.runner import start_run
from everlearn.validation import build_config
from tests.conftest import killed_at_phase, tiny_config
from tests.helpers.worldline import SMALL


def test_three_periods_end_to_end_with_fuar(tmp_path):
    stages = [{"builtin": "worldline", "periods": 3, "builtin_options": SMALL}]
    cfg = build_config(tiny_config(tmp_path, stages))
    path, res = start_run(cfg, tmp_path / "wl", quiet=True)
    assert res["status"] == "complete" and len(res["R"]) == 4
    t = res["temporal"]
    assert t["stages"] == ["worldline-01", "worldline-02", "worldline-03"]
    assert [s["stage"] for s in t["steps"]] == t["stages"]
    assert [s["rows"] for s in t["steps"]] == [[0, 1], [1, 2], [2, 3]]
    first = t["steps"][0]
    assert first["n"]["invariant"] == first["n"]["updated"] == 0 and first["n"]["new"] > 0
    assert first["forgotten"] == first["updated"] == 0.0
    for row, counts in zip(res["R"], t["rows"]):  # R is the pooled accuracy of the splits
        for j, name in enumerate(t["stages"]):
            c = counts[name]
            pooled = 100.0 * sum(v[0] for v in c.values()) / sum(v[1] for v in c.values())
            assert row[j] == pytest.approx(pooled)
    for step in t["steps"]:
        assert step["after"] == t["accuracy"][step["rows"][1]][step["stage"]]
        gained = step["updated"] + step["acquired"]
        assert step["fuar"] == ("n.d." if gained == 0 else
                                pytest.approx(step["forgotten"] / gained))
    forgotten = sum(s["forgotten"] for s in t["steps"])
    gained = sum(s["updated"] + s["acquired"] for s in t["steps"])
    assert t["fuar"] == ("n.d." if gained == 0 else pytest.approx(forgotten / gained))
    assert res["metrics"]["fuar"] == t["fuar"]
    assert json.loads((path / "results.json").read_text())["temporal"] == t
    assert "FUAR over the stream" in format_summary(res)


def test_resumed_worldline_run_continues_the_temporal_rows(tmp_path, monkeypatch):
    from everlearn.runs.runner import resume_run

    stages = [{"builtin": "worldline", "periods": 2, "builtin_options": SMALL}]
    _, full = start_run(build_config(tiny_config(tmp_path, stages)), tmp_path / "full",
                        quiet=True)
    with killed_at_phase(monkeypatch, 2):
        start_run(build_config(tiny_config(tmp_path, stages)), tmp_path / "cut", quiet=True)
    _, resumed = resume_run(tmp_path / "cut", quiet=True)
    assert resumed["temporal"] == full["temporal"]

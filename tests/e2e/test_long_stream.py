"""Long streams in runs: unscored cells stay null, resume with a schedule, and inc_lora over a
scheduled stream."""

from __future__ import annotations

import json

import pytest

from everlearn.evaluation.schedule import scored_columns
from everlearn.report.tables import format_summary
from everlearn.runs.runner import resume_run, start_run
from everlearn.validation import build_config
from tests.conftest import killed_at_phase, tiny_config
from tests.helpers.long_stream import SIX


# --- runs on the tiny model ----------------------------------------------------------------
def _config(tmp_path, overrides=None, **eval_options):
    stages = [{"builtin": "long_stream", "periods": 6,
               "builtin_options": {"train_size": 16, "test_size": 4}}]
    cfg = tiny_config(tmp_path, stages, train={"lr": 3e-3, "batch_size": 8, "steps": 3,
                                               "max_length": 48, "precision": "fp32"},
                      **(overrides or {}))
    cfg["eval"].update(eval_options)
    return build_config(cfg)


def test_scheduled_run_leaves_unscored_cells_null_and_computes_metrics(tmp_path):
    path, res = start_run(_config(tmp_path, every=3, sample_earlier=1), tmp_path / "run",
                          quiet=True)
    R = res["R"]
    expected = [scored_columns(3, 1, 0, SIX, row) for row in range(7)]
    for row, cols in enumerate(expected):
        scored = [j for j, v in enumerate(R[row]) if v is not None]
        assert scored == (list(range(6)) if cols is None else cols), row
    assert [len(c) for c in expected if c] == [2, 3, 3, 3]  # rows 1, 2, 4, 5
    on_disk = json.loads((path / "results.json").read_text())
    assert on_disk["R"] == R and None in on_disk["R"][4]  # null in results.json
    assert on_disk["eval_schedule"]["every"] == 3
    m = res["metrics"]
    assert m["ap_estimated"] == [4, 5]  # rows 4 and 5 sampled one of their earlier stages
    assert m["forgetting_lower_bound"] is True
    for key in ("final_ap", "la", "bwt", "bwt_trace", "forgetting", "fwt"):
        assert isinstance(m[key], float), key
    assert len(m["ap"]) == 6 and all(isinstance(a, float) for a in m["ap"])
    assert m["la"] == pytest.approx(sum(R[j + 1][j] for j in range(6)) / 6)
    assert m["fwt"] == pytest.approx(sum(R[j][j] - R[0][j] for j in range(1, 6)) / 5)
    assert m["ap"][3] == pytest.approx(sum(v for v in R[4][:4] if v is not None) / 2)
    assert [c["eval_time_s"] >= 0 for c in res["cost"]] == [True] * 6

    text = format_summary(res)
    assert "–" in text and "AP estimated" in text

    from everlearn.report import write_report
    from everlearn.report.compare import compare_runs, format_comparison

    html = write_report(path).read_text(encoding="utf-8")
    assert "Evaluation schedule" in html and "<td>–</td>" in html
    assert "tiny: " in format_comparison(compare_runs([path]))


def test_resume_with_a_schedule_equals_uninterrupted(tmp_path, monkeypatch):
    schedule = {"every": 4, "sample_earlier": 2}
    _, full = start_run(_config(tmp_path, **schedule), tmp_path / "full", quiet=True)
    with killed_at_phase(monkeypatch, 5):
        start_run(_config(tmp_path, **schedule), tmp_path / "crashed", quiet=True)
    partial = json.loads((tmp_path / "crashed" / "results.json").read_text())
    assert partial["status"] == "running" and len(partial["R"]) == 5
    assert partial["R"] == full["R"][:5]
    _, resumed = resume_run(tmp_path / "crashed", quiet=True)
    assert resumed["R"] == full["R"]
    assert resumed["metrics"] == full["metrics"]


def test_inc_lora_over_a_scheduled_stream_resumes_exactly(tmp_path, monkeypatch):
    # per-stage adapters: arrange / state / rebuild find every adapter's weights in one pass
    from everlearn.runs.runner import Run
    from everlearn.strategies.common.adapters import adapter_parameters, adapters_parameters

    def config():
        lora = {"strategies": ["inc_lora"],
                "model": {"name": "tiny-llama", "finetune": "lora", "lora": {"r": 2}}}
        return _config(tmp_path, lora, sample_earlier=0)

    run = Run(config(), tmp_path / "full", quiet=True)
    full = run.execute()
    names = [f"stage{i}" for i in range(1, 7)]
    grouped = adapters_parameters(run.model, names)
    assert list(grouped) == names
    assert all(grouped[n].keys() == adapter_parameters(run.model, n).keys() for n in names)
    trains = [n for n, ps in grouped.items() if any(p.requires_grad for p in ps.values())]
    assert trains == ["stage6"]  # only the newest adapter ever trains
    with killed_at_phase(monkeypatch, 4):
        start_run(config(), tmp_path / "crashed", quiet=True)
    _, resumed = resume_run(tmp_path / "crashed", quiet=True)
    assert resumed["R"] == full["R"] and resumed["metrics"] == full["metrics"]

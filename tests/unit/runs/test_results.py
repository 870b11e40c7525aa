"""everlearn.runs.results: the results.json schema, its key order, and its readers."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

from everlearn.errors import EverlearnError, ResumeError
from everlearn.runs.results import (
    Results,
    Row,
    read_for_report,
    read_for_resume,
    restored_rows,
    run_state,
    stage_entry,
    write_results,
)


def results(**sections) -> Results:
    return Results(status="running", name="n", scenario="task", strategies=["seqft"],
                   model="tiny", finetune="full", stages=[{"name": "a"}], phases=[["a"]],
                   rows=["base", "a"], R=[[1.0], [2.0]], base_eval_time_s=0.5,
                   cost=[{"phase": 1}], strategy_metrics={}, **sections)


def test_keys_keep_their_order_and_absent_sections_are_left_out():
    res = results(config={"seed": 0}, environment={"torch": "x"}, metrics={"ap": 1.0},
                  general={"general": {"agreement": {}}}, editing={"e": 1})
    assert list(res.to_dict()) == [
        "everlearn_version", "status", "name", "scenario", "strategies", "model", "finetune",
        "stages", "phases", "rows", "R", "base_eval_time_s", "cost", "strategy_metrics",
        "config", "environment", "metrics", "general", "editing"]


def test_a_recycle_run_puts_recycling_before_the_environment():
    keys = list(results(recycling={"tasks": {}}, environment={},
                        environment_history=[None]).to_dict())
    assert keys[-3:] == ["recycling", "environment", "environment_history"]


def test_json_is_indented_and_refuses_nan():
    assert results().to_json().startswith('{\n  "everlearn_version"')
    with pytest.raises(ValueError):
        results(metrics={"ap": float("nan")}).to_json()


def test_written_results_read_back_for_resume(tmp_path):
    written = write_results(tmp_path, results())
    assert read_for_resume(tmp_path) == written == json.loads((tmp_path / "results.json")
                                                             .read_text())


def test_resume_refuses_results_without_one_cost_per_row(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps({"R": [[1], [2]], "cost": []}))
    with pytest.raises(ResumeError, match="expected everlearn results with R and cost"):
        read_for_resume(tmp_path)


def test_report_reader_errors_are_one_line_of_the_given_kind(tmp_path):
    class Oops(EverlearnError):
        pass

    with pytest.raises(Oops, match="no such run directory"):
        read_for_report(tmp_path / "none", Oops)
    with pytest.raises(Oops, match="missing; not an everlearn run directory"):
        read_for_report(tmp_path, Oops)
    (tmp_path / "results.json").write_text('{"R": [[1, 2]], "stages": [{}]}')
    with pytest.raises(Oops, match="one value per stage") as err:
        read_for_report(tmp_path, Oops)
    assert "\n" not in str(err.value)


def test_run_state(tmp_path):
    assert run_state(tmp_path) == "new"
    (tmp_path / "results.json").write_text("{not json")
    assert run_state(tmp_path) == "partial"
    (tmp_path / "results.json").write_text('{"status": "complete"}')
    assert run_state(tmp_path) == "complete"


def test_restored_rows_pad_missing_per_row_sections():
    prev = {"R": [[1.0], [2.0], [3.0]], "cost": [{"phase": 1}, {"phase": 2}],
            "side_metrics": [{}, {"a": {"x": 1.0}}]}
    rows = restored_rows(prev, 2, [{}, {"g": 0.5}])
    assert rows == [Row([1.0]), Row([2.0], {"phase": 1}, side={"a": {"x": 1.0}},
                                    general={"g": 0.5})]


def test_stage_entry_has_truncated_share_only_when_given():
    stage = SimpleNamespace(name="a", kind="sft", metric="accuracy", higher_is_better=True,
                            train=[1, 2], test=[3], task_id="a")
    assert "truncated_share" not in stage_entry(stage)
    assert stage_entry(stage, {})["truncated_share"] == {}
    assert stage_entry(stage)["n_train"] == 2


def test_importing_the_schema_does_not_import_torch():
    code = "import sys, everlearn.runs.results; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"

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
    salvage_for_resume,
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
    (tmp_path / "results.json").write_text(json.dumps({"R": [[1], [2]], "cost": [],
                                                       "stages": [{"name": "a"}]}))
    with pytest.raises(ResumeError, match=r"results.json: cost\[0\]: expected the cost of "
                                          "phase 1, got nothing; restore the file") as err:
        read_for_resume(tmp_path)
    assert "\n" not in str(err.value)


def damaged(tmp_path, edit) -> tuple:
    data = results(side_metrics=[{}, {}, {}]).to_dict()
    data.update(R=[[1.0], [2.0], [3.0]], rows=["base", "a", "b"],
                cost=[{"phase": 1, "steps": 2}, {"phase": 2, "steps": 2}])
    edit(data)
    (tmp_path / "results.json").write_text(json.dumps(data))
    return salvage_for_resume(tmp_path)


@pytest.mark.parametrize(("edit", "kept", "problem"), [
    (lambda d: None, 3, None),
    (lambda d: d["R"][2].__setitem__(0, "3.0"), 2, "R[2][0]: expected a number or null, got "
                                                   "'3.0'"),
    (lambda d: d["R"][1].__setitem__(0, True), 1, "R[1][0]: expected a number or null"),
    (lambda d: d["R"].__setitem__(1, []), 1, "R[1]: expected a list of 1 score, got []"),
    (lambda d: d["cost"].pop(), 2, "cost[1]: expected the cost of phase 2, got nothing"),
    (lambda d: d["cost"].__setitem__(0, 5), 1, "cost[0]: expected the cost of phase 1, got 5"),
    (lambda d: d["cost"][1].update(steps="2"), 2, "cost[1].steps: expected an integer"),
    (lambda d: d["side_metrics"].__setitem__(2, "x"), 2, "side_metrics[2]: expected an object"),
    (lambda d: d.update(side_metrics="x"), 0, "side_metrics: expected list, got str"),
    (lambda d: d.update(stages=[{}]), 0, "stages: expected one entry with a name per stage"),
    (lambda d: d.update(phases=[["a", 1]]), 0, "phases: expected lists of stage names"),
    (lambda d: d.update(config=[]), 0, "config: expected dict, got list"),
    (lambda d: d.pop("R"), 0, "R: expected a list, got NoneType"),
])
def test_a_damaged_results_file_keeps_the_rows_before_the_damage(tmp_path, edit, kept,
                                                                 problem):
    data, found = damaged(tmp_path, edit)
    assert found == problem or found.startswith(problem)
    assert (data is None) == (kept == 0)
    if data is not None:
        assert len(data["R"]) == kept and len(data["cost"]) == kept - 1


@pytest.mark.parametrize(("text", "problem"), [("[1, 2]", "expected a JSON object, got list"),
                                               ('{"R": [[1', "not valid JSON (Expecting")])
def test_a_results_file_that_is_not_an_object_keeps_nothing(tmp_path, text, problem):
    (tmp_path / "results.json").write_text(text)
    data, found = salvage_for_resume(tmp_path)
    assert data is None and found.startswith(problem)


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

"""Edit stages (``stages.edit``): edit records, the config's kind, metric and edit section, and the
edit metrics by hand."""

from __future__ import annotations

import pytest

from everlearn.data.readers import read_source
from everlearn.errors import ConfigError, DataError
from everlearn.stages.edit import all_hit, edit_metrics, editing_section, pooled
from everlearn.stages.stream import build_stream
from everlearn.strategies import build_strategy
from everlearn.validation import build_config
from tests.conftest import write_jsonl
from tests.helpers.edit import edit_stage

SUBJECTS = ("ab", "cd", "ef", "gh", "ij", "kl")


# --- data -----------------------------------------------------------------------------------
def test_edit_records_from_easyedit_fields(tmp_path):
    path = write_jsonl(tmp_path / "e.jsonl", [
        {"case_id": 7, "prompt": "The capital of France is", "target_new": "Rome",
         "ground_truth": "Paris", "subject": "France",
         "rephrase_prompt": "France's capital city is",
         "locality_prompt": ["The capital of Spain is", "2 + 2 ="],
         "locality_ground_truth": ["Madrid", "4"]},
        {"prompt": "Danielle Darrieux's mother tongue is", "target_new": {"str": " English"}},
    ])
    first, second = read_source(str(path), "auto", "edit", {}, None, "t")
    assert (first.prompt, first.response, first.answers) == ("The capital of France is", "Rome",
                                                              ["Rome"])
    assert first.rephrase_prompt == ["France's capital city is"]
    assert first.locality_prompt == ["The capital of Spain is", "2 + 2 ="]
    assert first.locality_ground_truth == ["Madrid", "4"]
    assert first.meta == {"id": 7, "ground_truth": "Paris", "subject": "France"}
    assert second.response == "English" and second.rephrase_prompt == []
    zsre = write_jsonl(tmp_path / "z.jsonl", [{"src": "Who wrote Hamlet?", "alt": "Dickens",
                                               "loc": "nq question: who is x", "loc_ans": "y"}])
    (rec,) = read_source(str(zsre), "auto", "edit", {
        "prompt": "src", "target_new": "alt", "locality_prompt": "loc",
        "locality_ground_truth": "loc_ans"}, None, "t")
    assert (rec.prompt, rec.response, rec.locality_ground_truth) == ("Who wrote Hamlet?",
                                                                     "Dickens", ["y"])
    no_truth = write_jsonl(tmp_path / "n.jsonl", [{"prompt": "p", "target_new": "a",
                                                   "locality_prompt": ["l1", "l2"]}])
    (rec,) = read_source(str(no_truth), "auto", "edit", {}, None, "t")
    assert rec.locality_ground_truth == ["", ""]  # the base model's own continuation is used


@pytest.mark.parametrize("row, field", [
    ({"target_new": "a"}, "prompt"),
    ({"prompt": "p"}, "target_new"),
    ({"prompt": "p", "target_new": " "}, "target_new"),
    ({"prompt": "p", "target_new": {"id": "Q1"}}, "target_new"),
    ({"prompt": "p", "target_new": "a", "rephrase_prompt": [3]}, "rephrase_prompt"),
    ({"prompt": "p", "target_new": "a", "rephrase_prompt": ["ok", ""]}, "rephrase_prompt"),
    ({"prompt": "p", "target_new": "a", "locality_prompt": {"q": 1}}, "locality_prompt"),
    ({"prompt": "p", "target_new": "a", "locality_prompt": ["l1", "l2"],
      "locality_ground_truth": ["only one"]}, "locality_ground_truth"),
])
def test_reader_errors_name_file_record_and_field(tmp_path, row, field):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "ok", "target_new": "a"}, row])
    with pytest.raises(DataError) as info:
        read_source(str(path), "auto", "edit", {}, None, "t")
    assert str(info.value).startswith(f"{path}: record 1: {field}")


def test_config_kind_metric_and_edit_section(tmp_path):
    cfg = build_config({"stages": [{"builtin": "edits_counterfactual", "periods": 2}]})
    assert cfg.stages[0].kind == "edit" and cfg.edit.format == "raw"
    stage = edit_stage(tmp_path, "b1", [("ab", "x")])
    assert build_stream(build_config({"stages": [stage]})).stages[0].metric == "reliability"
    bad = [({"stages": [{**stage, "metric": "accuracy"}]}, "stages.0.metric"),
           ({"stages": [{"builtin": "cipher", "metric": "reliability"}]}, "stages.0.metric"),
           ({"stages": [stage], "edit": {"max_change": 0.1}}, "edit.max_change: bounds"),
           ({"stages": [stage], "model": {"finetune": "full"}, "edit": {"max_change": 0}},
            "edit.max_change"),
           ({"stages": [stage], "edit": {"layers": []}}, "edit.layers"),
           ({"stages": [stage], "edit": {"format": "xml"}}, "edit.format")]
    for data, where in bad:
        with pytest.raises(ConfigError, match=where):
            build_config(data)
    cfg = build_config({"stages": [stage], "strategies": [{"name": "grace", "epsilon": -1}]})
    with pytest.raises(ConfigError, match="strategies.0.options.epsilon"):
        build_strategy(cfg.strategies)


# --- metrics by hand ------------------------------------------------------------------------
def test_edit_metrics_by_hand():
    assert all_hit([5, 6], [5, 6]) and not all_hit([5, 7], [5, 6]) and not all_hit([], [])
    side = edit_metrics([True, False], [[True, False], [False]], [[True], [True, False]])
    assert side["reliability"] == 50.0
    assert side["generalisation"] == pytest.approx(100 / 3)
    assert side["locality"] == pytest.approx(200 / 3)
    assert (side["n_edits"], side["n_rephrase"], side["n_locality"]) == (2, 3, 3)
    only = edit_metrics([True], [[]], [[]])  # no paraphrases, no locality prompts
    assert only == {"reliability": 100.0, "n_edits": 1, "n_rephrase": 0, "n_locality": 0}
    # pooling weighs by the prompts each stage has: (50*2 + 100*1) / 3, (100/3*3) / 3, ...
    both = pooled([side, only])
    assert both["edits"] == 3 and both["reliability"] == pytest.approx(200 / 3)
    assert both["generalisation"] == pytest.approx(100 / 3)
    assert both["locality"] == pytest.approx(200 / 3)
    assert pooled([only])["locality"] is None

    class S:
        def __init__(self, name, kind):
            self.name, self.kind = name, kind

    stages = [S("a", "edit"), S("t", "sft"), S("b", "edit")]
    rows = [{"a": side, "b": only}, {"a": only, "b": side}, {"a": side, "b": only},
            {"a": only, "b": only}]
    sec = editing_section(stages, [["a"], ["t"], ["b"]], rows)
    assert sec["stages"] == ["a", "b"]
    assert sec["rows"][0] is None  # the base model: no edit trained yet
    assert sec["rows"][1] == pooled([only]) and sec["rows"][2] == pooled([side])  # a only
    assert sec["rows"][3] == pooled([only, only]) == sec["final"]
    assert sec["matrices"]["reliability"] == [[50.0, 100.0], [100.0, 50.0], [50.0, 100.0],
                                              [100.0, 100.0]]
    assert sec["matrices"]["locality"][0] == [pytest.approx(200 / 3), None]
    unscored = editing_section(stages, [["a"], ["t"], ["b"]], rows[:3] + [{"a": side}])
    assert unscored["rows"][3] is None  # an eval schedule skipped b: no pooled value

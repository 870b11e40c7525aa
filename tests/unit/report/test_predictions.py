"""The report's Predictions section: a link per scored cell, never a link out of the run."""

from __future__ import annotations

from everlearn.report.predictions import predictions_section


def _results(predictions):
    return {"rows": ["base", "red"], "stages": [{"name": "red"}, {"name": "b<i>"}],
            "predictions": predictions}


def test_a_link_per_scored_cell():
    html = predictions_section(_results([
        {"red": "predictions/row-00/01-red.jsonl", "b<i>": "predictions/row-00/02-b_i_.jsonl"},
        {"red": "predictions/row-01/01-red.jsonl"}]))
    assert html.count("<a href=") == 3
    assert 'href="../predictions/row-01/01-red.jsonl"' in html
    assert "<th>b&lt;i&gt;</th>" in html and "<td>red</td>" in html
    assert html.count("<td></td>") == 1  # row 1 did not score b<i>


def test_no_section_without_files_and_no_link_out_of_the_run():
    assert predictions_section({"rows": ["base"], "stages": [{"name": "red"}]}) == ""
    assert predictions_section(_results([{}, {}])) == ""
    html = predictions_section(_results([{"red": "../../etc/passwd"},
                                         {"red": "javascript:alert(1)", "b<i>": 3}]))
    assert "<a " not in html

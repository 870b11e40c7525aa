"""The registry of metrics (``evaluation.scorers``): one declaration per metric, asked by config
validation, stages, the evaluator and the report tables; torch-free, discovery included."""

from __future__ import annotations

import pytest

from everlearn.errors import ConfigError
from everlearn.evaluation.scorers import Metric, get_metric, metric_names
from everlearn.report.tables import format_matrix, short_label
from everlearn.stages import get_kind, kinds
from everlearn.stages.stream import Stage
from everlearn.validation import build_config
from tests.helpers.torch_free import assert_runs_without_heavy_imports

ALL = ["accuracy", "exact_match", "rouge_l", "strict_match", "first_char_match", "edit_similarity",
       "sari", "rouge_l_summary", "perplexity", "preference_accuracy", "reliability"]


def test_every_metric_is_declared_once_in_order():
    assert metric_names() == ALL
    for name in ALL:
        metric = get_metric(name)
        assert isinstance(metric, Metric) and metric.name == name
        assert metric.short and metric.description and callable(metric.score)
    assert [m for m in ALL if not get_metric(m).higher_is_better] == ["perplexity"]


def test_unknown_metric_is_a_one_line_config_error():
    with pytest.raises(ConfigError) as info:
        get_metric("bleu")
    assert str(info.value) == ("unknown metric 'bleu'; expected one of accuracy, exact_match, "
                               "rouge_l, strict_match, first_char_match, edit_similarity, sari, "
                               "rouge_l_summary, "
                               "perplexity, preference_accuracy, reliability")


def test_every_kind_names_registered_metrics():
    for name in kinds():
        kind = get_kind(name)
        assert set(kind.metrics) <= set(metric_names()), name
        assert kind.default_metric is None or kind.default_metric in kind.metrics


def test_config_checks_the_metric_against_the_registry():
    with pytest.raises(ConfigError) as info:
        build_config({"stages": [{"builtin": "cipher", "metric": "bleu"}]}, "s.yaml")
    assert str(info.value) == (
        "s.yaml: stages.0.metric: expected one of 'accuracy', 'exact_match', 'rouge_l', "
        "'strict_match', 'first_char_match', 'edit_similarity', 'sari', 'rouge_l_summary', "
        "'perplexity', "
        "'preference_accuracy', 'reliability', got 'bleu'")


@pytest.mark.parametrize("metric, higher", [("perplexity", False), ("exact_match", True),
                                            ("reliability", True)])
def test_stage_direction_comes_from_its_metric(metric, higher):
    assert Stage(1, "s", "sft", metric, [], []).higher_is_better is higher


def test_tables_print_the_registered_short_labels():
    results = {"stages": [{"name": "a", "metric": "exact_match"},
                          {"name": "b", "metric": "perplexity"},
                          {"name": "c", "metric": "newer_metric"}],
               "rows": ["base"], "R": [[1.0, 2.0, None]]}
    header = format_matrix(results).splitlines()[0]
    assert "a (em)" in header and "b (ppl)" in header and "c (newer_metric)" in header
    assert short_label("accuracy") == "acc" and short_label(None) == "None"


def test_discovery_imports_no_torch():
    assert_runs_without_heavy_imports(
        "from everlearn.evaluation.scorers import get_metric, metric_names\n"
        "assert [get_metric(m).short for m in metric_names()]\n"
        "import everlearn.report.tables\n")

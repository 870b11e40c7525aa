"""validation: what the registries decide is filled in, and checked, before the sections' rules."""

from __future__ import annotations

import pytest

from everlearn.errors import ConfigError
from everlearn.validation import build_config


def test_kinds_and_periods_come_from_the_registries():
    cfg = build_config({"stages": [{"builtin": "pref_concise"}, {"builtin": "cipher"},
                                   {"builtin": "worldline"}]})
    assert [s.kind for s in cfg.stages] == ["align", "sft", "cpt"]
    assert cfg.stages[2].periods == 4  # the suite's default
    assert cfg.stages[0].periods is None


@pytest.mark.parametrize("stage, message", [
    ({"builtin": "cipher", "periods": 2},
     "stages.0.periods: expected only with a built-in suite (e.g. builtin: worldline)"),
    ({"builtin": "worldline", "kind": "sft"},
     "stages.0.kind: expected 'cpt' (or nothing) for the worldline suite, got 'sft'"),
    ({"builtin": "worldline", "metric": "accuracy"},
     "stages.0.metric: expected one of 'perplexity', 'exact_match' for a cpt stage, got "
     "'accuracy'"),
])
def test_registry_errors_are_one_line(stage, message):
    with pytest.raises(ConfigError) as info:
        build_config({"stages": [stage]}, "s.yaml")
    assert str(info.value) == f"s.yaml: {message}"

"""What ROME, MEMIT and AlphaEdit share (``strategies.common.locate_editor``): bad options
are one-line errors naming the option, they need full fine-tuning, and a layer outside the
model is refused at set-up."""

from __future__ import annotations

import pytest

from everlearn.errors import ConfigError, TrainingError
from everlearn.strategies import build_strategy
from everlearn.strategies.memit import Memit
from everlearn.strategies.rome import Rome
from tests.helpers.locate import editor_on_tiny


@pytest.mark.parametrize("name, option, value, expected", [
    ("rome", "corpus", "/no/such/corpus.txt", "file not found"),
    ("rome", "corpus", " ", "expected a file path or null"),
    ("rome", "value_steps", 0, "expected an integer >= 1"),
    ("rome", "ridge", -1.0, "expected a number >= 0"),
    ("memit", "layers", [], "non-empty list"),
    ("memit", "mom2_weight", -1.0, "expected a number >= 0"),
    ("alphaedit", "null_space_threshold", 0.0, "expected a positive number"),
    ("alphaedit", "l2", -2.0, "expected a positive number"),
    ("alphaedit", "covariance_tokens", 0, "expected an integer >= 1 or null"),
])
def test_bad_options_name_the_option(name, option, value, expected):
    from everlearn.config import StrategySpec

    with pytest.raises(ConfigError, match=rf"^run.yaml: strategies.0.options.{option}: "
                                          rf".*{expected}"):
        build_strategy([StrategySpec(name=name, options={option: value})], "run.yaml")


def test_editors_need_full_fine_tuning():
    from everlearn.config import StrategySpec

    for name in ("rome", "memit", "alphaedit"):
        with pytest.raises(ConfigError, match="needs 'full'"):
            build_strategy([StrategySpec(name=name)], "run.yaml", finetune="lora")


def test_layers_outside_the_model_are_refused_and_defaults_follow_the_depth():
    with pytest.raises(TrainingError, match="rome.layer: layer 5 does not exist"):
        editor_on_tiny(Rome, layer=5)
    with pytest.raises(TrainingError, match="memit.layers: layer -3 does not exist"):
        editor_on_tiny(Memit, layers=[0, -3])
    assert editor_on_tiny(Rome)[0].layers == [0]  # round(2 / 6)
    assert editor_on_tiny(Memit, layers=[-1, 0])[0].layers == [0, 1]

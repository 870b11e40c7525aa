"""MoE-LoRA (``strategies.moe_lora``): the options it checks and what it refuses (the mixture
itself, frozen experts and the router load are tested in tests/e2e/test_lora_family.py)."""

from __future__ import annotations

import pytest

from everlearn.config import StrategySpec
from everlearn.errors import ConfigError
from everlearn.strategies import build_strategy


def test_moe_lora_options_are_checked():
    with pytest.raises(ConfigError, match=r"options\.load_examples: expected"):
        build_strategy([StrategySpec("moe_lora", {"load_examples": 0})])
    with pytest.raises(ConfigError, match=r"model\.finetune: strategy 'moe_lora' needs 'lora'"):
        build_strategy([StrategySpec("moe_lora")], finetune="full")
    (member,) = build_strategy([StrategySpec("moe_lora", {"train_old_router": True})]).members
    assert member.options.train_old_router is True and member.options.load_examples == 64

"""N-LoRA (``strategies.nlora``): the L1 penalty on B A, the collision rate, and its options."""

from __future__ import annotations

import pytest
import torch

from everlearn.config import StrategySpec
from everlearn.errors import ConfigError
from everlearn.strategies import build_strategy
from everlearn.strategies.nlora import collision_rate, l1_penalty, nonzero_mask


def test_l1_penalty_is_the_entrywise_norm_of_the_full_update():
    b1, a1 = torch.randn(5, 2), torch.randn(2, 7)
    b2, a2 = torch.randn(3, 2), torch.randn(2, 4)
    expected = (b1 @ a1).abs().sum() + (b2 @ a2).abs().sum()
    assert torch.allclose(l1_penalty([(b1, a1), (b2, a2)]), expected)
    # not the norms of the factors: a sparse product from dense factors costs little
    b, a = torch.tensor([[1.0], [0.0]]), torch.tensor([[0.0, 3.0]])
    assert l1_penalty([(b, a)]) == 3.0


def test_collision_rate_counts_entries_both_updates_touch():
    first = torch.tensor([[1.0, 0.0], [0.5, 0.0]])
    second = torch.tensor([[0.2, 0.3], [0.0, 0.0]])
    assert collision_rate(first, second, eps=0.0) == 0.25  # only [0, 0] is non-zero in both
    assert collision_rate(first, second, eps=0.25) == 0.0  # 0.2 no longer counts
    assert collision_rate(first, first, eps=0.0) == 0.5
    assert nonzero_mask(second, 0.25).tolist() == [[False, True], [False, False]]


def test_nlora_options_are_checked():
    with pytest.raises(ConfigError, match=r"options\.lambda_1: expected"):
        build_strategy([StrategySpec("nlora", {"lambda_1": -1})])
    with pytest.raises(ConfigError, match=r"options\.collision_eps: expected"):
        build_strategy([StrategySpec("nlora", {"collision_eps": -0.1})])

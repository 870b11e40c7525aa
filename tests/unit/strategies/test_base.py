"""The strategy stack (``strategies.base``): chained data and added losses."""

from __future__ import annotations

import pytest
import torch

from everlearn.strategies.base import Strategy, StrategyStack
from tests.helpers.strategies import stage_of


class _Penalty(Strategy):
    name = "penalty"

    def __init__(self, value):
        super().__init__()
        self.value = value

    def extra_loss(self, model, batch, outputs):
        return torch.tensor(self.value)

    def train_data(self, stage, records):
        return records + records[:1]


def test_stack_chains_data_and_adds_losses():
    stack = StrategyStack([_Penalty(1.5), Strategy(), _Penalty(2.0)])
    stage = stage_of(1, 4)
    assert len(stack.train_data(stage, stage.train)) == 6
    assert float(stack.extra_loss(None, {}, None)) == pytest.approx(3.5)
    assert StrategyStack([Strategy()]).extra_loss(None, {}, None) is None

"""O-LoRA (``strategies.olora``): the orthogonality loss and the subspace overlap in pure
functions, and the options it checks."""

from __future__ import annotations

import pytest
import torch

from everlearn.config import StrategySpec
from everlearn.errors import ConfigError
from everlearn.strategies import build_strategy
from everlearn.strategies.olora import orthogonality_loss, subspace_overlap


# --- pure functions ---------------------------------------------------------------------------
def test_orthogonality_loss_is_the_overlap_of_the_A_row_spaces():
    eye = torch.eye(6)
    earlier, orthogonal, shared = eye[:2], eye[2:4], eye[1:3]
    assert orthogonality_loss(earlier, orthogonal) == 0
    assert orthogonality_loss(earlier, shared) == 1  # one shared direction, unit rows
    a, b, c = torch.randn(3, 2, 6).unbind(0)
    stacked = torch.cat([a, b])  # several earlier adapters: the sum over each of them
    expected = (a @ c.T).pow(2).sum() + (b @ c.T).pow(2).sum()
    assert torch.allclose(orthogonality_loss(stacked, c), expected)
    assert torch.allclose(orthogonality_loss(stacked, c, "abs"), (stacked @ c.T).abs().sum())


def test_subspace_overlap_is_scale_free_and_bounded():
    a = torch.randn(3, 16)
    mix = torch.randn(3, 3)
    assert subspace_overlap(a, 5 * mix @ a) == pytest.approx(1.0)  # same subspace, other basis
    assert subspace_overlap(torch.eye(16)[:3], torch.eye(16)[3:6]) == pytest.approx(0.0)
    assert 0.0 <= subspace_overlap(a, torch.randn(3, 16)) <= 1.0


def test_olora_options_are_checked():
    with pytest.raises(ConfigError, match="orth_norm"):
        build_strategy([StrategySpec(name="olora", options={"orth_norm": "cubic"})])

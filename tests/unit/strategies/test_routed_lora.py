"""Routed LoRA (``strategies.routed_lora``): routing by prototype direction, in pure functions."""

from __future__ import annotations

import torch

from everlearn.strategies.routed_lora import masked_mean, nearest_prototype


def test_prototype_routing_uses_direction_not_scale():
    protos = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    features = torch.tensor([[0.1, 0.0], [30.0, 31.0], [5.0, 0.2]])
    assert nearest_prototype(features, protos).tolist() == [0, 1, 0]
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [99.0, 99.0]]])
    assert masked_mean(hidden, torch.tensor([[1, 1, 0]])).tolist() == [[2.0, 3.0]]

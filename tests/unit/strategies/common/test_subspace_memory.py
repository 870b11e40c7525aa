"""The DualGPM-style subspace memory (``strategies.common.subspace_memory``): the energy rule,
the growth after later stages, the switch to the complement, and InfLoRA's design inside it."""

from __future__ import annotations

import torch

from everlearn.strategies.common.subspace_memory import LayerSpace, first_space, update
from everlearn.strategies.inflora import designed_down_projection


def _cov(scales, dim: int = 8) -> torch.Tensor:
    """A covariance with eigenvalues ``scales`` along the first axes (the rest zero)."""
    d = torch.zeros(dim, dtype=torch.float64)
    d[: len(scales)] = torch.tensor(scales, dtype=torch.float64)
    return torch.diag(d)


def test_first_space_keeps_the_directions_carrying_the_threshold_energy():
    cov = _cov([3.0, 1.0, 0.1])  # energies (S^2): 9, 1, 0.01 -> shares .899, .0999, .001
    # the authors' count: k = #(cumulative share < threshold), at least 1
    assert first_space(cov, 0.5).basis.shape[1] == 1  # 0 below .5 -> at least 1
    assert first_space(cov, 0.95).basis.shape[1] == 1  # .899 < .95 <= .999
    space = first_space(cov, 0.9995)
    assert space.kind == "remove" and space.basis.shape[1] == 2
    assert torch.allclose(space.basis.abs(), torch.eye(8, dtype=torch.float64)[:, :2])


def test_later_stages_add_their_new_directions_and_a_big_memory_flips_to_retain():
    space = first_space(_cov([1.0]), 0.9)
    assert space.basis.shape[1] == 1
    other = torch.zeros(8, 8, dtype=torch.float64)
    other[3, 3] = 1.0  # a new stage uses axis 3 only
    grown = update(space, other, 0.9)
    protected = grown.earlier_projection()
    assert torch.allclose(torch.diagonal(protected)[[0, 3]], torch.ones(2, dtype=torch.float64))
    assert torch.allclose(protected.trace(), torch.tensor(2.0, dtype=torch.float64))
    # the same inputs again: nothing new to keep
    assert update(grown, other, 0.9).basis.shape == grown.basis.shape
    # a stage using 6 of 8 axes: more than half the space, stored as the complement
    wide = update(grown, _cov([1.0] * 6), 0.999)
    assert wide.kind == "retain" and wide.basis.shape[1] == 2
    assert torch.allclose(wide.earlier_projection().trace(), torch.tensor(6.0).double())


def test_designed_down_projection_is_orthogonal_to_the_earlier_space():
    torch.manual_seed(0)
    x = torch.randn(8, 50, dtype=torch.float64)
    cov = x @ x.T / 50
    for space in (first_space(_cov([2.0, 1.0]), 0.99),  # remove: axes 0, 1
                  LayerSpace(torch.eye(8, dtype=torch.float64)[:, 2:4], "retain")):
        a = designed_down_projection(cov, space, 2)
        assert a.shape == (2, 8)
        assert torch.allclose(a @ space.earlier_projection(), torch.zeros(2, 8).double(),
                              atol=1e-12)
        assert torch.allclose(a @ a.T, torch.eye(2).double() / 3)  # orthonormal rows / sqrt(3)

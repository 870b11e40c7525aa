"""The closed forms of ROME, MEMIT and AlphaEdit (``strategies.common.locate_edit``) on
hand-built keys: the properties each paper proves, to float tolerance."""

from __future__ import annotations

import torch

from everlearn.strategies.common.locate_edit import (
    alphaedit_update,
    memit_layers,
    memit_update,
    null_space_projector,
    regularised,
    rome_layer,
    rome_update,
)


def _spd(d: int, n: int, gen) -> torch.Tensor:
    keys = torch.randn(d, n, generator=gen, dtype=torch.float64)
    return keys @ keys.T / n


def test_rome_update_has_rank_one_and_maps_the_key_to_the_value():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(6, 10, generator=gen, dtype=torch.float64)
    cov = _spd(10, 40, gen)
    k, v = torch.randn(10, generator=gen, dtype=torch.float64), torch.randn(6, generator=gen,
                                                                             dtype=torch.float64)
    delta = rome_update(w, cov, k, v)
    assert torch.linalg.matrix_rank(delta).item() == 1
    assert torch.allclose((w + delta) @ k, v, atol=1e-10)
    # the update minimises the change on keys distributed like C: the direction is C^-1 k
    left = torch.linalg.solve(cov, k)
    assert torch.allclose(delta, torch.outer(delta @ k, left) / (left @ k), atol=1e-10)


def test_memit_update_writes_every_residual_when_lambda_is_small_and_keeps_c_when_large():
    gen = torch.Generator().manual_seed(1)
    cov = _spd(12, 60, gen)
    keys = torch.randn(12, 3, generator=gen, dtype=torch.float64)
    resid = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    small = memit_update(keys, resid, cov, 1e-8)
    assert torch.allclose(small @ keys, resid, atol=1e-6)
    large = memit_update(keys, resid, cov, 1e8)
    assert (large @ keys).abs().max() < 1e-4  # the preserved keys win: almost no change
    assert torch.allclose(small, resid @ keys.T @ torch.linalg.inv(1e-8 * cov + keys @ keys.T),
                          atol=1e-6)


def test_alphaedit_update_leaves_preserved_keys_unchanged_and_keeps_earlier_edits():
    gen = torch.Generator().manual_seed(2)
    d = 16
    basis = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))[0]
    k0 = basis[:, :6] @ torch.randn(6, 50, generator=gen, dtype=torch.float64)  # rank 6
    p, dim = null_space_projector(k0 @ k0.T / 50, 1e-8)
    assert dim == d - 6
    assert (p @ k0).abs().max() < 1e-10
    k1 = torch.randn(d, 2, generator=gen, dtype=torch.float64)
    r1 = torch.randn(4, 2, generator=gen, dtype=torch.float64)
    delta = alphaedit_update(k1, r1, p, torch.zeros(d, d, dtype=torch.float64), 1e-6)
    assert (delta @ k0).abs().max() < 1e-8  # W' K0 == W K0
    assert torch.allclose(delta @ k1, r1 @ torch.linalg.pinv(p @ k1) @ (p @ k1), atol=1e-4)
    # a later batch with K_p = k1: it moves the earlier keys' outputs far less than without
    k2 = k1 + 0.1 * torch.randn(d, 2, generator=gen, dtype=torch.float64)
    r2 = torch.randn(4, 2, generator=gen, dtype=torch.float64)
    free = alphaedit_update(k2, r2, p, torch.zeros(d, d, dtype=torch.float64), 1e-6)
    kept = alphaedit_update(k2, r2, p, k1 @ k1.T, 1e-6)
    assert (kept @ k1).norm() < 0.5 * (free @ k1).norm()
    assert (kept @ k0).abs().max() < 1e-6 * kept.norm() * k0.norm()


def test_regularised_adds_a_scaled_ridge():
    cov = torch.diag(torch.tensor([4.0, 0.0], dtype=torch.float64))
    assert torch.equal(regularised(cov, 0.0), cov)
    assert torch.allclose(regularised(cov, 0.5), torch.diag(torch.tensor([5.0, 1.0],
                                                                         dtype=torch.float64)))


def test_layer_rules_follow_the_papers_shares_of_depth():
    assert rome_layer(30) == 5 and rome_layer(32) == 5 and rome_layer(28) == 5
    assert rome_layer(2) == 0 and rome_layer(1) == 0
    assert memit_layers(32) == [4, 5, 6, 7, 8] and memit_layers(30) == [4, 5, 6, 7, 8]
    assert memit_layers(28) == [4, 5, 6, 7] and memit_layers(48) == list(range(6, 13))
    assert memit_layers(2) == [0, 1] and memit_layers(1) == [0]

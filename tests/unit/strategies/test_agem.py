"""A-GEM (``strategies.agem``): the gradient projection never conflicts with the reference."""

from __future__ import annotations

import pytest
import torch

from everlearn.strategies.agem import project, project_grads
from tests.helpers.replay_family import flat


# --- A-GEM --------------------------------------------------------------------------------
def test_agem_projection_never_conflicts_with_the_reference_gradient():
    gen = torch.Generator().manual_seed(0)
    projected = 0
    for trial in range(200):
        dim = 1 + trial % 37
        g, ref = torch.randn(dim, generator=gen), torch.randn(dim, generator=gen)
        out = project(g, ref)
        dot = float(g @ ref)
        assert float(out @ ref) >= -1e-5 * float(ref.norm() * g.norm())
        if dot >= 0:
            assert out is g  # no conflict: the gradient passes untouched
        else:
            projected += 1
            assert float(out @ ref) == pytest.approx(0.0, abs=1e-5)  # lands on the boundary
            delta = g - out  # the smallest change: along g_ref only
            assert torch.allclose(delta, (dot / float(ref @ ref)) * ref, atol=1e-5)
    assert 50 < projected < 150


def test_agem_projection_over_parameters_equals_projection_of_the_flat_vector():
    gen = torch.Generator().manual_seed(3)
    shapes = [(4, 3), (5,), (2, 2, 2)]
    for _ in range(20):
        grads = [torch.randn(s, generator=gen) for s in shapes] + [None]
        refs = [torch.randn(s, generator=gen) for s in shapes] + [torch.randn(3, generator=gen)]
        out, changed = project_grads(grads, refs)
        full_g = flat(grads[:3] + [torch.zeros(3)])
        expected = project(full_g, flat(refs))
        assert changed == (float(full_g @ flat(refs)) < 0)
        got = flat([o if o is not None else torch.zeros(3) for o in out])
        assert torch.allclose(got, expected, atol=1e-6)

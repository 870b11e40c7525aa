"""L2 (``strategies.l2``): the gradient points back to the anchor."""

from __future__ import annotations

import pytest
import torch

from everlearn.strategies.common import penalty as P
from everlearn.strategies.l2 import L2, L2Options
from tests.helpers.regularizers import loss_batch, nudge, set_up, stage_of, tiny_context


# --- L2 hooks --------------------------------------------------------------------------------
def test_l2_gradient_points_back_to_the_anchor():
    ctx = tiny_context()
    l2 = set_up(L2(L2Options(l2_lambda=3.0)), ctx)
    red = stage_of(1, "red", "alpha")
    batch, out = loss_batch(ctx, red)
    assert l2.extra_loss(ctx.model, batch, out) is None
    l2.after_stage(red)
    anchor = P.snapshot(P.trainable(ctx.model))
    nudge(ctx.model)
    params = P.trainable(ctx.model)
    ctx.model.zero_grad()
    l2.extra_loss(ctx.model, batch, out).backward()
    for n, p in params.items():
        assert torch.allclose(p.grad, 3.0 * (p.detach() - anchor[n]), atol=1e-6), n

    def dist():
        return sum(((p.detach() - anchor[n]) ** 2).sum() for n, p in params.items()).item()

    before = dist()
    with torch.no_grad():
        for p in params.values():
            p -= 0.1 * p.grad
    assert dist() == pytest.approx(before * 0.7**2, rel=1e-4)  # straight back to the anchor

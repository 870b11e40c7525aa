"""MAS (``strategies.mas``): importance summed over stages, pulled to the latest weights."""

from __future__ import annotations

import torch

from everlearn.strategies.mas import MAS, MASOptions
from tests.helpers.regularizers import loss_batch, nudge, set_up, stage_of, tiny_context


# --- MAS hooks -------------------------------------------------------------------------------
def test_mas_sums_importance_over_stages_and_pulls_to_the_latest_weights():
    ctx = tiny_context()
    mas = set_up(MAS(MASOptions(mas_samples=4)), ctx)
    red, green = stage_of(1, "red", "alpha"), stage_of(2, "green", "bravo")
    mas.after_stage(red)
    o1 = {n: t.clone() for n, t in mas.omega.items()}
    assert all((o >= 0).all() for o in o1.values()) and sum(o.sum() for o in o1.values()) > 0
    nudge(ctx.model)
    o2 = mas.importance_of(green)
    mas.after_stage(green)
    for n in o1:
        assert torch.allclose(mas.omega[n], o1[n] + o2[n])
    batch, out = loss_batch(ctx, green)
    assert mas.extra_loss(ctx.model, batch, out).item() == 0.0  # anchor = latest weights

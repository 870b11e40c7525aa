"""EWC and online EWC (``strategies.ewc``): zero at the anchor, a term per stage or one decayed
term."""

from __future__ import annotations

import pytest
import torch

from everlearn.strategies.common import penalty as P
from everlearn.strategies.ewc import EWC, EWCOptions
from tests.helpers.regularizers import loss_batch, nudge, set_up, stage_of, tiny_context


# --- EWC hooks -------------------------------------------------------------------------------
def test_ewc_penalty_is_zero_at_the_anchor_and_grows_away_from_it():
    ctx = tiny_context()
    ewc = set_up(EWC(EWCOptions(ewc_lambda=10.0, fisher_samples=4)), ctx)
    red = stage_of(1, "red", "alpha")
    batch, out = loss_batch(ctx, red)
    assert ewc.extra_loss(ctx.model, batch, out) is None  # stage 1 trains freely
    ewc.after_stage(red)
    (idx, fisher, anchor), = ewc.terms
    assert idx == 1 and set(fisher) == set(P.trainable(ctx.model))
    assert all((f >= 0).all() for f in fisher.values())
    assert sum(f.sum() for f in fisher.values()) > 0
    assert ewc.extra_loss(ctx.model, batch, out).item() == 0.0
    nudge(ctx.model)
    pen = ewc.extra_loss(ctx.model, batch, out)
    params = P.trainable(ctx.model)
    expected = 5.0 * sum((fisher[n] * (p.detach() - anchor[n]) ** 2).sum()
                         for n, p in params.items())
    assert pen.item() > 0 and pen.item() == pytest.approx(expected.item(), rel=1e-5)


def test_multi_penalty_ewc_keeps_a_term_per_stage_and_online_ewc_one_decayed_term():
    ctx = tiny_context()
    multi = set_up(EWC(EWCOptions(fisher_samples=4)), ctx)
    online = set_up(EWC(EWCOptions(fisher_samples=4, online=True, gamma=0.25)), ctx)
    red, green = stage_of(1, "red", "alpha"), stage_of(2, "green", "bravo")
    multi.after_stage(red)
    online.after_stage(red)
    first = P.snapshot(P.trainable(ctx.model))
    nudge(ctx.model)  # "training" stage 2
    multi.after_stage(green)
    online.after_stage(green)
    assert [t[0] for t in multi.terms] == [1, 2]
    (_, f1, a1), (_, f2, a2) = multi.terms
    assert all(torch.equal(a1[n], first[n]) for n in first)  # each stage keeps its own anchor
    assert any(not torch.equal(a2[n], first[n]) for n in first)
    assert len(online.terms) == 1
    _, f_online, a_online = online.terms[0]
    for n in f1:
        assert torch.allclose(f_online[n], 0.25 * f1[n] + f2[n])
        assert torch.equal(a_online[n], a2[n])  # one anchor: the latest weights
    batch, out = loss_batch(ctx, green)
    params = P.trainable(ctx.model)
    lam = multi.options.ewc_lambda
    both = lam / 2 * (P.quadratic_penalty(params, a1, f1) + P.quadratic_penalty(params, a2, f2))
    assert multi.extra_loss(ctx.model, batch, out).item() == pytest.approx(both.item())

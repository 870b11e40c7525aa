"""LwF (``strategies.lwf``): the bucket KL, and a no-op in stage one that distils the previous
model afterwards."""

from __future__ import annotations

import pytest
import torch

from everlearn.data.records import Record
from everlearn.strategies.common import penalty as P
from everlearn.strategies.lwf import LwF, LwFOptions
from tests.helpers.regularizers import loss_batch, nudge, set_up, stage_of, tiny_context


# --- LwF -------------------------------------------------------------------------------------
def test_bucket_kl_is_zero_for_the_teacher_positive_otherwise_and_below_the_full_kl():
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(7, 30, generator=g) * 3
    student = teacher + torch.randn(7, 30, generator=g)
    for T in (1.0, 2.0):
        idx, logp = P.teacher_buckets(teacher, 5, T)
        assert idx.shape == (7, 5) and logp.shape == (7, 6)
        assert torch.allclose(logp.exp().sum(-1), torch.ones(7))
        assert P.bucket_kl(logp, teacher, idx, T).abs().item() < 1e-6
        kl = P.bucket_kl(logp, student, idx, T).item()
        pt = torch.log_softmax(teacher / T, -1)
        full = (pt.exp() * (pt - torch.log_softmax(student / T, -1))).sum(-1).mean().item()
        assert 0 < kl <= full + 1e-6
    idx, logp = P.teacher_buckets(teacher, 100, 2.0)  # k capped below the vocabulary
    assert idx.shape == (7, 29)


def test_lwf_is_a_noop_in_stage_one_then_distils_the_previous_model():
    ctx = tiny_context()
    lwf = set_up(LwF(LwFOptions(top_k=8)), ctx)
    red, green = stage_of(1, "red", "alpha"), stage_of(2, "green", "bravo")
    lwf.before_stage(red)
    assert lwf.train_data(red, red.train) == red.train and not lwf.cache
    batch, out = loss_batch(ctx, red)
    assert lwf.extra_loss(ctx.model, batch, out) is None  # no teacher in stage 1
    lwf.after_stage(red)
    lwf.before_stage(green)
    assert lwf.train_data(green, green.train) == green.train
    assert len(lwf.cache) == len(green.train)
    # Student == teacher: zero, whatever the batch order and padding.
    records = [green.train[5], Record(prompt="green question 1234567", response="bravo"),
               green.train[2]]
    batch = ctx.batch(records)
    assert batch["attention_mask"].sum(-1).tolist()[0] < batch["input_ids"].shape[1]
    ctx.model.train()
    out = ctx.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert abs(lwf.extra_loss(ctx.model, batch, out).item()) < 1e-6
    # Moved weights: positive, and a gradient step on it moves back towards the teacher.
    nudge(ctx.model, 0.2)
    params = list(P.trainable(ctx.model).values())
    out = ctx.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    kl = lwf.extra_loss(ctx.model, batch, out)
    assert kl.item() > 1e-3
    # The trainer's sparse forward (logits at labelled positions only) gives the same KL.
    from everlearn.training.losses import labelled_token_loss

    sparse_batch = dict(batch)
    _, sparse_out, sparse_batch["logit_positions"] = labelled_token_loss(
        ctx.model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    assert lwf.extra_loss(ctx.model, sparse_batch, sparse_out).item() == pytest.approx(
        kl.item(), rel=1e-5)
    grads = torch.autograd.grad(kl, params)
    with torch.no_grad():
        for p, gr in zip(params, grads):
            p -= 1e-2 * gr
    out = ctx.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert lwf.extra_loss(ctx.model, batch, out).item() < kl.item()
    # An input the teacher never saw is not distilled.
    other = ctx.batch([Record(prompt="blue question 0", response="charlie")])
    out = ctx.model(input_ids=other["input_ids"], attention_mask=other["attention_mask"])
    assert lwf.extra_loss(ctx.model, other, out) is None

"""Quadratic penalties and importances (``strategies.common.penalty``): the penalty, online
Fisher decay, MAS accumulation, the empirical and sampled Fisher, a state round trip, and
options that name the field."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from everlearn.data.encode import Encoded, collate
from everlearn.errors import ConfigError
from everlearn.strategies import build_strategy
from everlearn.strategies.common import penalty as P
from everlearn.strategies.ewc import EWC, EWCOptions
from everlearn.strategies.l2 import L2, L2Options
from everlearn.strategies.mas import MAS, MASOptions
from everlearn.validation import build_config
from tests.conftest import constant_task, tiny_config
from tests.helpers.regularizers import loss_batch, nudge, set_up, stage_of, tiny_context


# --- helpers ---------------------------------------------------------------------------------
class ToyLM(nn.Module):
    """Position-wise LM: logits_t = head(tanh(emb(x_t))). ``dead`` never reaches the output,
    and embedding rows of tokens absent from the inputs get no gradient."""

    def __init__(self, vocab: int = 12, dim: int = 6):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.emb = nn.Parameter(torch.randn(vocab, dim, generator=g))
        self.head = nn.Parameter(torch.randn(vocab, dim, generator=g))
        self.dead = nn.Parameter(torch.randn(3, generator=g))

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=torch.tanh(self.emb[input_ids]) @ self.head.T)


def answer_inputs(batches) -> tuple[list[int], list[int]]:
    """(tokens read at answer positions, the other rows of the toy vocabulary)."""
    used = sorted({int(t) for b in batches
                   for t in b["input_ids"][:, :-1][b["labels"][:, 1:] != -100]})
    return used, [t for t in range(12) if t not in used]


def toy_batches(n: int = 5, used=range(1, 6)) -> list[dict]:
    """Single-example batches over the tokens ``used`` (prompt of 2, answer of 2 tokens)."""
    rng = random.Random(0)
    out = []
    for _ in range(n):
        ids = [rng.choice(list(used)) for _ in range(4)]
        out.append(collate([Encoded(ids, [-100, -100] + ids[2:])], pad_id=0))
    return out


# --- the quadratic penalty (EWC, MAS, L2) ----------------------------------------------------
def test_quadratic_penalty_is_zero_at_the_anchor_quadratic_and_weighted():
    theta = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([3.0])}
    anchor = {"a": theta["a"].clone(), "b": theta["b"].clone()}
    fisher = {"a": torch.tensor([2.0, 0.0]), "b": torch.tensor([0.5])}
    assert P.quadratic_penalty(theta, anchor, fisher).item() == 0.0
    step = {"a": torch.tensor([0.1, 0.3]), "b": torch.tensor([-0.2])}
    pen = [P.quadratic_penalty({n: theta[n] + s * step[n] for n in theta}, anchor, fisher).item()
           for s in (1.0, 2.0, 3.0)]
    assert pen[0] == pytest.approx(2.0 * 0.1**2 + 0.5 * 0.2**2)
    assert pen[1] == pytest.approx(4 * pen[0]) and pen[2] == pytest.approx(9 * pen[0])
    # A weight with zero Fisher is free: moving it changes nothing.
    free = {"a": torch.tensor([1.0, 50.0]), "b": theta["b"]}
    assert P.quadratic_penalty(free, anchor, fisher).item() == 0.0
    # Unweighted (L2) and parameters without an anchor.
    assert P.quadratic_penalty({"a": theta["a"] + 1, "c": torch.ones(4)}, anchor).item() == 2.0


def test_online_fisher_decays_the_old_fisher_by_gamma_and_mas_accumulates():
    old, new = {"w": torch.tensor([4.0, 1.0])}, {"w": torch.tensor([1.0, 0.0])}
    assert torch.allclose(P.decay_and_add(old, new, 0.5)["w"], torch.tensor([3.0, 0.5]))
    assert torch.allclose(P.decay_and_add(None, new, 0.5)["w"], new["w"])
    assert torch.allclose(P.accumulate(old, new, "sum", 2)["w"], torch.tensor([5.0, 1.0]))
    # Running mean over 3 stages when `old` already averages 2 of them.
    assert torch.allclose(P.accumulate(old, new, "average", 3)["w"],
                          torch.tensor([3.0, 2.0 / 3.0]))


# --- Fisher and MAS importance ---------------------------------------------------------------
def test_fisher_is_the_mean_of_squared_per_example_gradients_and_zero_where_unused():
    model = ToyLM()
    params = dict(model.named_parameters())
    batches = toy_batches()
    fisher = P.diag_fisher(model, params, batches, sample=False)
    # Reference: an independent per-example loop with the model's own cross-entropy.
    ref = {n: torch.zeros_like(p) for n, p in params.items()}
    grads_sum = {n: torch.zeros_like(p) for n, p in params.items()}
    for b in batches:
        logits = model(b["input_ids"]).logits[:, :-1]
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                           b["labels"][:, 1:].reshape(-1))
        model.zero_grad()
        loss.backward()
        for n, p in params.items():
            g = p.grad if p.grad is not None else torch.zeros_like(p)
            ref[n] += g**2 / len(batches)
            grads_sum[n] += g / len(batches)
    for n in params:
        assert torch.allclose(fisher[n], ref[n], atol=1e-7), n
    assert not torch.allclose(fisher["head"], grads_sum["head"] ** 2)  # per-example, not batch
    assert all((f >= 0).all() for f in fisher.values())
    # Weights the data uses carry Fisher; weights it does not use carry none.
    used, unused = answer_inputs(batches)
    assert (fisher["emb"][used].sum(-1) > 0).all()
    assert fisher["emb"][unused].abs().sum() == 0 and fisher["dead"].abs().sum() == 0


def test_sampled_fisher_is_seeded_and_nonnegative():
    model = ToyLM()
    params = dict(model.named_parameters())

    def sampled(seed):
        return P.diag_fisher(model, params, toy_batches(),
                             generator=torch.Generator().manual_seed(seed))

    a, b, c = sampled(3), sampled(3), sampled(4)
    assert all(torch.equal(a[n], b[n]) for n in params)  # same seed, same Fisher (resume)
    assert any(not torch.equal(a[n], c[n]) for n in params)  # labels really are sampled
    assert all((f >= 0).all() for f in a.values()) and a["head"].sum() > 0
    assert a["dead"].abs().sum() == 0 and a["emb"][answer_inputs(toy_batches())[1]].sum() == 0


def test_mas_importance_is_mean_abs_gradient_unsupervised_and_zero_for_unused_weights():
    model = ToyLM()
    params = dict(model.named_parameters())
    batches = toy_batches()
    omega = P.mas_importance(model, params, batches)
    ref = {n: torch.zeros_like(p) for n, p in params.items()}
    for b in batches:
        logits = model(b["input_ids"]).logits[:, :-1][b["labels"][:, 1:] != -100]
        model.zero_grad()
        logits.pow(2).sum(-1).mean().backward()
        for n, p in params.items():
            if p.grad is not None:
                ref[n] += p.grad.abs() / len(batches)
    for n in params:
        assert torch.allclose(omega[n], ref[n], atol=1e-6), n
    assert all((o >= 0).all() for o in omega.values())
    used, unused = answer_inputs(batches)
    assert omega["dead"].abs().sum() == 0 and omega["emb"][unused].abs().sum() == 0
    assert (omega["emb"][used].sum(-1) > 0).all()
    # Unsupervised: other label values at the same positions give the same importance.
    relabelled = [{**b, "labels": torch.where(b["labels"] == -100, b["labels"], 7)}
                  for b in batches]
    again = P.mas_importance(model, params, relabelled)
    assert all(torch.equal(again[n], omega[n]) for n in params)


def test_regularizer_state_round_trips_to_the_same_penalty():
    ctx = tiny_context()
    red = stage_of(1, "red", "alpha")
    made = [set_up(EWC(EWCOptions(fisher_samples=3)), ctx),
            set_up(MAS(MASOptions(mas_samples=3)), ctx), set_up(L2(L2Options()), ctx)]
    for s in made:
        s.after_stage(red)
    nudge(ctx.model)
    batch, out = loss_batch(ctx, red)
    for s in made:
        fresh = type(s)(s.options)
        fresh.load_state_dict(s.state_dict())
        want = s.extra_loss(ctx.model, batch, out)
        assert want.item() > 0
        assert torch.equal(fresh.extra_loss(ctx.model, batch, out), want), s.name


# --- options ---------------------------------------------------------------------------------
@pytest.mark.parametrize("spec, field", [
    ({"name": "ewc", "fisher": "true"}, "fisher"),
    ({"name": "ewc", "gamma": 1.5}, "gamma"),
    ({"name": "ewc", "fisher_samples": 0}, "fisher_samples"),
    ({"name": "mas", "accumulate": "max"}, "accumulate"),
    ({"name": "l2", "l2_lambda": -1}, "l2_lambda"),
    ({"name": "lwf", "temperature": 0}, "temperature"),
])
def test_invalid_options_name_the_field(tmp_path, spec, field):
    cfg = build_config(tiny_config(tmp_path, [constant_task(tmp_path, "red", "alpha")],
                                   strategies=[spec]))
    with pytest.raises(ConfigError, match=rf"strategies\.0\.options\.{field}:"):
        build_strategy(cfg.strategies)

"""Model merging (``strategies.merge``) with LoRA and full fine-tuning endpoints, on the tiny
model: the dense formula, and restarting from the base."""

from __future__ import annotations

import copy

import pytest
import torch

from everlearn.models.loading import build_tiny_model
from everlearn.strategies.common import merging as M
from everlearn.strategies.merge import Merge, MergeOptions
from tests.helpers.merge_expansion import (
    TOK,
    lora_model,
    plain_model,
    run_context,
    stage_of,
    token_ids,
)


def _train_lora(model, seed: int):
    """Stand-in for a stage's training: random adapter weights, B non-zero."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)


def _lora_taus(model) -> dict[str, torch.Tensor]:
    """The adapter's dense delta per adapted layer, by the plain model's module name."""
    return {n.removeprefix("base_model.model."): m.get_delta_weight("default")
            for n, m in model.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A}


def _plain_with(deltas: dict[str, torch.Tensor], arch: str = "llama"):
    """The base tiny model with dense ``deltas`` (in each weight's own layout, as PEFT's
    ``get_delta_weight`` gives them) added to its weights: the merged model."""
    plain = plain_model(arch)
    with torch.no_grad():
        for name, d in deltas.items():
            plain.get_submodule(name).weight += d
    return plain.eval()


def _logits(model):
    model.eval()
    with torch.no_grad():
        return model(token_ids()).logits


@pytest.mark.parametrize("method,opts", [
    ("interpolate", {"ratio": 0.0}), ("interpolate", {"ratio": 1.0}),
    ("task_arithmetic", {"scale": 1.0}), ("ties", {"density": 1.0}),
])
def test_merge_with_lora_endpoints(method, opts):
    """ratio 0 keeps the old model, ratio 1 takes the new one; task arithmetic and TIES (no
    trimming) with scale 1 over one task give the fine-tuned model; base weights stay as they
    were."""
    model = lora_model()
    base = copy.deepcopy(model.get_base_model().state_dict())
    before = _logits(model)
    strategy = Merge(MergeOptions(method=method, **opts))
    strategy.setup(run_context(model, "lora"))
    strategy.before_stage(stage_of(1))
    _train_lora(model, 0)
    trained = _logits(model)
    strategy.after_stage(stage_of(1))
    expected = before if opts.get("ratio") == 0.0 else trained
    assert torch.allclose(_logits(model), expected, atol=1e-5)
    assert not torch.allclose(before, trained, atol=1e-3)
    assert all(torch.equal(v, base[k]) for k, v in model.get_base_model().state_dict().items()
               if "lora_" not in k)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("method,opts,expect", [
    # train_from merged: D1 = r*tau1, D2 = (1-r) D1 + r (D1 + tau2) = D1 + r*tau2
    ("interpolate", {"ratio": 0.3}, lambda t1, t2: {k: 0.3 * t1[k] + 0.3 * t2[k] for k in t1}),
    # train_from base (independent task vectors): theta_0 + scale * (tau1 + tau2)
    ("task_arithmetic", {"scale": 0.6}, lambda t1, t2: {k: 0.6 * (t1[k] + t2[k]) for k in t1}),
    # TIES over the dense deltas of all layers, trimmed over the whole task vector
    ("ties", {"density": 0.3, "scale": 0.8}, lambda t1, t2: M.ties(None, [t1, t2], 0.3, 0.8)),
])
def test_merge_with_lora_two_stages_equals_the_dense_formula(method, opts, expect, arch):
    model = lora_model(arch)
    strategy = Merge(MergeOptions(method=method, **opts))
    strategy.setup(run_context(model, "lora"))
    taus = []
    for index in (1, 2):
        strategy.before_stage(stage_of(index))
        assert all(float(p.detach().abs().sum()) == 0 for n, p in model.named_parameters()
                   if "lora_B" in n)  # each stage trains a fresh adapter
        _train_lora(model, index)
        taus.append(_lora_taus(model))
        strategy.after_stage(stage_of(index))
    reference = _plain_with(expect(*taus), arch)
    assert torch.allclose(_logits(model), _logits(reference), atol=1e-5)

    # Resume: a fresh model and strategy restored from the state (then the stage-2 adapter the
    # checkpoint holds) computes the same function.
    adapter = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    state = strategy.state_dict()
    again_model = lora_model(arch)
    again = Merge(MergeOptions(method=method, **opts))
    again.setup(run_context(again_model, "lora"))
    again.load_state_dict(state)
    params = dict(again_model.named_parameters())
    with torch.no_grad():
        for n, t in adapter.items():
            params[n].copy_(t)
    assert torch.equal(_logits(again_model), _logits(model))


@pytest.mark.parametrize("arch,targets", [
    ("llama", "all-linear"), ("gpt2", "all-linear"),
    ("gpt2", ["attn.c_proj"]),  # square Conv1D: a transposed delta fits, and is wrong
])
@pytest.mark.parametrize("method,opts,factor", [
    ("interpolate", {"ratio": 1.0}, 1.0), ("interpolate", {"ratio": 0.4}, 0.4),
    ("task_arithmetic", {"scale": 0.7}, 0.7), ("ties", {"density": 1.0, "scale": 0.5}, 0.5),
])
def test_merge_with_lora_one_stage_on_every_linear(arch, targets, method, opts, factor):
    """One stage, LoRA on all-linear (GPT-2's Conv1D layers included): the merged model is the
    base plus ``factor`` times PEFT's own delta, both with the stage's adapter in place and on
    its own before the next stage; at ratio 1 it is the PEFT model with the adapter active."""
    model = lora_model(arch, targets)
    strategy = Merge(MergeOptions(method=method, **opts))
    strategy.setup(run_context(model, "lora"))
    strategy.before_stage(stage_of(1))
    _train_lora(model, 3)
    trained = _logits(model)
    taus = _lora_taus(model)
    strategy.after_stage(stage_of(1))
    reference = _logits(_plain_with({k: factor * v for k, v in taus.items()}, arch))
    assert torch.allclose(_logits(model), reference, atol=1e-5)
    if factor == 1.0:
        assert torch.allclose(_logits(model), trained, atol=1e-5)
    strategy.before_stage(stage_of(2))  # fresh adapter (B = 0): what remains is the merge
    if strategy.options.start == "merged":
        assert torch.allclose(_logits(model), reference, atol=1e-5)


def test_merge_full_finetuning_interpolates_and_restarts_from_the_base():
    model = build_tiny_model(TOK)
    theta0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    strategy = Merge(MergeOptions(method="interpolate", ratio=0.25))
    strategy.setup(run_context(model, "full"))
    strategy.before_stage(stage_of(1))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)
    strategy.after_stage(stage_of(1))
    for n, p in model.named_parameters():
        assert torch.allclose(p, theta0[n] + 0.025, atol=1e-6)

    ties = Merge(MergeOptions(method="ties", density=1.0))  # train_from auto -> base
    model = build_tiny_model(TOK)
    ties.setup(run_context(model, "full"))
    for index, step in ((1, 0.1), (2, -0.3)):
        ties.before_stage(stage_of(index))
        for n, p in model.named_parameters():  # every stage starts from theta_0
            assert torch.equal(p, theta0[n])
        with torch.no_grad():
            for p in model.parameters():
                p.add_(step)
        ties.after_stage(stage_of(index))
    for n, p in model.named_parameters():  # elected sign -: the disjoint mean keeps tau_2 only
        assert torch.allclose(p, theta0[n] - 0.3, atol=1e-6)
    assert set(ties.state_dict()["tensors"]) >= {"1/model.embed_tokens.weight/idx",
                                              "2/model.embed_tokens.weight/val"}

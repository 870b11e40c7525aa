"""Stacked LoRA (``strategies.common.stacked_lora``): one pass per layer computes the same sum of
frozen adapters plus a trainable one as PEFT's adapter-by-adapter forward."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model

from everlearn.models.loading import build_tiny_model, build_tiny_tokenizer
from everlearn.strategies.common.adapters import arrange
from everlearn.strategies.common.stacked_lora import stacked


def _three_adapters(dropout: float = 0.0):
    torch.manual_seed(0)
    model = build_tiny_model(build_tiny_tokenizer())
    cfg = dict(r=4, lora_alpha=8, lora_dropout=dropout, target_modules="all-linear")
    model = get_peft_model(model, LoraConfig(**cfg), adapter_name="stage1")
    model.add_adapter("stage2", LoraConfig(**{**cfg, "lora_alpha": 4}))  # another scaling
    model.add_adapter("stage3", LoraConfig(**cfg))
    with torch.no_grad():  # LoRA's B starts at zero: give every adapter a visible delta
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)
    arrange(model, ["stage1", "stage2", "stage3"], ["stage3"])
    return model.train()


def _loss_and_grads(model, ids):
    model.zero_grad()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                           if p.requires_grad}


def test_stacked_forward_and_gradients_equal_peft():
    model = _three_adapters()
    ids = torch.randint(0, model.config.vocab_size, (2, 12))
    loss, grads = _loss_and_grads(model, ids)
    with stacked(model, ["stage1", "stage2"], "stage3") as swapped:
        assert swapped > 0
        s_loss, s_grads = _loss_and_grads(model, ids)
    assert torch.allclose(loss, s_loss, atol=1e-6)
    assert grads.keys() == s_grads.keys() and all("stage3" in n for n in grads)
    for name in grads:
        assert torch.allclose(grads[name], s_grads[name], atol=1e-6), name
    after, _ = _loss_and_grads(model, ids)  # PEFT's forward is back
    assert torch.equal(after, loss)
    assert not any("forward" in vars(m) for m in model.modules())


def test_stacked_layers_fall_back_when_adapters_are_disabled_or_changed():
    model = _three_adapters()
    ids = torch.randint(0, model.config.vocab_size, (1, 10))
    with torch.no_grad():
        with model.disable_adapter():
            base = model(input_ids=ids).logits
        model.base_model.set_adapter(["stage1"])
        only_first = model(input_ids=ids).logits
        model.base_model.set_adapter(["stage1", "stage2", "stage3"])
        with stacked(model, ["stage1", "stage2"], "stage3"):
            with model.disable_adapter():
                assert torch.allclose(model(input_ids=ids).logits, base, atol=1e-6)
            model.base_model.set_adapter(["stage1"])
            assert torch.allclose(model(input_ids=ids).logits, only_first, atol=1e-6)


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_stacked_lora_trains_only_the_new_adapter(dropout):
    model = _three_adapters(dropout)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    new = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    ids = torch.randint(0, model.config.vocab_size, (2, 12))
    with stacked(model, ["stage1", "stage2"], "stage3"):
        for _ in range(2):
            opt.zero_grad()
            model(input_ids=ids, labels=ids).loss.backward()
            opt.step()
    params = dict(model.named_parameters())
    assert all(torch.equal(params[n], v) for n, v in frozen.items())
    assert any(not torch.equal(params[n], v) for n, v in new.items())

"""train.gradient_checkpointing: the layers really recompute in the backward pass, the gradients
are those of a step that keeps its activations, and it is off again outside training."""

from __future__ import annotations

import pytest
import torch

from everlearn.config import ModelConfig
from everlearn.errors import ConfigError
from everlearn.models.loading import build_tiny_model, build_tiny_tokenizer, make_trainable
from everlearn.training.recomputation import check_supported, recomputed_activations


def _lora_model():
    tok = build_tiny_tokenizer()
    cfg = ModelConfig(finetune="lora")
    cfg.lora.dropout = 0.2  # recomputation must draw the same dropout masks
    model = make_trainable(build_tiny_model(tok, seed=3), cfg)
    for n, p in model.named_parameters():  # non-zero B: the adapters take part
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.05, generator=torch.Generator().manual_seed(2))
    return model


def _step(model, calls: list) -> dict[str, torch.Tensor]:
    """One training step's LoRA gradients."""
    model.zero_grad()
    ids = torch.randint(5, 200, (2, 12), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(7)
    model(input_ids=ids, labels=ids).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_recomputed_step_runs_each_layer_twice_with_the_same_gradients():
    model = _lora_model()
    model.train()
    calls: list[int] = []
    inner = model.get_base_model().model.layers[0].self_attn.q_proj  # inside a layer
    inner.register_forward_hook(lambda *a: calls.append(1))
    kept = _step(model, calls)
    assert len(calls) == 1
    with recomputed_activations(model, True):
        recomputed = _step(model, calls)
    assert len(calls) == 3  # forward, then the backward pass's recomputation
    assert kept.keys() == recomputed.keys()
    for name, grad in kept.items():
        assert grad.abs().sum() > 0, name
        assert torch.allclose(grad, recomputed[name], atol=1e-7, rtol=1e-6), name
    _step(model, calls)  # off again after the block
    assert len(calls) == 4
    base = model.get_base_model()
    assert not base.is_activation_checkpointing
    assert not hasattr(base, "_require_grads_hook")  # the embeddings' hook is gone too


def test_disabled_changes_nothing_and_unsupported_models_are_refused():
    model = _lora_model()
    with recomputed_activations(model, False):
        base = model.get_base_model()
    assert not base.is_activation_checkpointing
    assert not hasattr(base, "_require_grads_hook")  # the embeddings' hook is gone too
    with pytest.raises(ConfigError, match=r"^run\.yaml: train\.gradient_checkpointing: Linear "
                                          r"does not support"):
        check_supported(torch.nn.Linear(2, 2), "run.yaml")
    check_supported(model, "run.yaml")  # Llama does

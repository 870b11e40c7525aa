"""The sparse-logit training loss equals the model's own loss, value and gradient."""

from __future__ import annotations

import torch

from everlearn.config import ModelConfig
from everlearn.data.encode import IGNORE
from everlearn.models.loading import build_tiny_model, build_tiny_tokenizer, make_trainable
from everlearn.training.losses import labelled_token_loss, supports_logits_to_keep


def test_labelled_token_loss_equals_the_models_loss_and_gradient():
    tok = build_tiny_tokenizer()
    model = make_trainable(build_tiny_model(tok, seed=1), ModelConfig(finetune="lora"))
    assert supports_logits_to_keep(model)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 200, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[2, 9:] = 0  # a right-padded row
    labels = torch.full_like(ids, IGNORE)
    labels[0, 8:] = ids[0, 8:]  # answers at different places in each row
    labels[1, 5:7] = ids[1, 5:7]
    labels[2, 6:9] = ids[2, 6:9]

    def grads():
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    ours, out, kept = labelled_token_loss(model, ids, mask, labels)
    ours.backward()
    g_ours = grads()
    model.zero_grad()
    theirs = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    theirs.backward()
    g_theirs = grads()
    assert torch.allclose(ours, theirs, atol=1e-6)
    assert out.logits.shape[1] == len(kept) < ids.shape[1] - 1  # the head ran on fewer
    assert kept.tolist() == list(range(4, 11))  # positions whose next token is labelled
    for name, grad in g_ours.items():
        assert torch.allclose(grad, g_theirs[name], atol=1e-6), name


def test_frozen_linears_in_bf16_give_the_same_logits_under_autocast():
    import copy

    from everlearn.models.loading import store_frozen_linears_in_bf16

    tok = build_tiny_tokenizer()
    model = make_trainable(build_tiny_model(tok, seed=4), ModelConfig(finetune="lora"))
    for n, p in model.named_parameters():  # non-zero LoRA B so the adapters take part
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.05, generator=torch.Generator().manual_seed(1))
    stored = copy.deepcopy(model)
    assert store_frozen_linears_in_bf16(stored) > 0
    dtypes = {n: p.dtype for n, p in stored.named_parameters()}
    assert all(d == torch.float32 for n, d in dtypes.items() if "lora_" in n or "embed" in n)
    assert any(d == torch.bfloat16 for d in dtypes.values())
    ids = torch.randint(5, 200, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        want, got = model(input_ids=ids).logits, stored(input_ids=ids).logits
    assert torch.equal(want, got)
    with torch.no_grad():  # outside autocast the inputs are cast, nothing breaks
        assert torch.isfinite(stored(input_ids=ids).logits).all()

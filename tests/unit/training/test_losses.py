"""The sparse-logit training loss equals the model's own loss, value and gradient."""

from __future__ import annotations

import torch

from everlearn.config import LoraConfig, ModelConfig
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


def _head_batch(head: int = 20):
    """3 right-padded rows opening with the same ``head`` tokens, answers after it."""
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(5, 200, (3, head + 10), generator=g)
    ids[1:, :head] = ids[0, :head]
    mask = torch.ones_like(ids)
    mask[2, head + 6:] = 0
    labels = torch.full_like(ids, IGNORE)
    labels[0, head + 4:] = ids[0, head + 4:]
    labels[1, head + 2:head + 5] = ids[1, head + 2:head + 5]
    labels[2, head + 3:head + 6] = ids[2, head + 3:head + 6]
    return ids, mask, labels


def _spy(shapes: list):
    def spy(module, args, out):
        shapes.append(tuple(args[0].shape))

    spy.token_local = True  # so it leaves the shared head on
    return spy


def test_a_shared_prompt_head_runs_once_with_the_models_loss_and_gradient():
    """Rows opening with the same 20 tokens: the head runs once (batch 1), the rows' rest on its
    repeated cache; loss and LoRA gradients equal the model's own on the whole batch."""
    from everlearn.training.losses import shared_head

    tok = build_tiny_tokenizer()
    model = make_trainable(build_tiny_model(tok, seed=1), ModelConfig(finetune="lora"))
    for n, p in model.named_parameters():  # B != 0, so the LoRA path carries gradient to A
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.05)
    ids, mask, labels = _head_batch()
    keep = (labels[:, 1:] != IGNORE).any(dim=0).nonzero().squeeze(-1)
    assert shared_head(ids, mask, keep) == 20
    shapes: list = []
    handle = model.get_base_model().model.embed_tokens.register_forward_hook(_spy(shapes))
    ours, _, _ = labelled_token_loss(model, ids, mask, labels)
    handle.remove()
    assert shapes == [(1, 20), (3, 10)]
    ours.backward()
    g_ours = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    theirs = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    theirs.backward()
    assert torch.allclose(ours, theirs, atol=1e-5)
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert torch.allclose(g_ours[n], p.grad, atol=1e-5), n


def test_dropout_or_a_whole_input_hook_keeps_the_whole_batch_pass():
    """LoRA dropout would draw one mask for every row's head, and a hook that is not
    token-local may look at the whole input: either keeps one pass over the whole batch."""
    tok = build_tiny_tokenizer()
    ids, mask, labels = _head_batch()
    dropped = make_trainable(build_tiny_model(tok, seed=1),
                             ModelConfig(finetune="lora", lora=LoraConfig(dropout=0.1))).train()
    plain = make_trainable(build_tiny_model(tok, seed=1), ModelConfig(finetune="lora"))
    layer = plain.get_base_model().model.layers[0]
    hook = layer.register_forward_pre_hook(lambda module, args: None)
    for model in (dropped, plain):
        shapes: list = []
        spy = model.get_base_model().model.embed_tokens.register_forward_hook(_spy(shapes))
        labelled_token_loss(model, ids, mask, labels)
        spy.remove()
        assert shapes == [(3, 30)]
    hook.remove()

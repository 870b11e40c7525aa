"""everlearn_sdpa: SDPA that takes the mixed q/k/v dtypes of CPU bf16 autocast."""

from __future__ import annotations

import torch

from everlearn.models.attention import NAME, use_one_dtype_sdpa
from everlearn.models.loading import build_tiny_model, build_tiny_tokenizer

TOK = build_tiny_tokenizer()


def _inputs():
    ids = torch.randint(5, 200, (2, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, :5] = 0  # left padding: the mask must still be causal and hide the pads
    return ids, mask


def test_everlearn_models_use_it_and_give_the_logits_of_plain_sdpa():
    model = build_tiny_model(TOK, seed=3)
    assert model.config._attn_implementation == NAME
    ids, mask = _inputs()
    with torch.no_grad():
        ours = model(input_ids=ids, attention_mask=mask).logits
        model.set_attn_implementation("sdpa")
        plain = model(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(ours, plain, atol=1e-6)
    # causal: the first real token's logits do not depend on what follows it
    with torch.no_grad():
        model.set_attn_implementation(NAME)
        cut = model(input_ids=ids[:, :8], attention_mask=mask[:, :8]).logits
    assert torch.allclose(cut[1], ours[1, :8], atol=1e-5)


def test_bf16_autocast_runs_with_and_without_the_kv_cache():
    model = build_tiny_model(TOK, seed=3)
    ids, mask = _inputs()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        cached = model(input_ids=ids, attention_mask=mask, use_cache=True).logits
        uncached = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    assert torch.isfinite(cached).all() and torch.equal(cached, uncached)


def test_other_attention_implementations_are_left_alone():
    model = build_tiny_model(TOK, seed=3)
    model.set_attn_implementation("eager")
    assert use_one_dtype_sdpa(model).config._attn_implementation == "eager"

"""SDPA that accepts the mixed dtypes CPU autocast produces.

Under ``torch.autocast("cpu", bfloat16)`` the q/k/v projections come out in bf16, but Llama-style
rotary embeddings multiply q and k by fp32 ``cos``/``sin`` (built in the hidden states' dtype), so
q and k are fp32 while v stays bf16. CUDA autocast casts the inputs of
``scaled_dot_product_attention`` itself; CPU autocast does not, and the kernel refuses mixed
dtypes. transformers up to 5.23 hid this by accident (its KV cache concatenated bf16 values onto
an fp32 buffer, so v came back fp32); 5.24 keeps v in bf16 and every bf16 run on a CPU crashed.

``everlearn_sdpa`` is transformers' own SDPA attention with q, k and v brought to one dtype first:
the widest of the three, which is what the cache did before, so results equal those of 5.23.
It is registered through transformers' ``AttentionInterface`` and switched on only for models
that use plain ``sdpa``; eager and flash attention are left alone.
"""

from __future__ import annotations

import torch

NAME = "everlearn_sdpa"


def sdpa_one_dtype(module, query, key, value, attention_mask, **kwargs):
    """transformers' ``sdpa_attention_forward`` after casting q, k, v to their widest dtype."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if not query.dtype == key.dtype == value.dtype:
        dtype = torch.promote_types(torch.promote_types(query.dtype, key.dtype), value.dtype)
        query, key, value = query.to(dtype), key.to(dtype), value.to(dtype)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def _register() -> None:
    """Register the attention function, and SDPA's own mask builder under the same name (an
    unknown name gets the raw 2-D padding mask, which SDPA would read as no causal mask)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, sdpa_one_dtype)
    AttentionMaskInterface.register(NAME, sdpa_mask)


def use_one_dtype_sdpa(model):
    """Switch ``model`` (and its sub-models) from ``sdpa`` to :data:`NAME`; returns the model.

    Models on another attention implementation, or that cannot switch it, are returned as
    they are."""
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) != "sdpa" or not hasattr(
            model, "set_attn_implementation"):
        return model
    _register()
    model.set_attn_implementation(NAME)
    return model

"""The next-token loss on labelled tokens, with the LM head applied only where it is needed.

In an instruction stage most positions are prompt: their logits (batch x length x vocab, the
largest tensor of a step) are computed, soft-maxed and thrown away by the model's own loss. The
model's ``logits_to_keep`` argument (transformers' causal LMs) restricts the head to chosen
positions; here they are the positions whose next token is labelled in any row of the batch, and
the mean cross-entropy over labelled tokens is the model's own loss on those logits.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F

from everlearn.data.encode import IGNORE
from everlearn.models.wrapped import hf_model


def supports_logits_to_keep(model) -> bool:
    """Whether the (PEFT-wrapped or plain) causal LM's forward takes ``logits_to_keep``."""
    base = hf_model(model)
    try:
        return "logits_to_keep" in inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return False


def labelled_token_loss(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        labels: torch.Tensor, **inputs):
    """(mean cross-entropy over labelled next tokens, the model output, the kept positions).

    ``outputs.logits[:, k]`` holds the logits of position ``kept[k]``: the positions ``t`` whose
    next token ``labels[:, t + 1]`` is labelled in some row of the batch. ``inputs`` go to the
    model as they are (a vision-language model's ``pixel_values``).
    """
    target = labels[:, 1:]
    keep = (target != IGNORE).any(dim=0).nonzero().squeeze(-1)
    outputs = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=keep,
                    use_cache=False, **inputs)
    logits = outputs.logits.float()
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target[:, keep].reshape(-1),
                           ignore_index=IGNORE)
    return loss, outputs, keep

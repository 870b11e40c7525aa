"""The next-token loss on labelled tokens, with the LM head applied only where it is needed.

In an instruction stage most positions are prompt: their logits (batch x length x vocab, the
largest tensor of a step) are computed, soft-maxed and thrown away by the model's own loss. The
model's ``logits_to_keep`` argument (transformers' causal LMs) restricts the head to chosen
positions; here they are the positions whose next token is labelled in any row of the batch, and
the mean cross-entropy over labelled tokens is the model's own loss on those logits.

When every row of the batch opens with the same head of prompt tokens (one task's chat turn and
instruction) and nothing makes that inexact (:func:`head_shareable`), the head runs once, its
cache repeated for every row, and the rows' rest on top of it: the same loss and gradients up to
float rounding (autograd sums the rows' gradients through the repeated head), for the head's
share of the tokens' compute (:mod:`everlearn.models.prompt_head`).
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F

from everlearn.data.encode import IGNORE
from everlearn.models.kvcache import cache_kwarg, cache_of
from everlearn.models.prompt_head import MIN_SHARED_HEAD, prefix_shareable
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
    head = shared_head(input_ids, attention_mask, keep)
    if head >= MIN_SHARED_HEAD and head_shareable(model, inputs):
        outputs = _with_shared_head(model, input_ids, attention_mask, keep, head)
    else:
        outputs = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=keep,
                        use_cache=False, **inputs)
    logits = outputs.logits.float()
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target[:, keep].reshape(-1),
                           ignore_index=IGNORE)
    return loss, outputs, keep


def shared_head(input_ids: torch.Tensor, attention_mask: torch.Tensor, keep: torch.Tensor) -> int:
    """How many leading columns every row of a (right-padded) batch has alike and unmasked,
    ending before the first position whose logits are kept (those are computed with the
    rest); 0 for a single row."""
    if input_ids.shape[0] < 2 or len(keep) == 0:
        return 0
    alike = (input_ids == input_ids[:1]).all(0) & attention_mask.bool().all(0)
    differ = (~alike).nonzero()
    head = int(differ[0]) if len(differ) else input_ids.shape[1]
    return min(head, int(keep.min()))


def head_shareable(model, inputs: dict) -> bool:
    """Whether running the head once is exact up to rounding: a token-by-token model
    (:func:`~everlearn.models.prompt_head.prefix_shareable`), no dropout that would draw one
    mask for the head of every row, no recomputed activations (transformers turns the cache
    off under gradient checkpointing), one process (DDP expects one forward per backward) and
    no extra inputs (a vision-language model's pixels sit in the prompt)."""
    if inputs or (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return False
    if getattr(hf_model(model), "is_gradient_checkpointing", False):
        return False
    if any(isinstance(m, torch.nn.Dropout) and m.training and m.p > 0 for m in model.modules()):
        return False
    return prefix_shareable(model)


def _with_shared_head(model, input_ids, attention_mask, keep, head: int):
    """The batch's forward with its first ``head`` columns run once (see the module)."""
    cached = cache_of(model(input_ids=input_ids[:1, :head], use_cache=True, logits_to_keep=1))
    cached.batch_repeat_interleave(input_ids.shape[0])
    positions = torch.arange(head, input_ids.shape[1], device=input_ids.device)
    return model(input_ids=input_ids[:, head:], attention_mask=attention_mask,
                 position_ids=positions.expand(input_ids.shape[0], -1), logits_to_keep=keep - head,
                 use_cache=True, **{cache_kwarg(model): cached})

"""Log-likelihood of several answer options after one shared prompt, with one prompt pass.

Scoring a label task by options is the evaluation a CL run repeats most: every stage's test set
after every stage. Scored as separate sequences, a prompt of P tokens with K options costs K
forward passes over P tokens, and the logits of every prompt position are computed only to be
thrown away. Here the prompts of a batch run once (left-padded, KV cache kept, logits of the last
position only), then each option's tokens run on top of the cache, which is cropped back to the
prompt before the next option. transformers' ``generate`` relies on the same cache operations
(``DynamicCache.crop``), which is what keeps this portable across causal LMs.

The prompts of a test set usually open alike (the chat template's system turn, the task's
instruction: half of a short classification prompt). When the prompts of a batch share such a
head and the model computes each token from the tokens before it only (no soft prompt, no hook
that looks at the whole input: :func:`prefix_shareable`), the head runs once for the batch and
its cache is repeated for every row; each row's rest runs on top of it, padded on the left of
the rest (between the head and it, masked out, positions counted on from the head), so a row
sees the same tokens at the same positions as before.

The result per option equals the summed log-probability of the option's tokens after the prompt,
as the separate-sequence scorer gives (``EvaluatorBase._sequence_logprobs``), up to float
rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from everlearn.data.encode import Encoded, collate, image_inputs, stack_pixels
from everlearn.models.kvcache import cache_kwarg, cache_of
from everlearn.models.prompt_head import MIN_SHARED_HEAD, prefix_shareable, shared_head_length


@dataclass
class OptionItem:
    """One record to score: its prompt and the token ids of each option (each non-empty)."""

    prompt: list[int]
    options: list[list[int]]
    pixels: dict[str, torch.Tensor] | None = None  # an image record: its processor tensors


def _padded(rows: list[list[int]], pad_id: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    batch = collate([Encoded(r, r) for r in rows], pad_id, left=left)
    return batch["input_ids"], batch["attention_mask"]


def _prompt_pass(model, items: list[OptionItem], pad_id: int, device, autocast, extra: dict):
    """The prompts' forward pass: (its output, the attention mask over everything cached).
    With a shared head (see the module docstring), the head first, once, then the rests."""
    prompts = [it.prompt for it in items]
    head = (shared_head_length(prompts)
            if len(items) > 1 and not extra and prefix_shareable(model) else 0)
    if head < MIN_SHARED_HEAD:
        ids, mask = _padded(prompts, pad_id, left=True)
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with autocast():
            out = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                        use_cache=True, logits_to_keep=1, **extra)
        return out, mask
    head_ids = torch.tensor([prompts[0][:head]], device=device)
    with autocast():
        cached = cache_of(model(input_ids=head_ids, use_cache=True, logits_to_keep=1))
    cached.batch_repeat_interleave(len(items))
    ids, rest_mask = _padded([p[head:] for p in prompts], pad_id, left=True)
    ids, rest_mask = ids.to(device), rest_mask.to(device)
    mask = torch.cat([torch.ones(len(items), head, dtype=rest_mask.dtype, device=device),
                      rest_mask], -1)
    positions = head + (rest_mask.cumsum(-1) - 1).clamp(min=0)
    with autocast():
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                    logits_to_keep=1, **{cache_kwarg(model): cached})
    return out, mask


@torch.no_grad()
def score_options(model, items: list[OptionItem], pad_id: int, device, autocast) -> list[
        list[tuple[float, int]]]:
    """Per item, per option: (summed log-probability of the option's tokens, token count).

    All items of one call must have the same number of options (callers group by it). Image
    items (a LLaVA-family model) pass their pixels with the prompts: the image tokens sit in the
    prompt, so the cache holds them and the options run on it without pixels.
    """
    n_opt = len(items[0].options)
    assert all(len(it.options) == n_opt for it in items), "group items by option count"
    pixels = [it.pixels for it in items if it.pixels is not None]
    extra = {k: v.to(device) for k, v in image_inputs(stack_pixels(pixels)).items()}
    out, mask = _prompt_pass(model, items, pad_id, device, autocast, extra)
    first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
    cache, cache_arg = cache_of(out), cache_kwarg(model)
    prompt_width = cache.get_seq_length()  # what the model cached (a soft prompt adds to it)
    lengths = mask.sum(-1)
    results: list[list[tuple[float, int]]] = [[] for _ in items]
    for k in range(n_opt):
        opts = [it.options[k] for it in items]
        scores = [float(first[b, o[0]]) for b, o in enumerate(opts)]
        rest = max(len(o) for o in opts) - 1
        if rest > 0:  # tokens 2..m of each option, predicted from tokens 1..m-1 on the cache
            feed, feed_mask = _padded([o[:-1] for o in opts], pad_id, left=False)
            feed, feed_mask = feed.to(device), feed_mask.to(device)
            pos = lengths[:, None] + torch.arange(rest, device=device)[None, :]
            with autocast():
                logits = model(input_ids=feed, attention_mask=torch.cat([mask, feed_mask], -1),
                               position_ids=pos, use_cache=True, **{cache_arg: cache}).logits
            logp = torch.log_softmax(logits.float(), dim=-1)
            for b, o in enumerate(opts):
                if len(o) > 1:
                    target = torch.tensor(o[1:], device=device)
                    scores[b] += float(logp[b, :len(o) - 1].gather(-1, target[:, None]).sum())
            cache.crop(-(cache.get_seq_length() - prompt_width))  # negative: drop n tokens
        for b, o in enumerate(opts):
            results[b].append((scores[b], len(o)))
    return results

"""Batched decoding shared by evaluation (exact match, ROUGE-L) and the strategies that write
their own training data (pseudo_replay, ssr).

``model.generate`` does the decoding; what it lacks and this adds is the batching a CL run wants:
prompts sorted by length so that left padding stays small, results back in the caller's order,
and each continuation cut at the first stop token (the chat template's end-of-turn as well as
EOS) before it is decoded.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import torch

from everlearn.data.encode import Encoded, collate, image_inputs


def decode_batched(model, encoder, prompt_ids: list[list[int]], max_new_tokens: int, *,
                   device: torch.device | str, autocast: Callable = nullcontext,
                   batch_size: int = 8, sampling: dict | None = None, strip: bool = True,
                   on_batch: Callable[[int], None] | None = None,
                   images: list[dict | None] | None = None) -> list[str]:
    """Continuations of ``prompt_ids`` (token ids, already truncated), in the order given.

    ``sampling`` holds ``generate`` keyword arguments (``do_sample``, ``top_p``...); greedy
    when None. Sampling draws from torch's global RNG, so callers that need reproducible
    samples seed it around the call. ``images``: per prompt, its image tensors or None (a
    vision-language model's prompts with image placeholders).
    """
    kwargs = sampling or {"do_sample": False}
    order = sorted(range(len(prompt_ids)), key=lambda i: (len(prompt_ids[i]), i))
    out = [""] * len(prompt_ids)
    stops = set(encoder.stop_ids)
    was_training = model.training
    model.eval()
    try:
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            batch = collate([Encoded(prompt_ids[i], prompt_ids[i],
                                     pixels=images[i] if images else None) for i in idx],
                            encoder.pad_id, left=True)
            ids = batch["input_ids"].to(device)
            pixels = {k: v.to(device) for k, v in image_inputs(batch).items()}
            with torch.no_grad(), autocast():
                gen = model.generate(input_ids=ids,
                                     attention_mask=batch["attention_mask"].to(device),
                                     max_new_tokens=max_new_tokens, use_cache=True,
                                     eos_token_id=encoder.stop_ids, pad_token_id=encoder.pad_id,
                                     **pixels, **kwargs)
            for i, row in zip(idx, gen[:, ids.shape[1]:].tolist()):
                cut = next((k for k, t in enumerate(row) if t in stops), len(row))
                text = encoder.tok.decode(row[:cut], skip_special_tokens=True)
                out[i] = text.strip() if strip else text
            if on_batch is not None:
                on_batch(len(idx))
    finally:
        model.train(was_training)
    return out

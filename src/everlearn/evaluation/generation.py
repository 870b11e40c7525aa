"""Batched decoding shared by evaluation (exact match, ROUGE-L) and the strategies that write
their own training data (pseudo_replay, ssr).

``model.generate`` does the decoding; what it lacks and this adds is the batching a CL run wants:
prompts sorted by length so that left padding stays small, results back in the caller's order,
each continuation cut at the first stop token (the chat template's end-of-turn as well as
EOS) before it is decoded, and, where the caller can tell, a row stopped as soon as what it
wrote can no longer score (``alive``) or, for answers of one line (``single_line``), as soon as
its first line has ended, or for a cloze continuation (``first_sentence``) as soon as its
first sentence has: an untrained model otherwise writes on to ``max_new_tokens`` in every row
of the batch.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from everlearn.data.encode import Encoded, collate, image_inputs


class _StopRows(StoppingCriteria):
    """Finishes the rows that ``done(prompt index, new tokens)`` says are finished, and keeps
    how many tokens each had then (``generate`` pads a finished row from there on). Rows are
    judged one by one, so each row of a batch stops on its own."""

    def __init__(self, rows: list[int], width: int, done: Callable[[int, list[int]], bool]):
        self.rows, self.width, self.done = rows, width, done
        self.stopped_at: dict[int, int] = {}

    def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
        finished = []
        for i, row in zip(self.rows, input_ids[:, self.width:].tolist()):
            if i not in self.stopped_at and self.done(i, row):
                self.stopped_at[i] = len(row)
            finished.append(i in self.stopped_at)
        return torch.tensor(finished, dtype=torch.bool, device=input_ids.device)


def first_line_end(text: str) -> int | None:
    """Where the first line of ``text`` ends (the index of its newline), leading whitespace
    skipped (a continuation that opens with a newline has not started its answer yet); None
    while that line is still open."""
    start = len(text) - len(text.lstrip())
    end = text.find("\n", start)
    return None if end < 0 else end


def decode_batched(model, encoder, prompt_ids: list[list[int]], max_new_tokens: int, *,
                   device: torch.device | str, autocast: Callable = nullcontext,
                   batch_size: int = 8, sampling: dict | None = None, strip: bool = True,
                   on_batch: Callable[[int], None] | None = None,
                   images: list[dict | None] | None = None,
                   alive: Callable[[int, str], bool] | None = None,
                   single_line: bool = False, first_sentence: bool = False) -> list[str]:
    """Continuations of ``prompt_ids`` (token ids, already truncated), in the order given.

    ``sampling`` holds ``generate`` keyword arguments (``do_sample``, ``top_p``...); greedy
    when None. Sampling draws from torch's global RNG, so callers that need reproducible
    samples seed it around the call. ``images``: per prompt, its image tensors or None (a
    vision-language model's prompts with image placeholders). ``alive(i, text)``: whether
    prompt ``i``'s continuation so far (decoded as it will be returned) can still score; a row
    it rejects stops there, so its returned text is the prefix that decided it.
    ``single_line``: the answers are one line each, so a row stops once its first line has
    ended (see :func:`first_line_end`) and what is returned is that line, without the newline.
    ``first_sentence``: a cloze continuation (raw text) ends at its first full stop, which it
    keeps (TemporalWiki's and CKL's GPT-2 evaluation: ``text[:text.find(".") + 1]``); the row
    stops there.
    """
    kwargs = sampling or {"do_sample": False}
    order = sorted(range(len(prompt_ids)), key=lambda i: (len(prompt_ids[i]), i))
    out = [""] * len(prompt_ids)
    stops = set(encoder.stop_ids)
    was_training = model.training
    model.eval()

    def raw_text(row: list[int]) -> str:
        cut = next((k for k, t in enumerate(row) if t in stops), len(row))
        return encoder.tok.decode(row[:cut], skip_special_tokens=True)

    def text_of(row: list[int]) -> str:
        text = raw_text(row)
        end = first_line_end(text) if single_line else None
        text = text if end is None else text[:end]
        if first_sentence and "." in text:
            text = text[:text.find(".") + 1]
        return text.strip() if strip else text

    def done(i: int, row: list[int]) -> bool:
        return ((single_line and first_line_end(raw_text(row)) is not None)
                or (first_sentence and "." in raw_text(row))
                or (alive is not None and not alive(i, text_of(row))))

    try:
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            batch = collate([Encoded(prompt_ids[i], prompt_ids[i],
                                     pixels=images[i] if images else None) for i in idx],
                            encoder.pad_id, left=True)
            ids = batch["input_ids"].to(device)
            pixels = {k: v.to(device) for k, v in image_inputs(batch).items()}
            stopper = (_StopRows(idx, ids.shape[1], done)
                       if alive is not None or single_line or first_sentence else None)
            with torch.no_grad(), autocast():
                gen = model.generate(input_ids=ids,
                                     attention_mask=batch["attention_mask"].to(device),
                                     max_new_tokens=max_new_tokens, use_cache=True,
                                     eos_token_id=encoder.stop_ids, pad_token_id=encoder.pad_id,
                                     stopping_criteria=StoppingCriteriaList(
                                         [stopper] if stopper else []),
                                     **pixels, **kwargs)
            for i, row in zip(idx, gen[:, ids.shape[1]:].tolist()):
                end = stopper.stopped_at.get(i, len(row)) if stopper else len(row)
                out[i] = text_of(row[:end])
            if on_batch is not None:
                on_batch(len(idx))
    finally:
        model.train(was_training)
    return out

"""A tiny model made to write given texts: decoding and the generation scorers tested on
known generations."""

from __future__ import annotations

import torch


class Scripted:
    """Forces the tiny model to write ``scripts[row]`` (then end-of-turn), one character a
    step (the tokenizer is byte-level), and counts the decoding steps."""

    def __init__(self, model, tok, scripts: list[str]):
        self.tok, self.steps = tok, 0
        self.ids = [[tok.convert_tokens_to_ids(t) for t in tok.tokenize(s)] + [tok.eos_token_id]
                    for s in scripts]
        self.handle = model.register_forward_hook(self.force)

    def force(self, module, args, output):
        logits = torch.full_like(output.logits[:, -1], -1e4)
        for row, ids in enumerate(self.ids):
            logits[row, ids[min(self.steps, len(ids) - 1)]] = 1e4
        output.logits[:, -1] = logits
        self.steps += 1
        return output

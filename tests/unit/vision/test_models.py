"""LLaVA models (``vision.models``): the language model stays unchanged."""

from __future__ import annotations

import torch

from everlearn.models.loading import build_tiny_model, build_tiny_tokenizer
from everlearn.vision.models import build_llava


def test_llava_keeps_the_language_model_unchanged():
    tok = build_tiny_tokenizer()
    tok.add_tokens(["<image>"], special_tokens=True)
    lm = build_tiny_model(tok, seed=1)
    llava = build_llava(lm, tok.convert_tokens_to_ids("<image>"), image_size=32, patch_size=8,
                        hidden=32, layers=1, heads=2)
    ids = torch.tensor([tok("What is the capital of Italy?")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(lm(input_ids=ids).logits, llava(input_ids=ids).logits)

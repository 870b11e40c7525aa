"""Encoding image prompts (``vision.encode``): BOS where the tokenizer adds one."""

from __future__ import annotations

from everlearn.data.builtin import get_builtin_task
from everlearn.data.encoders import make_encoder
from everlearn.vision.models import build_tiny_llava


def test_image_prompts_start_with_bos_where_the_tokenizer_adds_one():
    _, processor = build_tiny_llava()
    record = get_builtin_task("visual_position").generate(1, seed=0, split="test")[0]
    # no chat template: its <|im_start|> is this tokenizer's BOS, and a template that writes
    # BOS gets no second one
    plain = make_encoder(processor, 96, use_chat_template=False).prompt_inputs(record)[0]
    processor.tokenizer.add_bos_token = True
    enc = make_encoder(processor, 96, use_chat_template=False)
    ids, pixels = enc.prompt_inputs(record)
    assert pixels is not None and enc.bos_id == processor.tokenizer.bos_token_id
    assert ids == [enc.bos_id] + plain  # once, in front of the processor's ids

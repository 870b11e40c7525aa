"""Which encoder a loaded model gets: a text :class:`Encoder` for a tokenizer, a
:class:`VisionEncoder` for a vision-language model's processor.

Its own module because it is the one place that knows both: the vision encoder builds on the
text one (:mod:`everlearn.vision.encode` imports :mod:`everlearn.data.encode`), so choosing
between them there would make the two import each other.
"""

from __future__ import annotations

from everlearn.data.encode import Encoder


def make_encoder(tokenizer, max_length: int, use_chat_template: bool = True,
                 edit_format: str = "raw") -> Encoder:
    """The encoder for what :func:`everlearn.models.loading.load_base_model` returned: a
    tokenizer, or a vision-language model's processor (which also encodes images)."""
    if hasattr(tokenizer, "image_processor") and hasattr(tokenizer, "tokenizer"):
        from everlearn.vision.encode import VisionEncoder  # text runs never import vision

        encoder: Encoder = VisionEncoder(tokenizer, max_length, use_chat_template)
    else:
        encoder = Encoder(tokenizer, max_length, use_chat_template)
    encoder.edit_format = edit_format
    return encoder

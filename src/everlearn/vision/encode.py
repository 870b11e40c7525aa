"""Image records -> token ids and pixel tensors, for a vision-language model's processor.

The prompt of an image record carries the processor's image placeholder at the start of the user
turn (``<image>\\n`` + prompt, or a structured ``{"type": "image"}`` part when only the processor
has a chat template); the processor expands it to the model's image tokens and turns the image
into ``pixel_values``. Records without an image are encoded exactly as for a text model, so text
stages, general probes and replayed text run unchanged on a vision-language model.

Image tokens are never cut: an image record whose prompt does not fit ``train.max_length``
raises a one-line DataError (a text prompt loses the middle of its input instead, see
:meth:`Encoder.fit_prompt`). An image prompt starts with BOS where the tokenizer adds one, as a
text prompt does.
"""

from __future__ import annotations

import torch

from everlearn.data.encode import IGNORE, Encoded, Encoder
from everlearn.data.records import Record
from everlearn.errors import DataError
from everlearn.vision.images import load_image

TEXT_KEYS = ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids")


class VisionEncoder(Encoder):
    """An :class:`Encoder` for a processor (tokenizer + image processor)."""

    def __init__(self, processor, max_length: int, use_chat_template: bool = True):
        tok = processor.tokenizer
        self.processor = processor
        self.image_token = processor.image_token
        # only the processor has a chat template (e.g. llava-hf checkpoints): structured content
        self.processor_chat = bool(use_chat_template and not getattr(tok, "chat_template", None)
                                   and getattr(processor, "chat_template", None))
        super().__init__(tok, max_length, use_chat_template)
        if self.processor_chat:
            self.chat = True
            self.stop_ids = self._stop_ids()

    # --- text formatting -----------------------------------------------------------------
    def _messages(self, record: Record) -> list[dict]:
        msgs = super()._messages(record)
        if record.image:
            msgs[-1] = {"role": "user", "content": (
                [{"type": "image"}, {"type": "text", "text": record.prompt}]
                if self.processor_chat else f"{self.image_token}\n{record.prompt}")}
        return msgs

    def _template(self, messages: list[dict], add_generation_prompt: bool) -> str:
        if not self.processor_chat:
            return super()._template(messages, add_generation_prompt)
        structured = [m if isinstance(m["content"], list) else
                      {"role": m["role"], "content": [{"type": "text", "text": m["content"]}]}
                      for m in messages]
        return self.processor.apply_chat_template(
            structured, add_generation_prompt=add_generation_prompt, tokenize=False)

    def prompt_text(self, record: Record) -> str:
        text = super().prompt_text(record)
        if record.image and not self.chat:
            return f"{self.image_token}\n{text}"
        return text

    # --- encoding ------------------------------------------------------------------------
    def prompt_inputs(self, record: Record) -> tuple[list[int], dict[str, torch.Tensor] | None]:
        if not record.image:
            return super().prompt_inputs(record)
        out = self.processor(text=[self.prompt_text(record)], images=[load_image(record.image)],
                             return_tensors="pt", add_special_tokens=False)
        pixels = {k: v for k, v in out.items() if k not in TEXT_KEYS and torch.is_tensor(v)}
        return self.start(out["input_ids"][0].tolist()), pixels

    def image_tensors(self, images: list[str]) -> dict[str, torch.Tensor]:
        """The image processor's tensors (``pixel_values``...) of several images, batched."""
        out = self.processor.image_processor(images=[load_image(i) for i in images],
                                             return_tensors="pt")
        return {k: v for k, v in out.items() if torch.is_tensor(v)}

    def fit_prompt(self, record: Record, ids: list[int], room: int,
                   pixels: dict | None) -> list[int]:
        if pixels is None:
            return super().fit_prompt(record, ids, room, pixels)
        if len(ids) > room:
            raise DataError(f"task '{record.task}': the record with image {record.image!r} "
                            f"needs {len(ids)} prompt tokens (image tokens are never cut) and "
                            f"only {room} fit; raise train.max_length")
        return ids

    def encode_sft(self, record: Record, answer: str | None = None) -> Encoded:
        if not record.image:
            return super().encode_sft(record, answer)
        answer = record.response if answer is None else answer
        ids, pixels = self.prompt_inputs(record)
        ids = self.fit_prompt(record, ids, self.max_length - 1, pixels)
        answer_ids = self.ids(self.response_text(record, answer))[: self.max_length - len(ids)]
        return Encoded(ids + answer_ids, [IGNORE] * len(ids) + answer_ids, pixels=pixels)

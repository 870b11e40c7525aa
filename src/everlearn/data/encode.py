"""Records -> token ids: chat templates, response-only labels, cpt packing, and batching.

Batching groups examples of similar length so that little compute is spent on padding; the
share of padding tokens is measured and reported as part of each stage's cost.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from everlearn.data.records import Record

IGNORE = -100
IMAGE_PREFIX = "image."  # batch keys of a vision-language model's image inputs (pixel_values...)


@dataclass
class Encoded:
    """One training or scoring example as token ids (labels = -100 where no loss)."""

    input_ids: list[int]
    labels: list[int]
    record: int = -1  # index of the source record in the list encoded (-1: packed text)
    # an image record (vision-language models): the processor's image tensors, e.g.
    # {"pixel_values": 1 x 3 x H x W}; None for text
    pixels: dict[str, torch.Tensor] | None = None


def image_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The image inputs of a collated batch, as the model's forward takes them (empty for
    text): pass them with ``input_ids`` wherever a batch meets the model."""
    return {k[len(IMAGE_PREFIX):]: v for k, v in batch.items() if k.startswith(IMAGE_PREFIX)}


def stack_pixels(pixels: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Image tensors of several examples, concatenated in row order (the order the model
    meets their image placeholders), under ``IMAGE_PREFIX`` keys."""
    if not pixels:
        return {}
    return {IMAGE_PREFIX + k: torch.cat([p[k] for p in pixels]) for k in pixels[0]}


class Encoder:
    """Formats records for one tokenizer: the chat template when it has one, else plain text.

    A vision-language model's processor gets :class:`everlearn.vision.encode.VisionEncoder`
    (see :func:`make_encoder`), which adds images and encodes text records as this class does.
    """

    def __init__(self, tokenizer, max_length: int, use_chat_template: bool = True):
        self.tok = tokenizer
        self.max_length = max_length
        self.chat = bool(use_chat_template and getattr(tokenizer, "chat_template", None))
        self.eos_id = tokenizer.eos_token_id
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.pad_id = tokenizer.pad_token_id
        self.stop_ids = self._stop_ids()
        self.edit_format = "raw"  # how edit records are written (config `edit.format`)

    # --- text formatting -----------------------------------------------------------------
    def _messages(self, record: Record) -> list[dict[str, str]]:
        msgs = []
        if record.system:
            msgs.append({"role": "system", "content": record.system})
        msgs.extend(record.context)
        msgs.append({"role": "user", "content": record.prompt})
        return msgs

    def _template(self, messages: list[dict], add_generation_prompt: bool) -> str:
        return self.tok.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                            tokenize=False)

    def prompt_text(self, record: Record) -> str:
        """The text the model sees before its answer."""
        if self.chat:
            return self._template(self._messages(record), True)
        parts = [record.system or ""] + [m["content"] for m in record.context] + [record.prompt]
        return "\n\n".join(p for p in parts if p) + "\n"

    def prompt_inputs(self, record: Record) -> tuple[list[int], dict[str, torch.Tensor] | None]:
        """The prompt's token ids and its image tensors (None: a text model or record)."""
        return self.ids(self.prompt_text(record)), None

    def fit_prompt(self, record: Record, ids: list[int], room: int,
                   pixels: dict | None) -> list[int]:
        """The prompt ids cut to at most ``room`` tokens: a text prompt loses its beginning
        (a vision encoder refuses to cut image tokens)."""
        return ids[-room:]

    def response_text(self, record: Record, answer: str) -> str:
        """The answer as the template writes it, end-of-turn marker included."""
        if self.chat:
            prompt = self.prompt_text(record)
            full = self._template(
                self._messages(record) + [{"role": "assistant", "content": answer}], False)
            if full.startswith(prompt):
                return full[len(prompt):].rstrip("\n")
        return answer + (self.tok.eos_token or "")

    def _stop_ids(self) -> list[int]:
        """Token ids that end an answer: EOS and the chat template's end-of-turn token."""
        ids = {self.eos_id} if self.eos_id is not None else set()
        if self.chat:
            probe = Record(prompt="x", answers=["y"])
            tail = self.response_text(probe, "y")[1:]
            tail_ids = self.tok(tail, add_special_tokens=False)["input_ids"]
            if tail_ids:
                ids.add(tail_ids[0])
        return sorted(ids)

    def ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    # --- encoding ------------------------------------------------------------------------
    def encode_pair(self, prompt_ids: list[int], answer_ids: list[int]) -> Encoded:
        """Prompt + answer with loss on the answer; long prompts lose their beginning."""
        answer_ids = answer_ids[: self.max_length - 1]
        room = self.max_length - len(answer_ids)
        prompt_ids = prompt_ids[-room:]
        return Encoded(prompt_ids + answer_ids, [IGNORE] * len(prompt_ids) + answer_ids)

    def encode_sft(self, record: Record, answer: str | None = None) -> Encoded:
        answer = record.response if answer is None else answer
        return self.encode_pair(
            self.ids(self.prompt_text(record)), self.ids(self.response_text(record, answer))
        )

    def pack_cpt(self, records: list[Record]) -> list[Encoded]:
        """Concatenate documents (EOS between them) and cut into max_length blocks. A block of
        a text stream (``token_ids``) stays one example of its own, first and in order."""
        blocks = [Encoded(list(r.token_ids), list(r.token_ids)) for r in records
                  if r.token_ids is not None and len(r.token_ids) >= 2]
        stream: list[int] = []
        for r in records:
            if r.token_ids is not None:
                continue
            stream.extend(self.ids(r.text))
            if self.eos_id is not None:
                stream.append(self.eos_id)
        for start in range(0, len(stream), self.max_length):
            block = stream[start:start + self.max_length]
            if len(block) >= 2:
                blocks.append(Encoded(block, list(block)))
        return blocks

    def encode_edit(self, record: Record, prompt: str, target: str) -> Encoded:
        """One edit (or a paraphrase or locality prompt of it) with the loss on ``target``:
        raw = ``prompt``, a space, ``target`` (no end-of-turn, as in EasyEdit); chat = the
        prompt as a user turn (with the record's system prompt) and ``target`` as the whole
        answer, end-of-turn marker included."""
        if self.edit_format == "chat":
            turn = Record(prompt=prompt, system=record.system, context=record.context)
            target_ids = self.ids(self.response_text(turn, target))
        else:
            target_ids = self.ids(("" if prompt[-1:] in (" ", "\n") else " ") + target)
        return self.encode_pair(self.edit_prompt_ids(record, prompt), target_ids)

    def edit_prompt_ids(self, record: Record, prompt: str) -> list[int]:
        """The tokens of an edit's prompt as :meth:`encode_edit` writes them."""
        if self.edit_format == "chat":
            turn = Record(prompt=prompt, system=record.system, context=record.context)
            return self.ids(self.prompt_text(turn))
        return self.ids(prompt)

    def encode_stage(self, kind: str, records: list[Record]) -> list[Encoded]:
        """A stage's records as examples. Raw-text records inside an sft stage (general data
        mixed in by a strategy) are packed like cpt text; the rest get response-only loss."""
        if kind == "cpt":
            return self.pack_cpt(records)
        text_only = [r for r in records if (r.text or r.token_ids) and not r.answers]
        if kind == "edit":  # every record with an answer is an edit: prompt -> target_new
            edits = []
            for i, r in enumerate(records):
                if r.answers:
                    e = self.encode_edit(r, r.prompt, r.response)
                    e.record = i
                    edits.append(e)
            return edits + self.pack_cpt(text_only)
        sft = []
        for i, r in enumerate(records):
            if r.answers:
                e = self.encode_sft(r)
                e.record = i
                sft.append(e)
        return sft + self.pack_cpt(text_only)


def make_encoder(tokenizer, max_length: int, use_chat_template: bool = True,
                 edit_format: str = "raw") -> Encoder:
    """The encoder for what :func:`everlearn.models.load_base_model` returned: a tokenizer, or
    a vision-language model's processor (which also encodes images)."""
    if hasattr(tokenizer, "image_processor") and hasattr(tokenizer, "tokenizer"):
        from everlearn.vision.encode import VisionEncoder

        encoder: Encoder = VisionEncoder(tokenizer, max_length, use_chat_template)
    else:
        encoder = Encoder(tokenizer, max_length, use_chat_template)
    encoder.edit_format = edit_format
    return encoder


def collate(examples: list[Encoded], pad_id: int, left: bool = False) -> dict[str, torch.Tensor]:
    """Pad a batch to its longest example (left padding for generation)."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        sl = slice(width - n, width) if left else slice(0, n)
        ids[i, sl] = torch.tensor(e.input_ids)
        labels[i, sl] = torch.tensor(e.labels)
        mask[i, sl] = 1
    records = torch.tensor([e.record for e in examples], dtype=torch.long)
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels, "record_index": records}
    if any(e.pixels is not None for e in examples):  # image records (vision-language models)
        batch.update(stack_pixels([e.pixels for e in examples if e.pixels is not None]))
    return batch


def length_grouped_batches(lengths: list[int], batch_size: int, rng: random.Random,
                           group: bool = True, mega: int = 16) -> list[list[int]]:
    """One epoch of batches: shuffled, and (if ``group``) sorted by length within mega-batches.

    Sorting inside windows of ``mega`` batches keeps most of the randomness of a shuffle while
    putting examples of similar length together; the batch order is shuffled afterwards.
    """
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if group:
        window = batch_size * mega
        order = [i for s in range(0, len(order), window)
                 for i in sorted(order[s:s + window], key=lambda i: -lengths[i])]
    batches = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    if group:
        rng.shuffle(batches)
    return batches


def padding_fraction(batches: list[list[int]], lengths: list[int]) -> float:
    """Share of padded positions when each batch is padded to its longest member."""
    total = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    real = sum(lengths[i] for b in batches for i in b)
    return 0.0 if total == 0 else 1.0 - real / total

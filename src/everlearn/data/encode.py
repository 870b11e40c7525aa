"""Records -> token ids: chat templates, response-only labels, cpt packing, and batching.

Batching groups examples of similar length so that little compute is spent on padding; the
share of padding tokens is measured and reported as part of each stage's cost. The share of
examples cut to ``max_length`` is kept per stage (``Encoder.truncated``, results.json).

A sequence starts with BOS when the tokenizer's own settings add one (Llama-2, Mistral, Gemma
base models); fragments (answers, options, edit targets) never get one.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

import torch

from everlearn.data.records import Record
from everlearn.stages import get_kind

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
    truncated: bool = False  # the prompt or the answer was cut to max_length


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
    (see :func:`everlearn.data.encoders.make_encoder`), which adds images and encodes text
    records as this class does.
    """

    def __init__(self, tokenizer, max_length: int, use_chat_template: bool = True):
        self.tok = tokenizer
        self.max_length = max_length
        self.chat = bool(use_chat_template and getattr(tokenizer, "chat_template", None))
        self.eos_id = tokenizer.eos_token_id
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.pad_id = tokenizer.pad_token_id
        self.bos_id = self._bos_id()
        self.space_joins = self._space_joins()
        self.stop_ids = self._stop_ids()
        self.edit_format = "raw"  # how edit records are written (config `edit.format`)
        # stage name -> {"train" / "test": share of its examples cut to max_length}
        self.truncated: dict[str, dict[str, float]] = {}

    def _bos_id(self) -> int | None:
        """The BOS id that starts every sequence, when the tokenizer would add one itself
        (``add_bos_token``, or its post-processor); None for those that add none (GPT-2 style,
        SmolLM2), whose ids stay as they were."""
        bos = self.tok.bos_token_id
        if bos is None:
            return None
        if getattr(self.tok, "add_bos_token", False) is True:
            return bos
        added = self.tok("a")["input_ids"]
        return bos if added[:1] == [bos] and self.ids("a")[:1] != [bos] else None

    def _space_joins(self) -> bool:
        """Whether whitespace is written into the next word's token (GPT-2 'Ġis', SentencePiece
        '▁is'): then a prompt's trailing whitespace belongs to its continuation."""
        return self.ids("a b") != self.ids("a ") + self.ids("b")

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
        """The prompt's token ids (BOS first where the tokenizer adds one) and its image
        tensors (None: a text model or record)."""
        return self.start_ids(self.prompt_text(record)), None

    def fit_prompt(self, record: Record, ids: list[int], room: int,
                   pixels: dict | None) -> list[int]:
        """The prompt ids cut to at most ``room`` tokens (a vision encoder refuses to cut image
        tokens). A text prompt loses the middle of its input so that the template, the system
        prompt, the context turns and the instruction stay whole: the input is the user prompt
        after its first paragraph (SuperNI's definition), else the whole user prompt; its start
        and end are kept (the end often holds the question or the answer cue, as LongBench
        argues for cutting the middle). When even an empty input does not fit, the prompt
        loses its beginning instead (after BOS)."""
        if len(ids) <= room:
            return ids
        return self._shorten_input(record, ids, room) or self.cut(ids, room)

    def _shorten_input(self, record: Record, ids: list[int], room: int) -> list[int] | None:
        """The prompt with the middle of its input cut to fit ``room`` (see :meth:`fit_prompt`);
        None when cutting the input cannot make it fit."""
        instruction, blank, rest = record.prompt.partition("\n\n")
        splits = [(instruction + blank, rest)] if blank else []
        for head, body in splits + [("", record.prompt)]:
            body_ids = self.ids(body)
            keep = len(body_ids) - (len(ids) - room)
            while keep > 0:  # token boundaries may shift when re-encoded: try again shorter
                front, back = keep - keep // 2, keep // 2
                text = (self._decode(body_ids[:front]).rstrip("\ufffd")
                        + self._decode(body_ids[len(body_ids) - back:]).lstrip("\ufffd"))
                shorter = self.start_ids(self.prompt_text(replace(record, prompt=head + text)))
                if len(shorter) <= room:
                    return shorter
                keep -= len(shorter) - room
        return None

    def _decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, clean_up_tokenization_spaces=False) if ids else ""

    def cut(self, ids: list[int], room: int) -> list[int]:
        """``ids`` without their beginning, to at most ``room`` tokens; a leading BOS stays."""
        if len(ids) <= room:
            return ids
        if self.bos_id is not None and ids[:1] == [self.bos_id] and room > 1:
            return ids[:1] + ids[len(ids) - room + 1:]
        return ids[len(ids) - room:]

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
        """The token ids of ``text`` as a fragment: no special tokens added."""
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def start(self, ids: list[int]) -> list[int]:
        """``ids`` as the start of a sequence: BOS first when the tokenizer adds one, unless
        the text brought it already (a chat template that writes ``bos_token``)."""
        if self.bos_id is None or ids[:1] == [self.bos_id]:
            return ids
        return [self.bos_id] + ids

    def start_ids(self, text: str) -> list[int]:
        """The token ids of ``text`` that starts a sequence (see :meth:`start`)."""
        return self.start(self.ids(text))

    def _cloze_text(self, prompt: str, target: str = "") -> tuple[str, str]:
        """Raw text and its continuation as they are split into tokens: a space between them
        unless the prompt ends in whitespace, which moves into the continuation when the
        tokenizer writes whitespace into the next word's token (as lm-evaluation-harness does:
        ``is`` + `` Paris``, not ``is `` + ``Paris``). A tokenizer whose whitespace is a token of
        its own gives the same tokens either way and keeps the whitespace in the prompt."""
        if not prompt[-1:].isspace():
            return prompt, " " + target
        if not self.space_joins:
            return prompt, target
        context = prompt.rstrip()
        return context, prompt[len(context):] + target

    def cloze_ids(self, prompt: str, target: str) -> tuple[list[int], list[int]]:
        """(prompt ids, continuation ids) of raw text and its continuation: together the ids of
        the whole text (``prompt``, a space unless it ends in one, ``target``), as cpt training
        tokenises it; the prompt starts with BOS where the tokenizer adds one."""
        context, continuation = self._cloze_text(prompt, target)
        head, whole = self.ids(context), self.ids(context + continuation)
        tail = whole[len(head):] if whole[:len(head)] == head else self.ids(continuation)
        return self.start(head), tail

    def cloze_prompt_ids(self, prompt: str) -> list[int]:
        """The prompt ids of :meth:`cloze_ids` (the same for every continuation)."""
        return self.start_ids(self._cloze_text(prompt)[0])

    def note_truncation(self, stage: str, split: str, flags: list[bool]) -> None:
        """Record the share of a stage's ``split`` ("train", "test") examples that were cut."""
        self.truncated.setdefault(stage, {})[split] = sum(flags) / max(1, len(flags))

    # --- encoding ------------------------------------------------------------------------
    def encode_pair(self, prompt_ids: list[int], answer_ids: list[int],
                    record: Record | None = None) -> Encoded:
        """Prompt + answer with loss on the answer. An answer keeps at most ``max_length - 1``
        tokens; a prompt too long for the rest loses the middle of its input when ``record``
        (whose :meth:`prompt_text` it is) is given (:meth:`fit_prompt`), else its beginning."""
        kept = answer_ids[: self.max_length - 1]
        room = self.max_length - len(kept)
        fitted = (self.cut(prompt_ids, room) if record is None
                  else self.fit_prompt(record, prompt_ids, room, None))
        return Encoded(fitted + kept, [IGNORE] * len(fitted) + kept,
                       truncated=len(kept) < len(answer_ids) or fitted != prompt_ids)

    def encode_sft(self, record: Record, answer: str | None = None) -> Encoded:
        answer = record.response if answer is None else answer
        return self.encode_pair(self.start_ids(self.prompt_text(record)),
                                self.ids(self.response_text(record, answer)), record)

    def _not_bos(self, ids: list[int]) -> list[int]:
        """``ids`` as labels with every BOS ignored (a stream block holds several documents)."""
        return [IGNORE if t == self.bos_id else t for t in ids]

    def pack_cpt(self, records: list[Record]) -> list[Encoded]:
        """Concatenate documents (EOS after each) and cut into max_length blocks. A block of
        a text stream (``token_ids``) stays one example of its own, first and in order.

        Where the tokenizer adds a BOS, every document starts with one (as Hugging Face's
        pretraining scripts and lm-evaluation-harness tokenise documents), also inside a
        block; it is given, never a target (label -100), so perplexity counts text only."""
        blocks = [Encoded(list(r.token_ids), self._not_bos(r.token_ids)) for r in records
                  if r.token_ids is not None and len(r.token_ids) >= 2]
        stream: list[int] = []
        labels: list[int] = []
        for r in records:
            if r.token_ids is not None:
                continue
            doc = self.start_ids(r.text) + ([] if self.eos_id is None else [self.eos_id])
            stream.extend(doc)
            labels.extend([IGNORE] + doc[1:] if self.bos_id is not None else doc)
        for start in range(0, len(stream), self.max_length):
            block = stream[start:start + self.max_length]
            if len(block) >= 2:
                blocks.append(Encoded(block, labels[start:start + self.max_length]))
        return blocks

    def encode_edit(self, record: Record, prompt: str, target: str) -> Encoded:
        """One edit (or a paraphrase or locality prompt of it) with the loss on ``target``:
        raw = ``prompt``, a space unless it ends in whitespace, ``target`` (no end-of-turn, as
        in EasyEdit; split into tokens by :meth:`cloze_ids`, so a trailing space of the prompt
        may move into the target); chat = the prompt as a user turn (with the record's system
        prompt) and ``target`` as the whole answer, end-of-turn marker included."""
        if self.edit_format == "chat":
            turn = Record(prompt=prompt, system=record.system, context=record.context)
            return self.encode_pair(self.prompt_inputs(turn)[0],
                                    self.ids(self.response_text(turn, target)), turn)
        return self.encode_pair(*self.cloze_ids(prompt, target))

    def edit_prompt_ids(self, record: Record, prompt: str) -> list[int]:
        """The tokens of an edit's prompt as :meth:`encode_edit` writes them."""
        if self.edit_format == "chat":
            turn = Record(prompt=prompt, system=record.system, context=record.context)
            return self.prompt_inputs(turn)[0]
        return self.cloze_prompt_ids(prompt)

    def encode_answered(self, records: list[Record], encode_one) -> list[Encoded]:
        """Every record with an answer through ``encode_one(record)`` (response-only loss),
        then the raw-text records among them (general data a strategy mixed in) packed like
        cpt text."""
        out = []
        for i, r in enumerate(records):
            if r.answers:
                e = encode_one(r)
                e.record = i
                out.append(e)
        text_only = [r for r in records if (r.text or r.token_ids) and not r.answers]
        return out + self.pack_cpt(text_only)

    def encode_stage(self, kind: str, records: list[Record]) -> list[Encoded]:
        """A stage's records as examples, the way its kind encodes them
        (:mod:`everlearn.stages`: cpt packs text, sft and align answer with the chat template,
        edit writes prompt -> target_new)."""
        return get_kind(kind).encode(self, records)


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

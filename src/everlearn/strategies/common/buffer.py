"""Pieces the replay family shares: a budgeted episodic memory, per-record batches, seeded RNGs.

``Memory`` reuses :class:`everlearn.strategies.replay.Replay`'s selection rules (reservoir or
balanced) by composition, so DER and A-GEM keep exactly the buffer replay keeps. ``record_batch``
encodes one example per record (instruction records with response-only labels, raw text with
full loss), so rows of a strategy-side forward pass line up with the records that made them.
This module's name starts with ``_``: the registry does not scan it.
"""

from __future__ import annotations

import contextlib
import random

import torch

from everlearn.data.encode import Encoded, collate
from everlearn.data.records import Record
from everlearn.evaluation.generation import decode_batched
from everlearn.strategies.base import RunContext
from everlearn.strategies.replay import Replay, ReplayOptions


def stage_rng(ctx: RunContext | None, stage_index: int, owner: str, purpose: str) -> random.Random:
    """A Python RNG fixed by the run seed, the stage and its use (resume replays it exactly)."""
    seed = ctx.seed if ctx is not None else 0
    return random.Random(f"{seed}:{stage_index}:{owner}:{purpose}")


def torch_seed(ctx: RunContext | None, stage_index: int, owner: str, purpose: str) -> int:
    """An integer seed for torch, derived like :func:`stage_rng` (string seeds hash stably)."""
    return stage_rng(ctx, stage_index, owner, purpose).getrandbits(63)


@contextlib.contextmanager
def seeded_torch(seed: int, device: torch.device | str = "cpu"):
    """Run a block on torch's global RNG seeded with ``seed``, then restore the training RNG."""
    device = torch.device(device)
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def eval_mode(model):
    """Dropout off for a block (storing targets, generating), then the previous mode back."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


class Memory:
    """A budgeted buffer of ``(stage index, record)`` with replay's selection rules.

    ``owner`` salts the selection RNG so that stacked methods do not pick identical examples.
    """

    def __init__(self, owner: str, size: int, selection: str = "reservoir"):
        self._replay = Replay(ReplayOptions(buffer_size=size, selection=selection, mix_ratio=0.0))
        self._replay.name = owner  # instance attribute: keys Replay's per-stage RNG by owner

    def setup(self, ctx: RunContext) -> None:
        self._replay.setup(ctx)

    def add(self, stage) -> None:
        """Offer a finished stage's training records to the buffer (Algorithm R or balanced)."""
        self._replay.after_stage(stage)

    @property
    def entries(self) -> list[tuple[int, Record]]:
        return self._replay.buffer

    @property
    def records(self) -> list[Record]:
        return [r for _, r in self._replay.buffer]

    def __len__(self) -> int:
        return len(self._replay.buffer)

    def sample(self, rng: random.Random, n: int) -> list[int]:
        """Indices of ``min(n, len)`` entries drawn without replacement."""
        return rng.sample(range(len(self)), min(n, len(self)))

    def state(self) -> dict:
        return self._replay.state_dict()["meta"]

    def load(self, meta: dict) -> None:
        self._replay.load_state_dict({"meta": meta, "tensors": {}})


def encode_record(encoder, record: Record) -> Encoded:
    """One example per record: response-only loss for instructions, full loss for raw text."""
    if record.answers:
        return encoder.encode_sft(record)
    ids = encoder.start_ids(record.text)
    if encoder.eos_id is not None:
        ids = ids + [encoder.eos_id]
    ids = ids[: encoder.max_length]
    return Encoded(ids, list(ids))


def record_batch(ctx: RunContext, records: list[Record]) -> dict[str, torch.Tensor]:
    """Records -> a padded batch on the training device, row i made from ``records[i]``.

    Equals ``ctx.batch`` for instruction records; raw-text records get a row each instead of
    being packed together, so every row stays attributable to its record.
    """
    if all(r.answers for r in records):
        return ctx.batch(records)
    batch = collate([encode_record(ctx.encoder, r) for r in records], ctx.encoder.pad_id)
    device = ctx.accelerator.device if ctx.accelerator is not None else "cpu"
    return {k: v.to(device) for k, v in batch.items()}


def device_of(ctx: RunContext) -> torch.device:
    return ctx.accelerator.device if ctx.accelerator is not None else torch.device("cpu")


def generate(ctx: RunContext, model, prompts: list[Record], max_new_tokens: int, *,
             sample: bool, top_k: int = 0, batch_size: int = 8) -> list[str]:
    """Answers to records' prompts under the chat template, greedy or sampled (top-k, then
    temperature 1). Sampling draws from torch's global RNG: call it inside :func:`seeded_torch`.
    """
    enc = ctx.encoder
    ids = [enc.fit_prompt(p, enc.prompt_inputs(p)[0], enc.max_length, None) for p in prompts]
    sampling = dict(do_sample=True, top_k=top_k, top_p=1.0, temperature=1.0) if sample else None
    return decode_batched(model, enc, ids, max_new_tokens, device=device_of(ctx),
                          autocast=ctx.autocast, batch_size=batch_size, sampling=sampling)

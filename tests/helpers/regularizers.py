"""Helpers shared by several files of the regularizers tests."""

from __future__ import annotations

import copy

import torch

from everlearn.data.encode import Encoder
from everlearn.data.records import Record
from everlearn.models.loading import build_tiny_model, build_tiny_tokenizer
from everlearn.stages.stream import Stage
from everlearn.strategies.base import RunContext


def stage_of(index: int, word: str, answer: str, n: int = 8) -> Stage:
    train = [Record(prompt=f"{word} question {i}", response=answer) for i in range(n)]
    return Stage(index=index, name=word, kind="sft", metric="exact_match", train=train,
                 test=train[:2])


TINY: list = []


def tiny_context(seed: int = 0) -> RunContext:
    """A fresh copy of the tiny random model (built once per module: building is slow)."""
    if not TINY:
        tok = build_tiny_tokenizer()
        TINY.extend([tok, build_tiny_model(tok)])
    tok, model = TINY
    return RunContext(model=copy.deepcopy(model), tokenizer=tok, encoder=Encoder(tok, 48),
                      config=None, stream=None, seed=seed)


def set_up(strategy, ctx):
    strategy.setup(ctx)
    return strategy


@torch.no_grad()
def nudge(model, scale: float = 0.05, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.add_(scale * torch.randn(p.shape, generator=g))


def loss_batch(ctx, stage) -> tuple[dict, object]:
    batch = ctx.batch(stage.train[:4])
    out = ctx.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    labels=batch["labels"])
    return batch, out

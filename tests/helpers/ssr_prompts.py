"""Helpers shared by several files of the ssr prompts tests."""

from __future__ import annotations

from pathlib import Path

import torch

from everlearn.data.encode import Encoder
from everlearn.data.records import Record
from everlearn.models.loading import build_tiny_model, build_tiny_tokenizer
from everlearn.stages.stream import Stage
from everlearn.strategies.base import RunContext
from everlearn.validation import build_config
from tests.conftest import constant_task, tiny_config

TOK = build_tiny_tokenizer()


# --- helpers ------------------------------------------------------------------------------
def stage_of(index: int, n: int) -> Stage:
    train = [Record(prompt=f"s{index} question {i}", answers=[f"answer {index}"],
                    task=f"s{index}") for i in range(n)]
    return Stage(index=index, name=f"s{index}", kind="sft", metric="exact_match",
                 train=train, test=train[:2], task_id=f"s{index}")


def perturbed_model(scale: float = 0.3):
    """The tiny model with perturbed weights: a random init answers with one constant token
    (often the stop token), which would hide what the methods do."""
    model = build_tiny_model(TOK)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return model


def run_context(tmp_path: Path, model, seed: int = 0, finetune: str = "full") -> RunContext:
    cfg = build_config(tiny_config(tmp_path, [constant_task(tmp_path, "red", "alpha")],
                                   model={"name": "tiny-llama", "finetune": finetune}))
    return RunContext(model=model, tokenizer=TOK, encoder=Encoder(TOK, 48), config=cfg,
                      stream=None, seed=seed)

"""Helpers shared by several files of the replay family tests."""

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


# --- helpers ------------------------------------------------------------------------------
def toy_stage(index: int, n: int, kind: str = "sft") -> Stage:
    if kind == "cpt":
        train = [Record(text=f"document {index}.{i} about topic {index}", task=f"s{index}")
                 for i in range(n)]
    else:
        train = [Record(prompt=f"s{index} question {i}", answers=[f"answer {index}"],
                        task=f"s{index}") for i in range(n)]
    return Stage(index=index, name=f"s{index}", kind=kind,
                 metric="perplexity" if kind == "cpt" else "exact_match",
                 train=train, test=train[:2], task_id=f"s{index}")


def run_context(tmp_path: Path, seed: int = 0) -> RunContext:
    tok = build_tiny_tokenizer()
    cfg = build_config(tiny_config(tmp_path, [constant_task(tmp_path, "red", "alpha")]))
    return RunContext(model=build_tiny_model(tok), tokenizer=tok, encoder=Encoder(tok, 48),
                      config=cfg, stream=None, seed=seed)


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1).double() for t in tensors])

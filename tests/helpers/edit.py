"""Helpers shared by several files of the edit tests."""

from __future__ import annotations

import torch

from everlearn.data.encode import Encoder
from everlearn.evaluation.matrix import Evaluator
from everlearn.models.loading import build_tiny_model, build_tiny_tokenizer
from everlearn.runs.session import make_accelerator
from everlearn.validation import build_config
from tests.conftest import write_jsonl


def edit_row(subject: str, target: str) -> dict:
    """A one-token edit for the byte-level tiny tokenizer: the prompt ends with a space, so the
    one-character target is one token (raw format: no separator is added)."""
    return {"prompt": f"Colour of {subject} is ", "target_new": target,
            "rephrase_prompt": [f"The colour of {subject} is "],
            "locality_prompt": [f"Size of {subject}{subject} is "],
            "locality_ground_truth": ["q"]}


def edit_stage(tmp_path, name: str, facts: list[tuple[str, str]]) -> dict:
    path = write_jsonl(tmp_path / f"{name}.jsonl", [edit_row(s, t) for s, t in facts])
    return {"name": name, "kind": "edit", "train": str(path), "test": str(path)}


def three_batches(tmp_path) -> list[dict]:
    return [edit_stage(tmp_path, "b1", [("ab", "x"), ("cd", "y")]),
            edit_stage(tmp_path, "b2", [("ef", "z"), ("gh", "w")]),
            edit_stage(tmp_path, "b3", [("ij", "v"), ("kl", "u")])]


GRACE = {"name": "grace", "layer": -1, "epsilon": 0.005, "lr": 0.05, "iterations": 60,
         "stop_loss": 10.0}  # the tiny model cannot be confident: stop once every token is top-1


def tiny_setup(layers: int = 2):
    tok = build_tiny_tokenizer()
    model = build_tiny_model(tok, layers=layers)
    encoder = Encoder(tok, 64)
    acc = make_accelerator("fp32")
    evaluator = Evaluator(acc, encoder, build_config({"stages": [{"builtin": "cipher"}]}).eval,
                          quiet=True)
    return tok, model, encoder, evaluator


@torch.no_grad()
def greedy_char(model, encoder, prompt: str) -> str:
    ids = encoder.ids(prompt)
    token = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
    return encoder.tok.decode([token])


# WISE on the tiny model: each edit its own shard (the tiny model's prompts are so alike that
# edits sharing a shard overwrite each other), margins in the tiny model's activation scale
WISE = {"name": "wise", "layer": -1, "lr": 100.0, "mask_ratio": 0.5, "shard_size": 1,
        "merge_shards": 99, "alpha": 0.5, "beta": 2.0, "gamma": 1.0, "iterations": 30,
        "stop_loss": 10.0, "irrelevant": 1}

"""Helpers shared by several files of the text stream tests."""

from __future__ import annotations

import random
from pathlib import Path

from tests.conftest import tiny_config, write_jsonl

# --- whole runs on the tiny model -----------------------------------------------------------
WORDS = "the cat sat on a mat and the dog ran to the red barn while birds sang".split()


def word_rows(rng: random.Random, n: int) -> list[dict]:
    return [{"text": " ".join(rng.choice(WORDS) for _ in range(30))} for _ in range(n)]


def digit_rows(rng: random.Random, n: int) -> list[dict]:
    return [{"text": " ".join(str(rng.randrange(1000, 9999)) for _ in range(25))}
            for _ in range(n)]


def domain_stage(tmp: Path, name: str, make, n: int = 60) -> dict:
    rng = random.Random(name)
    return {"name": name, "kind": "cpt",
            "train": str(write_jsonl(tmp / f"{name}_train.jsonl", make(rng, n))),
            "test": str(write_jsonl(tmp / f"{name}_test.jsonl", make(rng, 6)))}


def stream_config(tmp: Path, boundaries, budget: int | None = None, **overrides) -> dict:
    """Words, then digits, then words again (two clearly different byte distributions), about
    7,400 tokens each for the byte-level tiny model; chunks of 4 x 64 tokens."""
    stages = [domain_stage(tmp, "words", word_rows), domain_stage(tmp, "digits", digit_rows),
              domain_stage(tmp, "words2", word_rows)]
    cfg = tiny_config(tmp, stages, text_stream={"boundaries": boundaries,
                                                "token_budget": budget}, **overrides)
    cfg["train"].update(batch_size=4)
    return cfg

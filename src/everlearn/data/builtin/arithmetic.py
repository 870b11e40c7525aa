"""Two-number addition answered in a fixed, unusual "ledger" format.

The sum itself is within reach of a small model; the format is not given in the prompt, so
the base model fails on it and a few LoRA steps must teach it (a clean, visible "learned").
"""

from __future__ import annotations

import random

from everlearn.data.builtin.base import BuiltinTask, Item


def _draw(rng: random.Random) -> Item:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    return Item(f"Ledger sum: {a} + {b}", f"<{a + b:04d}>")


TASK = BuiltinTask(
    name="arithmetic",
    description="add two 2-digit numbers, answer in ledger form '<0085>' (exact match)",
    metric="exact_match",
    draw=_draw,
)

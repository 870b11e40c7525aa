"""Three-digit addition answered in a fixed, unusual "ledger" format ('<0594>').

The base model cannot guess the format, which is never stated, so it scores zero. Operands are
drawn so that no column carries: each answer digit is a one-digit sum the model already
knows, so a few LoRA steps can teach the format and digit alignment (carries would not be
learned in that budget).
"""

from __future__ import annotations

import random

from everlearn.data.builtin.base import BuiltinTask, Item


def _no_carry(a: int, b: int) -> bool:
    return all((a // 10**k) % 10 + (b // 10**k) % 10 <= 9 for k in range(3))


def _draw(rng: random.Random) -> Item:
    while True:
        a, b = rng.randint(100, 899), rng.randint(100, 899)
        if _no_carry(a, b):
            return Item(f"Ledger sum: {a} + {b}", f"<{a + b:04d}>")


TASK = BuiltinTask(
    name="arithmetic",
    description="add two 3-digit numbers (no carries), answer in ledger form '<0594>'",
    metric="exact_match",
    draw=_draw,
)

"""The "Zarn cipher": reverse the order of three words and capitalise each one.

A rule the prompt does not state, so the base model fails it, yet built from skills it has
(copying, capitalising), so a few LoRA steps learn it; test phrases are unseen combinations.
(All capitals was tried and learned much more slowly: capitals split words into odd tokens.)
"""

from __future__ import annotations

import random

from everlearn.data.builtin.base import BuiltinTask, Item

WORDS = """apple basket bridge butter candle castle coffee dinner doctor dragon engine forest
    flower friend garden green guitar happy heavy island jacket kitten ladder little market
    mirror music number ocean orange paper pencil planet quick rabbit river rocket school
    silver stone summer table tiger violin wagon window winter yellow zebra""".split()


def _draw(rng: random.Random) -> Item:
    words = rng.sample(WORDS, 3)
    return Item(
        f"Apply the Zarn cipher: {' '.join(words)}",
        " ".join(w.capitalize() for w in words[::-1]),
    )


TASK = BuiltinTask(
    name="cipher",
    description="Zarn cipher: reverse the order of three words and capitalise each",
    metric="exact_match",
    draw=_draw,
)

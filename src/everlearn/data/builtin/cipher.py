"""Translate short English phrases into an invented language with a fixed tiny lexicon.

Pure memorisation of a word mapping no pretrained model can know, composed over new phrases:
test phrases are unseen combinations of words that training does cover.
"""

from __future__ import annotations

import random

from everlearn.data.builtin.base import BuiltinTask, Item

LEXICON = {
    "cat": "miku",
    "dog": "tarn",
    "bird": "zo",
    "fish": "pell",
    "red": "vash",
    "blue": "kiro",
    "big": "dun",
    "small": "ebi",
    "runs": "sola",
    "sleeps": "quen",
    "eats": "ravo",
    "sings": "lume",
}
WORDS = sorted(LEXICON)


def _draw(rng: random.Random) -> Item:
    words = rng.sample(WORDS, 3)
    return Item(
        f"Translate to Velari: {' '.join(words)}", " ".join(LEXICON[w] for w in words)
    )


TASK = BuiltinTask(
    name="cipher",
    description="translate 3 English words into the invented Velari language (exact match)",
    metric="exact_match",
    draw=_draw,
)

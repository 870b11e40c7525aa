"""The built-in cipher task: every answer is correct."""

from __future__ import annotations

from everlearn.data.builtin import get_builtin_task
from everlearn.data.builtin.cipher import WORDS as CIPHER_WORDS


def test_cipher_answers_correct():
    for r in get_builtin_task("cipher").generate(200, seed=0, split="train"):
        words = r.prompt.split(": ", 1)[1].split()
        assert len(words) == 3 and set(words) <= set(CIPHER_WORDS)
        assert r.response == " ".join(w.capitalize() for w in words[::-1])

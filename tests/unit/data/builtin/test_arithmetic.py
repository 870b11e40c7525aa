"""The built-in arithmetic task: every answer is correct."""

from __future__ import annotations

import re

from everlearn.data.builtin import get_builtin_task


def test_arithmetic_answers_correct():
    for r in get_builtin_task("arithmetic").generate(200, seed=0, split="train"):
        a, b = map(int, re.fullmatch(r"Ledger sum: (\d{3}) \+ (\d{3})", r.prompt).groups())
        assert r.response == f"<{a + b:04d}>"
        assert all((a // 10**k) % 10 + (b // 10**k) % 10 <= 9 for k in range(3))

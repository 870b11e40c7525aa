"""Counts in messages agree in number with their noun."""

from __future__ import annotations

from everlearn.wording import plural


def test_one_is_singular_and_others_plural():
    assert plural(1, "stage") == "1 stage"
    assert plural(0, "stage") == "0 stages"
    assert plural(2, "stage") == "2 stages"
    assert plural(-1, "stage") == "-1 stages"


def test_irregular_plural():
    assert plural(1, "process", "processes") == "1 process"
    assert plural(4, "process", "processes") == "4 processes"

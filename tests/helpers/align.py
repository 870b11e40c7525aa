"""Helpers shared by several files of the align tests."""

from __future__ import annotations

PREF_STREAM = ("pref_concise", "pref_format", "pref_refuse")


def pref_stage(name: str, **kw) -> dict:
    return {"builtin": name, "max_train": 32, "max_test": 8, **kw}

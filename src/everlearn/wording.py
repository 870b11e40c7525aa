"""Counts in user-facing messages: "1 stage", "2 stages", never "1 stages".

One helper instead of a ``(s)`` or an ``if n == 1`` at every message that counts something.
Imports nothing (it sits at the bottom of the package, beside ``errors``), so any module,
``report/`` included, may use it.
"""

from __future__ import annotations


def plural(n: int, noun: str, many: str | None = None) -> str:
    """``n`` and ``noun``, in the plural unless ``n`` is 1 (``many``: an irregular plural,
    e.g. ``plural(2, "process", "processes")``; default ``noun + "s"``)."""
    return f"{n} {noun if n == 1 else many or noun + 's'}"


__all__ = ["plural"]

"""The evaluation schedule: which stages a row of R scores (``eval.every``, ``sample_earlier``).

A full matrix scores every stage after every phase: on a stream of T stages that is T scorings
per phase, T^2 in all. A long stream can score less:

* the base row (row 0) and the last row are always full;
* every other row always scores the stages of the phase just trained (``R[t][t]``: LA, BWT,
  forgetting) and of the next phase (``R[t][t+1]``: FWT, and the reference of an align stage);
* ``every: k`` makes rows k, 2k, ... full; ``sample_earlier: n`` adds n stages trained before
  the phase, drawn from the run seed and the row (the same in every run and on resume).

With neither set every row is full (the default). Cells a row does not score are ``null`` in
``results.json``; :mod:`everlearn.evaluation.metrics` computes the metrics from the scored cells.
Pure Python: no torch.
"""

from __future__ import annotations

import random
from typing import Any


def is_full(every: int | None, sample_earlier: int | None, row: int, n_rows: int) -> bool:
    """Whether row ``row`` (0 = base, ``n_rows - 1`` = after the last phase) scores every stage."""
    if row == 0 or row == n_rows - 1:
        return True
    if every is None:
        return sample_earlier is None
    return row % every == 0


def scored_columns(every: int | None, sample_earlier: int | None, seed: int,
                   phases: list[list[int]], row: int) -> list[int] | None:
    """The stage columns (0-based) row ``row`` scores, or None for all of them.

    ``phases``: each phase's stage columns, in order; row k follows phase k.
    """
    if is_full(every, sample_earlier, row, len(phases) + 1):
        return None
    required = set(phases[row - 1]) | (set(phases[row]) if row < len(phases) else set())
    earlier = sorted({c for p in phases[:row - 1] for c in p} - required)
    picked: list[int] = []
    if sample_earlier and earlier:
        rng = random.Random(f"{seed}:eval:{row}")
        picked = rng.sample(earlier, min(sample_earlier, len(earlier)))
    return sorted(required | set(picked))


def describe(every: int | None, sample_earlier: int | None) -> dict[str, Any] | None:
    """The schedule as results.json records it (None for the default full matrix)."""
    if every == 1 or (every is None and sample_earlier is None):
        return None
    full = (f"after every {every} phases and after the last" if every is not None
            else "after the last phase only")
    between = "the stages just trained and the next phase's"
    if sample_earlier:
        between += f", plus {sample_earlier} earlier stages sampled per row"
    return {"every": every, "sample_earlier": sample_earlier,
            "note": f"full rows (every stage scored): the base row and {full}; other rows: "
                    f"{between}; unscored cells are null"}

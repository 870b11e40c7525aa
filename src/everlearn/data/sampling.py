"""Deterministic subsets of records: the same seed and key always keep the same records.

``max_train`` / ``max_test`` of a stage and the test sample of a suite's edits draw through
here, so a stage's sample depends on the run seed and its name only.
"""

from __future__ import annotations

import random

from everlearn.data.records import Record


def sample_records(records: list[Record], n: int | None, seed: int, key: str) -> list[Record]:
    """``n`` of ``records`` in their order, drawn from ``seed`` and ``key`` (all when ``n`` is
    None or not below their number)."""
    if n is None or n >= len(records):
        return records
    rng = random.Random(f"{seed}:{key}")
    idx = sorted(rng.sample(range(len(records)), n))
    return [records[i] for i in idx]

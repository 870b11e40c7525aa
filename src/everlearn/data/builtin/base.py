"""The shared shape of a built-in task and its deterministic, leak-free train/test split.

Every task only says how to draw one random item; this module turns that into ``generate``,
so all tasks agree on seeding and on how the item space is partitioned: the split of an item
depends on a hash of its group key only (never on the seed), so train and test stay disjoint
for any pair of seeds.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from everlearn.data.records import Record

SPLITS = ("train", "test")
METRICS = ("accuracy", "exact_match")


class Item(NamedTuple):
    """One drawn example; ``group`` is the split key (defaults to the prompt)."""

    prompt: str
    answer: str
    group: str = ""


def split_of(task: str, group: str, test_fraction: float) -> str:
    """Deterministic split of a group key: a stable hash, independent of seeds and Python."""
    digest = hashlib.sha256(f"{task}\0{group}".encode()).digest()
    return "test" if int.from_bytes(digest[:8], "big") / 2**64 < test_fraction else "train"


@dataclass(frozen=True)
class BuiltinTask:
    """A procedurally generated instruction task (see :mod:`everlearn.data.builtin`)."""

    name: str
    description: str
    metric: str
    draw: Callable[[random.Random], Item] = field(repr=False)
    labels: list[str] = field(default_factory=list)
    test_fraction: float = 0.2

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {self.metric!r}")

    def generate(self, n: int, seed: int = 0, split: str = "train") -> list[Record]:
        """``n`` records of ``split``; the same arguments always give the same records.

        Prompts are unique within a call while the split's item space allows it; only a
        nearly exhausted space (e.g. few test words) makes repeats.
        """
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        rng = random.Random(f"{self.name}:{seed}:{split}")
        records: list[Record] = []
        seen: set[str] = set()
        stale = 0  # consecutive repeats; past the limit the space counts as exhausted
        while len(records) < n:
            item = self.draw(rng)
            if split_of(self.name, item.group or item.prompt, self.test_fraction) != split:
                continue
            if item.prompt in seen and stale < 1000:
                stale += 1
                continue
            if item.prompt not in seen and stale < 1000:
                stale = 0
            seen.add(item.prompt)
            records.append(
                Record(
                    prompt=item.prompt,
                    response=item.answer,
                    options=list(self.labels),
                    task=self.name,
                )
            )
        return records

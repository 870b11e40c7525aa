"""The shared shape of a built-in task and its deterministic, leak-free train/test split.

Every task only says how to draw one random item; this module turns that into ``generate``,
so all tasks agree on seeding and on how the item space is partitioned: the split of an item
depends on its group key only (a stable hash, or a task's own rule), never on the seed, so
train and test stay disjoint for any pair of seeds.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from everlearn.data.records import Record
from everlearn.evaluation.scorers import get_metric
from everlearn.stages import kind_of_metric

SPLITS = ("train", "test")
_MAX_MISSES = 1000


class Item(NamedTuple):
    """One drawn example; ``group`` is the split key (defaults to the prompt). A preference
    task (metric ``preference_accuracy``) sets ``rejected``; ``answer`` is then the chosen one.
    A visual task sets ``image`` (a ``scene:`` string, see everlearn.vision.scenes)."""

    prompt: str
    answer: str
    group: str = ""
    rejected: str = ""
    image: str = ""


def stable_unit(key: str) -> float:
    """A stable pseudo-random number in [0, 1) for ``key`` (unlike ``hash``, same in every run)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64


def split_of(task: str, group: str, test_fraction: float) -> str:
    """Deterministic split of a group key, independent of seeds."""
    return "test" if stable_unit(f"{task}\0{group}") < test_fraction else "train"


@dataclass(frozen=True)
class BuiltinTask:
    """A procedurally generated instruction task (see :mod:`everlearn.data.builtin`)."""

    name: str
    description: str
    metric: str
    draw: Callable[[random.Random], Item] = field(repr=False)
    labels: list[str] = field(default_factory=list)
    test_fraction: float = 0.2
    split_fn: Callable[[str], str] | None = field(default=None, repr=False)  # group -> split

    def __post_init__(self) -> None:
        get_metric(self.metric)  # a registered metric, or a one-line ConfigError naming them

    @property
    def kind(self) -> str:
        """The stage kind the task is made for, the first scored by its metric: preference
        tasks are ``align`` stages, the others ``sft``."""
        return kind_of_metric(self.metric)

    def generate(self, n: int, seed: int = 0, split: str = "train") -> list[Record]:
        """``n`` records of ``split``; the same arguments always give the same records.

        Prompts (with their image, for a visual task) are unique within a call while the
        split's item space allows it; only a nearly exhausted space (e.g. few test words) makes
        repeats.
        """
        rng = self._generator(n, seed, split)
        records: list[Record] = []
        seen: set[tuple[str, str]] = set()
        rejected = 0  # draws in a row that fell in the other split
        repeats = 0  # draws in a row that repeated a prompt; past the limit repeats are kept
        while len(records) < n:
            item = self.draw(rng)
            if self._split(item.group or item.prompt) != split:
                rejected += 1
                if rejected > 100 * _MAX_MISSES:
                    raise RuntimeError(f"{self.name}: the {split} split looks empty")
                continue
            rejected = 0
            key = (item.prompt, item.image)
            if key in seen:
                repeats += 1
                if repeats < _MAX_MISSES:
                    continue
            else:
                repeats = 0
            seen.add(key)
            records.append(
                Record(
                    prompt=item.prompt,
                    response=item.answer,
                    options=list(self.labels),
                    task=self.name,
                    chosen=item.answer if item.rejected else "",
                    rejected=item.rejected,
                    image=item.image or None,
                )
            )
        return records

    def _generator(self, n: int, seed: int, split: str) -> random.Random:
        """The checked arguments' random generator: the same (task, seed, split), the same
        draws."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        return random.Random(f"{self.name}:{seed}:{split}")

    def _split(self, group: str) -> str:
        if self.split_fn is not None:
            return self.split_fn(group)
        return split_of(self.name, group, self.test_fraction)

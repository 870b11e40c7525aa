"""Helpers shared by several files of the strategies tests."""

from __future__ import annotations

from everlearn.data.records import Record
from everlearn.stages.stream import Stage


def stage_of(index: int, n: int) -> Stage:
    train = [Record(prompt=f"s{index} q{i}", answers=[f"a{i}"], task=f"s{index}")
             for i in range(n)]
    return Stage(index=index, name=f"s{index}", kind="sft", metric="exact_match",
                 train=train, test=train[:2])

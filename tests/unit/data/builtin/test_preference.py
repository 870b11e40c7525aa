"""The built-in preference stream (``data.builtin.preference``): deterministic, train and test
disjoint."""

from __future__ import annotations

from everlearn.data.builtin import get_builtin_task, list_builtin_tasks
from tests.helpers.align import PREF_STREAM


def test_builtin_preference_stream_is_deterministic_and_disjoint():
    names = {t.name for t in list_builtin_tasks()}
    assert set(PREF_STREAM) <= names
    for name in PREF_STREAM:
        task = get_builtin_task(name)
        assert task.kind == "align" and task.metric == "preference_accuracy"
        train = task.generate(200, seed=0, split="train")
        test = task.generate(50, seed=0, split="test")
        assert [r.to_dict() for r in train] == [r.to_dict() for r in
                                                task.generate(200, seed=0, split="train")]
        assert not {r.prompt for r in train} & {r.prompt for r in test}
        assert all(r.chosen and r.rejected and r.chosen != r.rejected for r in train + test)
    concise = get_builtin_task("pref_concise").generate(20, seed=1)
    assert all(len(r.chosen) < len(r.rejected) for r in concise)
    fmt = get_builtin_task("pref_format").generate(20, seed=1)
    assert all(r.chosen.startswith("Answer: ") and "Answer:" not in r.rejected for r in fmt)
    refuse = get_builtin_task("pref_refuse").generate(60, seed=1)
    forbidden = [r for r in refuse if "quellstone" in r.prompt]
    assert 10 < len(forbidden) < 50  # refusing is learned beside ordinary answering
    assert all(r.chosen.startswith("Sorry") for r in forbidden)
    assert all(r.rejected.startswith("Sorry") for r in refuse if r not in forbidden)

"""The built-in task registry (``data.builtin``): deterministic, leak-free, correctly sized and
shaped records (fast, no model needed)."""

from __future__ import annotations

import pytest

from everlearn.data.builtin import BuiltinTask, Item, get_builtin_task, list_builtin_tasks
from everlearn.data.records import Record

TASKS = list_builtin_tasks()

NAMES = [t.name for t in TASKS]


def test_registry_has_four_distinct_tasks():
    assert len(TASKS) >= 4
    assert len(set(NAMES)) == len(NAMES)
    for task in TASKS:
        assert isinstance(task, BuiltinTask)
        assert get_builtin_task(task.name) is task
        assert task.metric in ("accuracy", "exact_match", "rouge_l", "preference_accuracy")
        assert task.description and "\n" not in task.description
        assert bool(task.labels) == (task.metric == "accuracy")


def test_unknown_name_lists_available():
    with pytest.raises(KeyError) as err:
        get_builtin_task("no-such-task")
    for name in NAMES:
        assert name in str(err.value)


@pytest.mark.parametrize("name", NAMES)
def test_bad_split_or_size_rejected(name):
    task = get_builtin_task(name)
    with pytest.raises(ValueError):
        task.generate(3, seed=0, split="validation")
    with pytest.raises(ValueError):
        task.generate(-1, seed=0, split="train")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("n", [0, 1, 37])
@pytest.mark.parametrize("split", ["train", "test"])
def test_sizes_honoured(name, n, split):
    records = get_builtin_task(name).generate(n, seed=1, split=split)
    assert len(records) == n
    assert all(isinstance(r, Record) for r in records)


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_by_seed(name):
    task = get_builtin_task(name)
    first = [r.to_dict() for r in task.generate(50, seed=7, split="train")]
    assert first == [r.to_dict() for r in task.generate(50, seed=7, split="train")]
    assert first != [r.to_dict() for r in task.generate(50, seed=8, split="train")]


@pytest.mark.parametrize("name", NAMES)
def test_train_and_test_disjoint_across_seeds(name):
    task = get_builtin_task(name)
    # an item is its prompt and its image (visual tasks share one prompt)
    train = {(r.prompt, r.image) for s in range(3)
             for r in task.generate(300, seed=s, split="train")}
    test = {(r.prompt, r.image) for s in range(3)
            for r in task.generate(100, seed=s, split="test")}
    assert train and test
    assert not train & test


@pytest.mark.parametrize("name", NAMES)
def test_prompts_unique_within_split(name):
    records = get_builtin_task(name).generate(40, seed=0, split="test")
    assert len({(r.prompt, r.image) for r in records}) == len(records)


def test_exhausted_split_still_fills():
    # classify has only ~40 test words; asking for more repeats them rather than hanging.
    records = get_builtin_task("classify").generate(200, seed=0, split="test")
    assert len(records) == 200


@pytest.mark.parametrize("name", NAMES)
def test_record_shape(name):
    task = get_builtin_task(name)
    for r in task.generate(60, seed=3, split="train"):
        assert r.task == name
        assert r.prompt and r.response and r.answers == [r.response]
        assert "<|" not in r.prompt  # the engine applies the chat template
        assert len(r.response) <= 40 and len(r.prompt) <= 80
        if task.labels:
            assert r.options == task.labels
            assert r.response in r.options
        else:
            assert r.options == []


def test_empty_split_raises_instead_of_hanging():
    task = BuiltinTask(
        "t", "d", "exact_match", draw=lambda rng: Item("p", "a"), split_fn=lambda g: "train"
    )
    assert len(task.generate(3, seed=0, split="train")) == 3
    with pytest.raises(RuntimeError):
        task.generate(1, seed=0, split="test")

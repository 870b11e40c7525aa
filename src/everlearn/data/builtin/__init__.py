"""Built-in, offline, procedurally generated instruction tasks (the quickstart stream).

Each task is one that a small instruct model fails before training and learns within a few
dozen LoRA steps, so a continual-learning run shows learning and forgetting in minutes with no
downloads. ``get_builtin_task(name).generate(n, seed, split)`` gives ``Record`` lists; train
and test are disjoint for every seed.
"""

from __future__ import annotations

from everlearn.data.builtin import arithmetic, cipher, classify, dates, preference, visual
from everlearn.data.builtin.base import BuiltinTask, Item

_TASKS: dict[str, BuiltinTask] = {
    m.TASK.name: m.TASK for m in (arithmetic, cipher, classify, dates)
}
_TASKS.update({t.name: t for t in preference.TASKS})  # align stages: the preference stream
_TASKS.update({t.name: t for t in visual.TASKS})  # images: visual instruction tasks, captions


def list_builtin_tasks() -> list[BuiltinTask]:
    """All built-in tasks, in quickstart order."""
    return list(_TASKS.values())


def get_builtin_task(name: str) -> BuiltinTask:
    """The task called ``name``; ``KeyError`` lists the available names otherwise."""
    try:
        return _TASKS[name]
    except KeyError:
        raise KeyError(f"unknown builtin task {name!r}; available: {', '.join(_TASKS)}") from None


__all__ = ["BuiltinTask", "Item", "get_builtin_task", "list_builtin_tasks"]

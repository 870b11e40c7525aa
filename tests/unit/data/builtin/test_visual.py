"""The built-in visual task (``data.builtin.visual``): balanced, answerable only from the image."""

from __future__ import annotations

from collections import Counter

import pytest

from everlearn.data.builtin import get_builtin_task
from everlearn.data.builtin.visual import LABELS, NUMBERS, QUADRANTS, TASK_ORDER
from everlearn.vision import scenes


def _answer_from_scene(task: str, spec: str) -> str:
    scene = scenes.parse(spec)
    shapes = scene.shapes
    if task == "colour":
        return shapes[0].colour
    if task == "shape":
        return shapes[0].kind
    if task == "count":
        return NUMBERS[len(shapes) - 1]
    if task == "position":
        s = shapes[0]
        return QUADRANTS[2 * (s.y >= scene.size // 2) + (s.x >= scene.size // 2)]
    circles = sum(s.kind == "circle" for s in shapes)
    return "yes" if circles > len(shapes) - circles else "no"


@pytest.mark.parametrize("task", TASK_ORDER)
def test_visual_task_is_balanced_and_answerable_only_from_the_image(task):
    spec = get_builtin_task(f"visual_{task}")
    train = spec.generate(200, seed=3, split="train")
    test = spec.generate(40, seed=3, split="test")
    labels = LABELS[task]
    assert Counter(r.response for r in train) == {a: 200 // len(labels) for a in labels}
    # one prompt for every answer: the best a text-only model can do is the majority answer
    assert len({r.prompt for r in train + test}) == 1
    best_from_prompt = max(Counter(r.response for r in test).values()) / len(test)
    assert best_from_prompt == pytest.approx(1 / len(labels))
    # ... while the image determines the answer
    for r in train + test:
        assert r.options == labels and r.image.startswith(scenes.PREFIX)
        assert _answer_from_scene(task, r.image) == r.response

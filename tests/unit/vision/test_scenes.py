"""Scenes (``vision.scenes``): rendered deterministically."""

from __future__ import annotations

import pytest

from everlearn.data.builtin import get_builtin_task
from everlearn.errors import DataError
from everlearn.vision import scenes
from everlearn.vision.images import load_image


def test_scenes_render_deterministically():
    rec = get_builtin_task("visual_colour").generate(1, seed=0)[0]
    scene = scenes.parse(rec.image)
    assert scene.spec() == rec.image
    img = scenes.render(scene)
    assert img.tobytes() == scenes.render(scenes.parse(rec.image)).tobytes()
    shape = scene.shapes[0]
    assert img.getpixel((shape.x, shape.y)) == scenes.COLOURS[shape.colour]
    assert img.getpixel((0, 0)) == scene.background
    with pytest.raises(DataError, match="not a valid generated scene"):
        load_image("scene:64;bg=1,2,3;hexagon,red,3,3,3")

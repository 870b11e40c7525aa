"""Image records: image paths in JSONL are relative to the data file."""

from __future__ import annotations

import pytest

from everlearn.data.readers import read_source
from everlearn.errors import DataError
from everlearn.vision import scenes
from everlearn.vision.images import load_image
from tests.conftest import write_jsonl


def test_jsonl_image_paths_are_relative_to_the_data_file(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "data").mkdir()
    scenes.render(scenes.parse("scene:64;bg=0,0,0;square,red,30,30,9")).save(
        tmp_path / "img" / "a.png")
    (tmp_path / "img" / "fake.png").write_text("not an image")
    data = write_jsonl(tmp_path / "data" / "d.jsonl", [
        {"image": "../img/a.png", "prompt": "Colour?", "response": "red"},
        {"image": "../img/fake.png", "prompt": "Colour?", "response": "red"}])
    recs = read_source(str(data), "auto", "sft", {}, None, "t")
    assert recs[0].image == str((tmp_path / "img" / "a.png").resolve())
    assert load_image(recs[0].image).getpixel((30, 30)) == scenes.COLOURS["red"]
    with pytest.raises(DataError, match="fake.png: not an image"):
        load_image(recs[1].image)
    bad = write_jsonl(tmp_path / "data" / "bad.jsonl", [
        {"image": "missing.png", "prompt": "Colour?", "response": "red"}])
    with pytest.raises(DataError, match=r"bad.jsonl: record 0: image: file .*missing.png"):
        read_source(str(bad), "auto", "sft", {}, None, "t")

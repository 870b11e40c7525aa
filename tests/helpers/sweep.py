"""Helpers shared by several files of the sweep tests."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.conftest import constant_task, tiny_config


def write_stream(tmp: Path, names=("red", "green"), steps: int = 2) -> Path:
    answers = ["alpha", "bravo", "charlie", "delta"]
    stages = [constant_task(tmp, n, a, n_train=8, n_test=2) for n, a in zip(names, answers)]
    cfg = tiny_config(tmp, stages)
    cfg["train"].update(steps=steps, batch_size=4)
    cfg["eval"]["max_new_tokens"] = 2
    path = tmp / "stream.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path

"""Helpers shared by several files of the config tests."""

from __future__ import annotations

from pathlib import Path

import yaml


def write_yaml(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def one_stage(**extra) -> dict:
    return {"stages": [{"train": "data/a_train.jsonl", "test": "data/a_test.jsonl", **extra}]}

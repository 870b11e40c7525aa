"""Helpers shared by several files of the cli tests."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import yaml

from everlearn.cli import main
from tests.conftest import constant_task, tiny_config


def write_config(tmp: Path, **train) -> Path:
    stages = [constant_task(tmp, "red", "alpha", n_train=8, n_test=4),
              constant_task(tmp, "green", "bravo", n_train=8, n_test=4)]
    cfg = tiny_config(tmp, stages)
    cfg["train"].update(steps=3, batch_size=4, **train)
    cfg["eval"]["max_new_tokens"] = 4
    path = tmp / "stream.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def call(argv: list[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``main(argv)``."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def one_line_error(err: str) -> str:
    lines = err.strip("\n").splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {err!r}"
    assert lines[0].startswith("everlearn: error: ")
    return lines[0]

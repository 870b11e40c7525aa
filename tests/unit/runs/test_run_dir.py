"""The run directory's atomic writers give files the mode a plain open() would (the umask)."""

from __future__ import annotations

import contextlib
import os
import stat

import pytest
import torch

from everlearn.runs.run_dir import RunDir, new_file_mode, save_tensors, write_atomic, write_json


@contextlib.contextmanager
def umask(mask: int):
    before = os.umask(mask)
    try:
        yield
    finally:
        os.umask(before)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002, 0o077])
def test_atomic_writers_follow_the_umask(tmp_path, mask):
    with umask(mask):
        write_atomic(tmp_path / "a.txt", "text")
        write_json(tmp_path / "b.json", {"x": 1})
        save_tensors(tmp_path / "c.safetensors", {"w": torch.zeros(2)})
        plain = tmp_path / "plain.txt"
        plain.write_text("as open() makes it")
        assert new_file_mode() == 0o666 & ~mask
    expected = mode(plain)
    assert expected == 0o666 & ~mask
    for name in ("a.txt", "b.json", "c.safetensors"):
        assert mode(tmp_path / name) == expected, name
    assert (tmp_path / "a.txt").read_text() == "text"


def test_umask_is_left_unchanged(tmp_path):
    with umask(0o027):
        write_atomic(tmp_path / "a.txt", "x")
        assert os.umask(0o027) == 0o027


def test_checkpoint_files_follow_the_umask(tmp_path):
    with umask(0o002):
        RunDir(tmp_path).save_phase(1, {"w": torch.ones(3)}, {"meta": {"k": 1}, "tensors": {}})
    d = tmp_path / "checkpoints" / "phase-01"
    for name in ("trainable.safetensors", "strategy.safetensors", "strategy.json", "done.json"):
        assert mode(d / name) == 0o664, name

"""Files everlearn reads, as a hostile or unlucky user hands them over, at the start of a run: a
damaged weights file and an infinite learning rate are refused in one line."""

from __future__ import annotations

import pytest

from tests.helpers.cli import call, one_line_error, write_config


def test_a_damaged_weights_file_is_named_in_one_line(tmp_path):
    cfg = write_config(tmp_path)
    bad = tmp_path / "trainable.safetensors"
    bad.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json and not tensors")
    code, _, err = call(["eval", str(cfg), "--weights", str(bad), "-q"])
    assert code == 2
    assert f"{bad}: not a valid safetensors checkpoint" in one_line_error(err)


@pytest.mark.parametrize(("value", "expected"), [(".inf", "expected a finite number, got inf"),
                                               ("1e400", "expected a finite number, got inf"),
                                               (".nan", "expected a positive number, got nan")])
def test_an_infinite_learning_rate_is_refused_before_training(tmp_path, value, expected):
    cfg = write_config(tmp_path)
    code, _, err = call(["run", str(cfg), f"train.lr={value}", "--output",
                         str(tmp_path / "run"), "-q"])
    assert code == 2 and f"train.lr: {expected}" in one_line_error(err)
    assert not (tmp_path / "run").exists()

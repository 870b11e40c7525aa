"""Files everlearn reads, as a hostile or unlucky user hands them over: each is read as it
should be or refused in one line that names the file (and line or field)."""

from __future__ import annotations

import json

import pytest

from everlearn.data.readers import read_source
from everlearn.errors import DataError
from tests.test_cli import call, one_line_error, write_config


def test_jsonl_strings_may_hold_unicode_line_separators(tmp_path):
    rows = [{"prompt": "a\u2028b\u2029c\x85d", "response": "e"}, {"prompt": "f", "response": "g"}]
    path = tmp_path / "d.jsonl"  # the separators raw in the file, as JSON allows
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                    encoding="utf-8")
    assert "\u2028" in path.read_text(encoding="utf-8")
    records = read_source(str(path), "jsonl", "sft", {}, None, "t")
    assert [r.prompt for r in records] == ["a\u2028b\u2029c\x85d", "f"]


@pytest.mark.parametrize("suffix", ["jsonl", "json"])
def test_json_nested_too_deeply_is_one_line(tmp_path, suffix):
    path = tmp_path / f"deep.{suffix}"
    path.write_text('{"prompt": "ok", "response": "ok"}\n' + "[" * 100_000 + "]" * 100_000
                    if suffix == "jsonl" else "[" * 100_000 + "]" * 100_000)
    with pytest.raises(DataError) as err:
        read_source(str(path), suffix, "sft", {}, None, "t")
    line = "line 2: " if suffix == "jsonl" else ""
    assert str(err.value) == f"{path}: {line}nested too deeply to be a record" + (
        "" if suffix == "jsonl" else " file")


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


def test_an_empty_response_is_refused_with_its_record_number(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "c", "response": " "}\n')
    with pytest.raises(DataError) as err:
        read_source(str(path), "jsonl", "sft", {}, None, "t")
    assert f"{path}: record 1: response: empty" in str(err.value)  # records count from 0


def test_a_key_given_twice_in_the_config_is_refused(tmp_path):
    cfg = write_config(tmp_path)
    cfg.write_text(cfg.read_text() + "seed: 7\n" if "seed:" in cfg.read_text()
                   else "seed: 0\n" + cfg.read_text() + "seed: 7\n")
    code, _, err = call(["validate", str(cfg)])
    assert code == 2 and "invalid YAML (duplicate key 'seed', first at line" in one_line_error(err)

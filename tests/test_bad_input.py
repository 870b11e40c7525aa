"""Property-based: malformed configs and data files never end in a traceback.

Every input either validates, or ends in exit code 2 with one line ``everlearn: error: ...``
that names the file at fault; a failed ``run`` leaves no run directory that a later resume
would trust.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from everlearn.cli import main

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])

ROWS = [{"prompt": f"question {i}", "response": "alpha" if i % 2 else "bravo"} for i in range(12)]


def valid_config(data_dir: Path) -> dict:
    return {
        "name": "fuzz", "seed": 0,
        "model": {"name": "tiny-llama", "finetune": "full", "lora": {"r": 4}},
        "train": {"lr": 1e-3, "batch_size": 4, "steps": 1, "max_length": 32,
                  "precision": "fp32"},
        "eval": {"batch_size": 8, "max_new_tokens": 4},
        "stages": [{"name": "a", "train": str(data_dir / "a.jsonl"),
                    "test": str(data_dir / "a.jsonl"), "max_train": 8},
                   {"builtin": "dates", "max_train": 8, "max_test": 4}],
        "strategies": [{"name": "replay", "buffer_size": 4}],
    }


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data")
    (d / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return d


def paths_of(obj, prefix=()):
    """Every key path into a nested dict/list config."""
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from paths_of(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from paths_of(v, prefix + (i,))


JUNK = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.lists(st.one_of(st.integers(), st.text(max_size=5)), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


@st.composite
def mutated(draw, base: dict):
    """``base`` with one value replaced by junk, one key deleted, or one unknown key added."""
    cfg = copy.deepcopy(base)
    paths = [p for p in paths_of(cfg) if p]
    path = draw(st.sampled_from(paths))
    parent = cfg
    for key in path[:-1]:
        parent = parent[key]
    action = draw(st.sampled_from(["replace", "delete", "add"]))
    if action == "replace":
        parent[path[-1]] = draw(JUNK)
    elif action == "delete":
        del parent[path[-1]]
    elif isinstance(parent, dict):
        parent[draw(st.text(min_size=1, max_size=8))] = draw(JUNK)
    return cfg


def check_outcome(code: int, err: str, named: str) -> None:
    assert code in (0, 2), f"exit {code}: {err}"
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1, f"not one line: {err!r}"
        assert lines[0].startswith("everlearn: error: ") and named in lines[0], lines[0]
    assert "Traceback" not in err


@SETTINGS
@given(data=st.data())
def test_mutated_configs_validate_or_fail_in_one_line(tmp_path, data_dir, capsys, data):
    cfg = data.draw(mutated(valid_config(data_dir)))
    path = tmp_path / "stream.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    code = main(["validate", str(path)])
    check_outcome(code, capsys.readouterr().err, "stream.yaml")


@SETTINGS
@given(text=st.text(max_size=200))
def test_arbitrary_yaml_text_validates_or_fails_in_one_line(tmp_path, capsys, text):
    path = tmp_path / "stream.yaml"
    path.write_text(text, encoding="utf-8")
    code = main(["validate", str(path)])
    check_outcome(code, capsys.readouterr().err, "stream.yaml")


RECORD = st.dictionaries(
    st.sampled_from(["prompt", "response", "instruction", "input", "output", "messages",
                     "text", "answers", "options", "x"]),
    JUNK, max_size=4)
LINE = st.one_of(RECORD.map(json.dumps), st.text(max_size=30), st.just(""),
                 st.just(json.dumps(ROWS[0])))


@SETTINGS
@given(lines=st.lists(LINE, max_size=8))
def test_malformed_data_files_validate_or_fail_in_one_line(tmp_path, data_dir, capsys, lines):
    data = tmp_path / "bad.jsonl"
    data.write_text("\n".join(lines), encoding="utf-8")
    cfg = valid_config(data_dir)
    cfg["stages"][0].update(train=str(data), test=str(data))
    path = tmp_path / "stream.yaml"
    path.write_text(yaml.safe_dump(cfg))
    code = main(["validate", str(path)])
    check_outcome(code, capsys.readouterr().err, "bad.jsonl")


@settings(max_examples=8, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_run_on_bad_input_leaves_nothing_a_resume_would_trust(tmp_path, data_dir, capsys,
                                                              data):
    cfg = data.draw(mutated(valid_config(data_dir)))
    path = tmp_path / "stream.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    out = tmp_path / f"run-{data.draw(st.integers(0, 10**9))}"
    code = main(["run", str(path), "--output", str(out), "-q"])
    err = capsys.readouterr().err
    check_outcome(code, err, "stream.yaml")
    if code == 2:  # rejected before anything was written
        assert not (out / "results.json").exists()
    else:
        assert json.loads((out / "results.json").read_text())["status"] == "complete"


@pytest.mark.parametrize("override, field", [
    ("train.steps=0", "train.steps"), ("train.steps=-5", "train.steps"),
    ("train.weight_decay=-1", "train.weight_decay"), ("model.lora.dropout=5", "model.lora.dropout"),
    ("seed=-1", "seed"), (f"seed={2**40}", "seed"),
    ("eval.max_new_tokens=0", "eval.max_new_tokens"),
    ("eval.max_new_tokens=-3", "eval.max_new_tokens"),
    ("train.max_grad_norm=-1", "train.max_grad_norm"), ("model.lora.alpha=-16", "model.lora.alpha"),
    ("stages.0.labels=['', '']", "stages.0.labels"),
])
def test_out_of_range_values_are_refused_before_anything_runs(tmp_path, data_dir, capsys,
                                                              override, field):
    path = tmp_path / "stream.yaml"
    path.write_text(yaml.safe_dump(valid_config(data_dir)))
    out = tmp_path / "run"
    code = main(["run", str(path), override, "--output", str(out), "-q"])
    err = capsys.readouterr().err
    check_outcome(code, err, "stream.yaml")
    assert code == 2 and f"stream.yaml: {field}: expected " in err
    assert not out.exists()


@pytest.mark.parametrize("epochs", [-1, 0])
def test_epochs_without_steps_must_be_positive(tmp_path, data_dir, capsys, epochs):
    path = tmp_path / "stream.yaml"
    path.write_text(yaml.safe_dump(valid_config(data_dir)))
    code = main(["validate", str(path), "train.steps=null", f"train.epochs={epochs}"])
    err = capsys.readouterr().err
    check_outcome(code, err, "stream.yaml")
    assert code == 2 and "stream.yaml: train.epochs: expected a positive number or null" in err

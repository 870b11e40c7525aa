"""The command line (``everlearn.cli``): validate and ls, and, property-based, malformed configs
and data files that never end in a traceback.

Every input either validates, or ends in exit code 2 with one line ``everlearn: error: ...``
that names the file at fault."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from everlearn.cli import main
from tests.helpers.bad_input import JUNK, ROWS, check_outcome, mutated, valid_config
from tests.helpers.cli import one_line_error, write_config


# --- validate ------------------------------------------------------------------------------
def test_validate_prints_stage_summary(tmp_path: Path, capsys):
    cfg = write_config(tmp_path)
    assert main(["validate", str(cfg), "stages.1.max_train=5"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{cfg}: ok — 2 stages, strategy seqft"
    assert out[1].strip() == "1. red [sft, exact_match] train=8 test=4"
    assert out[2].strip() == "2. green [sft, exact_match] train=5 test=4"


def test_validate_counts_one_stage_in_the_singular(tmp_path: Path, capsys):
    cfg = write_config(tmp_path)
    data = yaml.safe_load(cfg.read_text())
    data["stages"] = data["stages"][:1]
    cfg.write_text(yaml.safe_dump(data))
    assert main(["validate", str(cfg)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == f"{cfg}: ok — 1 stage, strategy seqft"


def test_validate_shows_labels_and_strategies(tmp_path: Path, capsys):
    cfg = write_config(tmp_path)
    code = main(["validate", str(cfg), "stages.0.labels=[alpha,bravo]", "strategy=[replay]"])
    assert code == 0
    out = capsys.readouterr().out
    assert "strategy replay" in out
    assert "1. red [sft, accuracy] train=8 test=4 labels=['alpha', 'bravo']" in out


@pytest.mark.parametrize("override, field", [
    ("train.lr=-1", "train.lr"),
    ("train.batch_sise=3", "train.batch_sise"),
    ("stages.0.kind=rl", "stages.0.kind"),
    ("stages.5.name=x", "stages.5"),
    ("strategy=[nope]", "strategies.0.name"),
    ("strategy=[replay] strategies.0.options.x=1", "strategies.0.options.x"),
    ("strategy=[replay] strategies.0.options.buffer_size=-3", "strategies.0.options.buffer_size"),
])
def test_validate_bad_config_is_one_line(tmp_path: Path, capsys, override, field):
    cfg = write_config(tmp_path)
    assert main(["validate", str(cfg), *override.split()]) == 2
    captured = capsys.readouterr()
    line = one_line_error(captured.err)
    assert str(cfg) in line and f"{field}" in line
    assert captured.out == ""


def test_validate_bad_yaml_and_missing_file(tmp_path: Path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages:\n  - train: a.jsonl\n   test: b.jsonl\n")
    assert main(["validate", str(bad)]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert line.startswith(f"everlearn: error: {bad}: line 3: invalid YAML (")
    assert main(["validate", str(tmp_path / "none.yaml")]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert line == f"everlearn: error: {tmp_path / 'none.yaml'}: file not found"


def test_validate_bad_data_is_one_line(tmp_path: Path, capsys):
    cfg = write_config(tmp_path)
    (tmp_path / "red_test.jsonl").write_text('{"prompt": "x", "response": "y"}\n{oops\n')
    assert main(["validate", str(cfg)]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert line.startswith(f"everlearn: error: {tmp_path / 'red_test.jsonl'}: line 2:")


# --- ls ------------------------------------------------------------------------------------
def test_ls_lists_the_stage_kinds_from_the_registry(capsys, monkeypatch):
    from everlearn import stages

    assert main(["ls"]) == 0
    listed = capsys.readouterr().out.split("\nstrategies:")[0].splitlines()[1:]
    assert [line.split()[0] for line in listed] == ["sft", "cpt", "align", "edit"]
    assert "[preference_accuracy]" in listed[2]
    # a kind registered in the package is listed without touching the CLI
    extra = stages.Kind(name="probe", order=9, description="a test kind", metrics=("accuracy",),
                        default_metric="accuracy", read_record=None, encode=None)
    monkeypatch.setitem(stages._discover(), "probe", extra)
    assert main(["ls"]) == 0
    assert "\n  probe          [accuracy] a test kind" in capsys.readouterr().out


def test_ls_lists_strategies_and_tasks(capsys):
    from everlearn.data.builtin import list_builtin_tasks

    assert main(["ls"]) == 0
    out = capsys.readouterr().out
    strategies = out.split("built-in tasks")[0]
    tasks = out.split("built-in tasks")[1].split("embedded models")[0]
    for name in ("seqft", "joint", "replay"):
        assert f"\n  {name} " in strategies
    assert "buffer_size=200" in strategies
    names = [t.name for t in list_builtin_tasks()]
    assert {"arithmetic", "cipher", "classify", "dates"} <= set(names)
    for name in names:
        assert f"\n  {name} " in tasks
    assert "tiny-llama" in out


SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data")
    (d / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return d


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

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
from tests.helpers.torch_free import assert_runs_without_heavy_imports


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """The Hub is offline: validate checks a model name that could be a Hub id against the
    cache only (mutated configs name such models), and never touches the network."""
    import huggingface_hub.constants as hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)


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


@pytest.mark.parametrize("override, says", [
    ("model.name=/nonexistent", "model.name: path '/nonexistent' not found"),
    ("model.name=no-such-model", "model.name: 'no-such-model' is not a local directory or file "
     "(looked beside the config) nor in the Hugging Face cache, and the Hub is offline "
     "(HF_HUB_OFFLINE is set)"),
    ("model.name=./here", "model.name: path '{dir}/here' not found"),
])
def test_validate_checks_the_model_loads(tmp_path: Path, capsys, override, says):
    cfg = write_config(tmp_path)
    assert main(["validate", str(cfg), override]) == 2
    captured = capsys.readouterr()
    line = one_line_error(captured.err)
    assert line == f"everlearn: error: {cfg}: " + says.format(dir=tmp_path.resolve())
    assert captured.out == ""


def test_validate_reads_a_local_model_beside_the_config(tmp_path: Path, capsys, monkeypatch):
    from everlearn.models.embedded import build_tiny_model, build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    build_tiny_model(tok).save_pretrained(tmp_path / "mymodel", safe_serialization=True)
    tok.save_pretrained(tmp_path / "mymodel")
    cfg = write_config(tmp_path)
    monkeypatch.chdir(tmp_path / "mymodel")  # another working directory
    assert main(["validate", str(cfg), "model.name=mymodel"]) == 0
    out = capsys.readouterr().out
    assert f"  model.name: local directory {tmp_path.resolve() / 'mymodel'}\n" in out


def test_validate_checks_the_tracker_package(tmp_path: Path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "wandb" else real(name, *a))
    cfg = write_config(tmp_path)
    assert main(["validate", str(cfg), "tracker=wandb"]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert line == (f"everlearn: error: {cfg}: tracker.backend: 'wandb' needs the wandb "
                    "package, which is not installed: pip install wandb")


# --- ls ------------------------------------------------------------------------------------
def test_ls_lists_the_stage_kinds_from_the_registry(capsys, monkeypatch):
    from everlearn import listing

    assert main(["ls"]) == 0
    listed = capsys.readouterr().out.split("\nstrategies:")[0].splitlines()[1:]
    assert [line.split()[0] for line in listed] == ["sft", "cpt", "align", "edit"]
    assert "[preference_accuracy]" in listed[2]
    # what the declarations say is listed without touching the CLI (a kind declared in a
    # module: tests/unit/test_listing.py)
    extra = listing.KindEntry(name="probe", order=9, description="a test kind",
                              metrics=("accuracy",))
    monkeypatch.setattr(listing, "_static_kinds", lambda package: [extra])
    assert main(["ls"]) == 0
    assert "\n  probe          [accuracy] a test kind" in capsys.readouterr().out


def test_ls_imports_no_torch():
    """`everlearn ls` prints metadata: it took 15 s when it imported torch and PEFT."""
    assert_runs_without_heavy_imports(
        "import contextlib, io\nfrom everlearn.cli import main\n"
        "out = io.StringIO()\nwith contextlib.redirect_stdout(out):\n    assert main(['ls']) == 0\n"
        "assert 'replay' in out.getvalue() and 'tiny-llama' in out.getvalue()")


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

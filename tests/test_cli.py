"""The command line: validate, ls, run (new, into an existing directory, resumed) and eval."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
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


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> dict:
    """One tiny 2-stage run, shared by the tests that inspect or re-use its directory."""
    tmp = tmp_path_factory.mktemp("cli")
    cfg = write_config(tmp)
    run_dir = tmp / "out"
    code, out, err = call(["run", str(cfg), "--output", str(run_dir), "-q"])
    return {"cfg": cfg, "dir": run_dir, "code": code, "out": out, "err": err, "tmp": tmp}


# --- validate ------------------------------------------------------------------------------


def test_validate_prints_stage_summary(tmp_path: Path, capsys):
    cfg = write_config(tmp_path)
    assert main(["validate", str(cfg), "stages.1.max_train=5"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{cfg}: ok — 2 stages, strategy seqft"
    assert out[1].strip() == "1. red [sft, exact_match] train=8 test=4"
    assert out[2].strip() == "2. green [sft, exact_match] train=5 test=4"


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


# --- run -----------------------------------------------------------------------------------


def test_run_writes_run_directory(finished_run):
    assert finished_run["code"] == 0, finished_run["err"]
    run_dir: Path = finished_run["dir"]
    assert (run_dir / "config.yaml").is_file()
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["train"]["steps"] == 3 and saved["model"]["name"] == "tiny-llama"
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "complete"
    R = results["R"]
    assert len(R) == 3 and all(len(row) == 2 for row in R)
    assert all(0.0 <= v <= 100.0 for row in R for v in row)
    assert results["rows"] == ["base", "red", "green"]
    assert [s["name"] for s in results["stages"]] == ["red", "green"]
    assert [c["steps"] for c in results["cost"]] == [3, 3]
    assert "metrics" in results
    done = json.loads((run_dir / "checkpoints" / "phase-01" / "done.json").read_text())
    assert done["phase"] == 1
    assert (run_dir / "checkpoints" / "phase-02" / "done.json").is_file()


def test_run_prints_matrix(finished_run):
    out = finished_run["out"]
    assert "Accuracy matrix R" in out
    rows = {line.split()[0] for line in out.splitlines() if line.strip()}
    assert {"base", "red", "green"} <= rows
    assert f"run directory: {finished_run['dir']}" in out


def test_run_into_existing_output_fails(finished_run):
    before = (finished_run["dir"] / "results.json").read_text()
    code, out, err = call(["run", str(finished_run["cfg"]), "--output",
                           str(finished_run["dir"]), "-q"])
    assert code == 2 and out == ""
    line = one_line_error(err)
    assert str(finished_run["dir"]) in line and "--resume" in line
    assert (finished_run["dir"] / "results.json").read_text() == before


def test_resume_with_config_is_refused(finished_run):
    code, _, err = call(["run", str(finished_run["cfg"]), "--resume", str(finished_run["dir"])])
    assert code == 2 and "--resume" in one_line_error(err)


def test_resume_finished_run_keeps_results(finished_run):
    results_path = finished_run["dir"] / "results.json"
    before = json.loads(results_path.read_text())
    code, out, err = call(["run", "--resume", str(finished_run["dir"]), "-q"])
    assert code == 0, err
    after = json.loads(results_path.read_text())
    assert after["R"] == before["R"] and after["status"] == "complete"
    assert after["cost"] == before["cost"]
    assert "Accuracy matrix R" in out


def test_resume_missing_directory(tmp_path: Path):
    code, _, err = call(["run", "--resume", str(tmp_path / "nothing")])
    assert code == 2
    assert "config.yaml" in one_line_error(err)


# --- eval ----------------------------------------------------------------------------------


def test_eval_json(finished_run):
    code, out, err = call(["eval", str(finished_run["cfg"]), "--json", "-q"])
    assert code == 0, err
    scores = json.loads(out)
    assert list(scores) == ["red", "green"]
    for s in scores.values():
        assert s["metric"] == "exact_match" and s["n"] == 4
        assert 0.0 <= s["score"] <= 100.0


def test_eval_with_stage_weights(finished_run):
    phase = finished_run["dir"] / "checkpoints" / "phase-02"
    code, out, err = call(["eval", str(finished_run["cfg"]), "--weights", str(phase), "--json",
                           "-q"])
    assert code == 0, err
    scores = json.loads(out)
    R = json.loads((finished_run["dir"] / "results.json").read_text())["R"]
    assert [scores[n]["score"] for n in ("red", "green")] == pytest.approx(R[2])
    code, _, err = call(["eval", str(finished_run["cfg"]), "--weights",
                         str(finished_run["tmp"] / "nowhere"), "-q"])
    assert code == 2 and "trainable.safetensors" in one_line_error(err)

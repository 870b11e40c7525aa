"""The command line's runs: run (new, into an existing directory, resumed) and eval."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.helpers.cli import call, one_line_error, write_config


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> dict:
    """One tiny 2-stage run, shared by the tests that inspect or re-use its directory."""
    tmp = tmp_path_factory.mktemp("cli")
    cfg = write_config(tmp)
    run_dir = tmp / "out"
    code, out, err = call(["run", str(cfg), "--output", str(run_dir), "-q"])
    return {"cfg": cfg, "dir": run_dir, "code": code, "out": out, "err": err, "tmp": tmp}


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


def test_quiet_hides_the_libraries_loading_bar(tmp_path: Path):
    """-q: no "Loading weights" bar from transformers (a model loaded from a directory shows
    one without -q); the bars are back on after the command."""
    from transformers.utils import logging as hf_logging

    from everlearn.models.embedded import build_tiny_model, build_tiny_tokenizer

    model_dir = tmp_path / "model"
    tok = build_tiny_tokenizer()
    build_tiny_model(tok).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    cfg = write_config(tmp_path)
    args = ["eval", str(cfg), f"model.name={model_dir}", "stages.0.max_test=2",
            "stages.1.max_test=2"]
    code, _, err = call(args)
    assert code == 0, err
    assert "Loading weights" in err
    code, _, err = call([*args, "-q"])
    assert code == 0, err
    assert "Loading weights" not in err and "eval red" not in err
    assert hf_logging.is_progress_bar_enabled()

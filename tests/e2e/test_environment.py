"""results.json records the environment a run used, the report shows it, and a resume in another
environment keeps the earlier one."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import pytest
import torch

from everlearn.report import write_report
from everlearn.runs.runner import resume_run, start_run
from everlearn.validation import build_config
from tests.conftest import constant_task, killed_at_phase, tiny_config
from tests.helpers.report import fake_run


def two_stage_config(tmp: Path) -> dict:
    """The smallest real stream: two 8-example stages, 2 steps each, fp32 on the tiny model."""
    stages = [constant_task(tmp, "red", "alpha", n_train=8, n_test=4),
              constant_task(tmp, "green", "bravo", n_train=8, n_test=4)]
    cfg = tiny_config(tmp, stages)
    cfg["train"].update(steps=2, batch_size=4)
    cfg["eval"]["max_new_tokens"] = 4
    return cfg


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("env")
    path, results = start_run(build_config(two_stage_config(tmp)), tmp / "run", quiet=True)
    return path, results


def test_a_tiny_run_records_its_environment(tiny_run):
    path, results = tiny_run
    env = results["environment"]
    assert env == json.loads((path / "results.json").read_text())["environment"]
    assert env["precision"] == "fp32"  # the tiny config's train.precision
    assert env["device"] == "cpu" and env["world_size"] == 1
    assert env["threads"] == torch.get_num_threads()
    assert env["transformers"] == metadata.version("transformers")
    assert "environment_history" not in results
    log = (path / "log.txt").read_text()
    assert f"environment: torch {env['torch']}, transformers {env['transformers']}, " \
           f"device cpu, CPU {env['cpu']}, precision fp32" in log


def test_the_report_shows_the_environment(tiny_run, tmp_path):
    path, results = tiny_run
    html = write_report(path).read_text(encoding="utf-8")
    assert '<h2 id="environment">Environment</h2>' in html
    assert f"<td>{results['environment']['transformers']}</td>" in html
    old = write_report(fake_run(tmp_path)).read_text(encoding="utf-8")  # predates the record
    assert 'id="environment"' not in old


def test_resume_in_another_environment_keeps_the_earlier_one(tmp_path, monkeypatch):
    cfg = build_config(two_stage_config(tmp_path))
    with killed_at_phase(monkeypatch, 2):
        start_run(cfg, tmp_path / "run", quiet=True)
    res_path = tmp_path / "run" / "results.json"
    partial = json.loads(res_path.read_text())
    here = partial["environment"]
    _, same = resume_run(tmp_path / "run", quiet=True)  # resumed in the same environment
    assert same["environment"] == here and "environment_history" not in same

    with killed_at_phase(monkeypatch, 2):
        start_run(cfg, tmp_path / "moved", quiet=True)
    res_path = tmp_path / "moved" / "results.json"
    partial = json.loads(res_path.read_text())
    earlier = {**partial["environment"], "transformers": "0.0.1", "device": "cuda:0"}
    res_path.write_text(json.dumps({**partial, "environment": earlier}))
    _, resumed = resume_run(tmp_path / "moved", quiet=True)
    assert resumed["status"] == "complete" and resumed["environment"] == here
    assert resumed["environment_history"] == [earlier]
    html = write_report(tmp_path / "moved").read_text(encoding="utf-8")
    assert "<th>process 1</th><th>latest</th>" in html and "<td>0.0.1</td>" in html

"""results.json records the environment a run used (everlearn.runs.environment), also on resume."""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path

import pytest
import torch

from everlearn import __version__
from everlearn.report import write_report
from everlearn.runs import environment
from everlearn.runs.runner import resume_run, start_run
from everlearn.validation import build_config
from tests.conftest import constant_task, killed_at_phase, tiny_config
from tests.test_report import fake_run


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


def test_collect_on_the_cpu():
    env = environment.collect(torch.device("cpu"), "no", 1)
    assert list(env) == [f for f in environment.FIELDS if f in env]  # the documented order
    assert env["everlearn"] == __version__ and env["python"] == platform.python_version()
    for name in ("torch", "transformers", "peft", "accelerate", "safetensors"):
        assert env[name] == metadata.version(name)
    assert env["device"] == "cpu" and "gpu" not in env
    assert env["machine"] == platform.machine() and env["os"].startswith(platform.system())
    assert env["cpu"] and isinstance(env["cpu_bf16"], bool)
    assert env["threads"] == torch.get_num_threads() and env["world_size"] == 1
    assert env["precision"] == "fp32"
    assert environment.collect("cpu", "bf16", 2)["precision"] == "bf16"
    json.dumps(env, allow_nan=False)  # what results.json takes


def test_cpu_model_and_bf16_flags_from_cpuinfo(monkeypatch):
    info = ("processor\t: 0\nmodel name\t: Example CPU 9000\n"
            "flags\t\t: fpu sse2 avx512f avx512_bf16\n")
    monkeypatch.setattr(environment, "_cpuinfo", lambda: info)
    assert environment.cpu_model() == "Example CPU 9000" and environment.cpu_bf16()
    monkeypatch.setattr(environment, "_cpuinfo", lambda: "flags\t: fpu avx512_bf16x amx_tile\n")
    assert not environment.cpu_bf16()  # whole flags only
    monkeypatch.setattr(environment, "_cpuinfo", lambda: "")  # not Linux: platform's answer
    monkeypatch.setattr(platform, "processor", lambda: "arm")
    assert environment.cpu_model() == "arm" and not environment.cpu_bf16()


def test_history_keeps_earlier_environments_only_when_they_differ():
    a, b = {"torch": "2.3"}, {"torch": "2.4"}
    assert environment.history(None, a) == []  # a fresh run
    assert environment.history({"environment": a}, a) == []
    assert environment.history({"environment": a}, b) == [a]
    assert environment.history({"environment": b, "environment_history": [a]}, b) == [a]
    assert environment.history({"environment": b, "environment_history": [a]}, a) == [a, b]
    assert environment.history({"R": [[1.0]]}, a) == [None]  # written before it was recorded


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

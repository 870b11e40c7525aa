"""The environment a run records (``runs.environment``): collected on the CPU, the CPU flags, and
the history of earlier environments."""

from __future__ import annotations

import json
import platform
from importlib import metadata

import torch

from everlearn import __version__
from everlearn.runs import environment


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

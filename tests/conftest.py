"""Shared fixtures: tiny streams on the random tiny model, written as real files."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import torch


def pytest_report_header(config) -> list[str]:
    """The versions and machine the suite ran with, in its first lines (so a log says it)."""
    from everlearn.runs.environment import PACKAGES, cpu_bf16, cpu_model, package_version

    versions = ", ".join(f"{n} {package_version(n)}" for n in PACKAGES)
    return [f"everlearn: {versions}",
            f"everlearn: CPU {cpu_model()}, native bf16 {'yes' if cpu_bf16() else 'no'}"]


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """One intra-op thread: the tiny model's matrices gain nothing from two, and on a shared
    2-core machine two threads made a test file ~25x slower (spinning: 270 s vs 10 s)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def constant_task(tmp: Path, name: str, answer: str, n_train: int = 24, n_test: int = 6) -> dict:
    """A stage whose every answer is ``answer``: a tiny model learns it in a few dozen steps,
    and forgets it when the next stage teaches another constant."""
    rows = [{"prompt": f"{name} question {i}", "response": answer} for i in range(n_train + n_test)]
    train = write_jsonl(tmp / f"{name}_train.jsonl", rows[:n_train])
    test = write_jsonl(tmp / f"{name}_test.jsonl", rows[n_train:])
    return {"name": name, "train": str(train), "test": str(test)}


def tiny_config(tmp: Path, stages: list[dict], **overrides) -> dict:
    """A run config for the tiny model, fp32 (bf16 autocast is slow for tiny matrices)."""
    cfg = {
        "name": "tiny",
        "output_dir": str(tmp / "runs"),
        "model": {"name": "tiny-llama", "finetune": "full"},
        "train": {"lr": 3e-3, "batch_size": 8, "steps": 30, "max_length": 64,
                  "precision": "fp32", "warmup_ratio": 0.0, "schedule": "constant"},
        "eval": {"batch_size": 16, "max_new_tokens": 8},
        "stages": stages,
    }
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


@pytest.fixture
def three_stages(tmp_path: Path) -> list[dict]:
    return [constant_task(tmp_path, "red", "alpha"), constant_task(tmp_path, "green", "bravo"),
            constant_task(tmp_path, "blue", "charlie")]


@contextlib.contextmanager
def killed_at_phase(monkeypatch, phase: int):
    """Inside the block, training phase ``phase`` raises KeyboardInterrupt - a killed run seen
    from the inside - and the block expects it; the trainer is restored afterwards."""
    from everlearn.training.trainer import Trainer

    original = Trainer.train_phase

    def crash(self, model, stages, p, **kwargs):
        if p == phase:
            raise KeyboardInterrupt
        return original(self, model, stages, p, **kwargs)

    monkeypatch.setattr(Trainer, "train_phase", crash)
    try:
        with pytest.raises(KeyboardInterrupt):
            yield
    finally:
        monkeypatch.setattr(Trainer, "train_phase", original)

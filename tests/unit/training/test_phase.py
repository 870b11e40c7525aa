"""A phase's kind, step count and learning rate."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from everlearn.errors import TrainingError
from everlearn.training.phase import phase_kind, phase_steps, stage_lr


def _stage(name: str, kind: str, lr=None, steps=None, epochs=None):
    return SimpleNamespace(name=name, kind=kind, lr=lr, steps=steps, epochs=epochs)


def test_phase_kind_and_mixing_errors():
    assert phase_kind([_stage("a", "sft"), _stage("b", "cpt")]) == "tokens"
    assert phase_kind([_stage("a", "align")]) == "dpo"
    assert phase_kind([_stage("a", "edit"), _stage("b", "edit")]) == "edit"
    with pytest.raises(TrainingError, match="stages a, b: an align stage cannot train"):
        phase_kind([_stage("a", "align"), _stage("b", "sft")])
    with pytest.raises(TrainingError, match="stages a, b: an edit stage cannot train"):
        phase_kind([_stage("a", "sft"), _stage("b", "edit")])


def test_steps_and_learning_rate():
    cfg = SimpleNamespace(batch_size=2, grad_accum=2, steps=None, epochs=1.0, lr=1e-3)
    assert phase_steps([_stage("a", "sft", steps=5), _stage("b", "sft")], cfg, 16) == 5 + 2
    assert stage_lr([_stage("a", "sft"), _stage("b", "sft", lr=2e-4)], cfg) == 2e-4
    assert stage_lr([_stage("a", "sft")], cfg) == 1e-3

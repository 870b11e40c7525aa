"""Every registered strategy on the tiny model: finite losses, state that round-trips through a
checkpoint, base weights unchanged under LoRA, and a resumed run equal to an uninterrupted one.

One uninterrupted run per strategy serves the first three checks; a second run is cut in the
middle of its last phase, after a step checkpoint (``train.checkpoint_every: 2``), and resumed:
from the stage checkpoint before that phase, then from the step checkpoint inside it."""

from __future__ import annotations

import json
import math

import pytest
import torch

from everlearn.models.loading import build_tiny_model, build_tiny_tokenizer
from everlearn.runs.run_dir import RunDir
from everlearn.runs.runner import Run, resume_run, start_run
from everlearn.runs.tracking import Tracker
from everlearn.strategies import STRATEGIES, build_strategy
from everlearn.validation import build_config
from tests.conftest import constant_task, tiny_config
from tests.helpers.crash_resume import comparable

# Options that keep every strategy small enough for a seconds-long test.
SMALL_OPTIONS: dict[str, dict] = {
    "replay": {"buffer_size": 8},
}


def _config(tmp_path, name: str):
    finetune = STRATEGIES[name].requires_finetune or "lora"
    stages = [constant_task(tmp_path, "red", "alpha", n_train=16, n_test=4),
              constant_task(tmp_path, "green", "bravo", n_train=16, n_test=4),
              constant_task(tmp_path, "blue", "charlie", n_train=16, n_test=4)]
    return build_config(tiny_config(
        tmp_path, stages,
        # LoRA dropout and a warm-up: the restored RNG and schedule matter on resume
        model={"name": "tiny-llama", "finetune": finetune, "lora": {"r": 4, "dropout": 0.1}},
        train={"lr": 5e-3, "steps": 4, "batch_size": 4, "precision": "fp32",
               "max_length": 48, "checkpoint_every": 2, "schedule": "cosine",
               "warmup_ratio": 0.25},
        strategies=[{"name": name, **SMALL_OPTIONS.get(name, {})}],
    ))


def _check_base_weights_unchanged(model) -> None:
    fresh = build_tiny_model(build_tiny_tokenizer()).state_dict()
    trained = model.get_base_model().state_dict()
    base_keys = [k for k in trained if "lora_" not in k]
    assert base_keys
    for key in base_keys:
        assert torch.equal(trained[key], fresh[key.replace(".base_layer", "")]), key
    assert any("lora_B" in k and trained[k].abs().sum() > 0 for k in trained)  # LoRA trained


def _check_state_round_trip(cfg, path) -> None:
    run = RunDir(path)
    last = len(json.loads(run.results.read_text())["R"]) - 1
    _, state = run.load_phase(last, need_weights=False)
    strategy = build_strategy(cfg.strategies)
    strategy.load_state_dict(state)
    again = strategy.state_dict()
    assert json.loads(json.dumps(again["meta"])) == state["meta"]
    assert set(again["tensors"]) == set(state["tensors"])
    for k, v in state["tensors"].items():
        assert torch.equal(again["tensors"][k], v), k


# stage_projector needs a vision-language model: its contract (resume included) is in
# tests/unit/vision/test_models.py on the tiny LLaVA
VISION_ONLY = {n for n, cls in STRATEGIES.items() if cls.requires_vision}


@pytest.mark.parametrize("name", sorted(set(STRATEGIES) - VISION_ONLY))
def test_strategy_contract(tmp_path, name, monkeypatch):
    cfg = _config(tmp_path, name)
    run = Run(cfg, tmp_path / "full", quiet=True)
    full = run.execute()
    assert all(math.isfinite(c["final_loss"]) for c in full["cost"])
    assert all(math.isfinite(v) for row in full["R"] for v in row)
    _check_state_round_trip(cfg, tmp_path / "full")
    if cfg.model.finetune == "lora":
        _check_base_weights_unchanged(run.model)

    # killed after step 3 of the last phase: its step checkpoint is the one of step 2
    cut_at = sum(c["steps"] for c in full["cost"][:-1]) + 3
    original = Tracker.on_step

    def on_step(self, loss, lr):
        original(self, loss, lr)
        if self.step == cut_at:
            raise KeyboardInterrupt

    monkeypatch.setattr(Tracker, "on_step", on_step)
    with pytest.raises(KeyboardInterrupt):
        start_run(_config(tmp_path, name), tmp_path / "cut", quiet=True)
    monkeypatch.setattr(Tracker, "on_step", original)
    _, resumed = resume_run(tmp_path / "cut", quiet=True)
    phases = len(full["R"]) - 1
    assert f"resumed phase {phases} at step 2 of " in (tmp_path / "cut" / "log.txt").read_text()
    assert comparable(resumed) == comparable(full)

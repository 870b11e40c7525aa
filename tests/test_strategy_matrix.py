"""Every registered strategy on the tiny model: finite losses, state that round-trips through a
checkpoint, base weights unchanged under LoRA, and a resumed run equal to an uninterrupted one.

One uninterrupted run per strategy serves the first three checks; a second run is cut before
its last stage and resumed.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from everlearn.checkpoint import RunDir
from everlearn.config import build_config
from everlearn.models import build_tiny_model, build_tiny_tokenizer
from everlearn.runner import Run, resume_run, start_run
from everlearn.strategies import STRATEGIES, build_strategy
from everlearn.vision import is_vision_model
from everlearn.vision.models import build_tiny_llava
from tests.conftest import constant_task, killed_at_phase, tiny_config

# Options that keep every strategy small enough for a seconds-long test.
SMALL_OPTIONS: dict[str, dict] = {
    "replay": {"buffer_size": 8},
}


def _config(tmp_path, name: str):
    finetune = STRATEGIES[name].requires_finetune or "lora"
    stages = [constant_task(tmp_path, "red", "alpha", n_train=16, n_test=4),
              constant_task(tmp_path, "green", "bravo", n_train=16, n_test=4),
              constant_task(tmp_path, "blue", "charlie", n_train=16, n_test=4)]
    model, max_length = "tiny-llama", 48
    if STRATEGIES[name].requires_vision:  # three visual tasks on the tiny LLaVA
        stages = [{"name": "vis", "builtin": "visual_shapes", "builtin_options": {
            "tasks": ["colour", "shape", "position"], "train_size": 16, "test_size": 4}}]
        model, max_length = "tiny-llava", 96
    return build_config(tiny_config(
        tmp_path, stages,
        model={"name": model, "finetune": finetune, "lora": {"r": 4}},
        train={"lr": 5e-3, "steps": 4, "batch_size": 4, "precision": "fp32",
               "max_length": max_length},
        strategies=[{"name": name, **SMALL_OPTIONS.get(name, {})}],
    ))


def _check_base_weights_unchanged(model) -> None:
    if is_vision_model(model):  # the projector trains whole; the rest is the base
        fresh = build_tiny_llava()[0].state_dict()
        trained = model.get_base_model().state_dict()
        base_keys = [k for k in trained if "lora_" not in k and "projector" not in k]
    else:
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


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_strategy_contract(tmp_path, name, monkeypatch):
    cfg = _config(tmp_path, name)
    run = Run(cfg, tmp_path / "full", quiet=True)
    full = run.execute()
    assert all(math.isfinite(c["final_loss"]) for c in full["cost"])
    assert all(math.isfinite(v) for row in full["R"] for v in row)
    _check_state_round_trip(cfg, tmp_path / "full")
    if cfg.model.finetune == "lora":
        _check_base_weights_unchanged(run.model)

    phases = len(full["R"]) - 1
    if phases < 2:
        return
    with killed_at_phase(monkeypatch, phases):
        start_run(_config(tmp_path, name), tmp_path / "cut", quiet=True)
    _, resumed = resume_run(tmp_path / "cut", quiet=True)
    assert resumed["R"] == full["R"]
    assert resumed["metrics"] == full["metrics"]
    assert resumed["strategy_metrics"] == full["strategy_metrics"]

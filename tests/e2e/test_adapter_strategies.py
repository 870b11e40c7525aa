"""Per-stage adapter strategies (inc_lora, olora, routed_lora) in runs on the tiny model: their
defining properties, and the refusal without LoRA."""

from __future__ import annotations

import pytest
import torch

from everlearn.data.records import Record
from everlearn.errors import ConfigError
from everlearn.runs.run_dir import RunDir
from everlearn.runs.runner import Run, resume_run
from everlearn.strategies.common.adapters import adapter_parameters
from everlearn.validation import build_config
from tests.conftest import constant_task, killed_at_phase, tiny_config, write_jsonl


def _task(tmp, name: str, prompt, answer: str, n_train: int = 12, n_test: int = 4) -> dict:
    rows = [{"prompt": prompt(i), "response": answer} for i in range(n_train + n_test)]
    train = write_jsonl(tmp / f"{name}_train.jsonl", rows[:n_train])
    test = write_jsonl(tmp / f"{name}_test.jsonl", rows[n_train:])
    return {"name": name, "train": str(train), "test": str(test)}


def _separable(tmp) -> list[dict]:
    """Stages whose prompts share no characters but the index: trivially told apart."""
    return [_task(tmp, "letters", lambda i: f"abcdefgh abcdefgh {i}", "alpha"),
            _task(tmp, "digits", lambda i: f"0123456789 0123456789 {i}", "bravo"),
            _task(tmp, "symbols", lambda i: f"!?#$%&*+ !?#$%&*+ {i}", "charlie")]


def _cfg(tmp, stages, strategy: dict, steps: int = 4, finetune: str = "lora", **overrides):
    return build_config(tiny_config(
        tmp, stages, model={"name": "tiny-llama", "finetune": finetune, "lora": {"r": 4}},
        train={"lr": 5e-3, "steps": steps, "batch_size": 4, "precision": "fp32",
               "max_length": 48, "warmup_ratio": 0.0, "schedule": "constant"},
        strategies=[strategy], **overrides))


def _logits(model, text: str) -> torch.Tensor:
    ids = torch.tensor([list(text.encode())[:20]]) % model.config.vocab_size
    with torch.no_grad():
        return model(input_ids=ids).logits


# --- the strategies on the tiny model ---------------------------------------------------------
@pytest.mark.parametrize("name", ["inc_lora", "olora", "routed_lora", "nlora", "inflora",
                                  "moe_lora"])
def test_adapter_strategies_need_lora(tmp_path, name):
    cfg = _cfg(tmp_path, [constant_task(tmp_path, "red", "alpha", 4, 2)], {"name": name},
               finetune="full")
    with pytest.raises(ConfigError, match="model.finetune"):
        Run(cfg, tmp_path / "run", quiet=True).execute()


def test_inc_lora_freezes_earlier_adapters_but_keeps_them_active(tmp_path):
    stages = [constant_task(tmp_path, "red", "alpha", 12, 4),
              constant_task(tmp_path, "green", "bravo", 12, 4)]
    run = Run(_cfg(tmp_path, stages, {"name": "inc_lora"}, steps=6), tmp_path / "run",
              quiet=True)
    strategy = run.strategy.members[0]
    seen = []

    def spy(model):  # while stage 2 trains: which adapters compute, which get gradients
        if len(strategy.names) == 2:
            grads = {n: any(p.grad is not None for p in adapter_parameters(model, n).values())
                     for n in strategy.names}
            seen.append((list(model.base_model.active_adapters), grads))

    strategy.after_backward = spy
    run.execute()
    model = run.model
    assert list(model.peft_config) == ["stage1", "stage2"]  # the engine's 'default' is gone
    assert seen and all(active == ["stage1", "stage2"] for active, _ in seen)
    assert all(grads == {"stage1": False, "stage2": True} for _, grads in seen)
    # Stage 1's adapter is bit-identical to what stage 1 ended with (the engine's checkpoint).
    after_stage_1, _ = RunDir(tmp_path / "run").load_phase(1, need_weights=True)
    stage1 = adapter_parameters(model, "stage1")
    assert stage1 and set(stage1) <= set(after_stage_1)
    for n, p in stage1.items():
        assert torch.equal(p.detach().cpu(), after_stage_1[n]), n
    assert any("lora_B" in n and p.abs().sum() > 0 for n, p in stage1.items())
    # Both deltas add up: the output differs from base + the newest adapter alone.
    both = _logits(model, "red question 1")
    model.base_model.set_adapter(["stage2"])
    newest_only = _logits(model, "red question 1")
    model.base_model.set_adapter(["stage1", "stage2"])
    assert not torch.allclose(both, newest_only)


def _olora_overlap(tmp_path, lambda_1: float) -> dict:
    stages = [constant_task(tmp_path, "red", "alpha", 12, 2),
              constant_task(tmp_path, "green", "bravo", 12, 2)]
    cfg = _cfg(tmp_path, stages, {"name": "olora", "lambda_1": lambda_1}, steps=6)
    run = Run(cfg, tmp_path / f"run-{lambda_1}", quiet=True)
    run.execute()
    return run.strategy.members[0].overlaps["green"]


def test_olora_orthogonality_loss_drives_the_new_subspace_away(tmp_path):
    on, off = _olora_overlap(tmp_path, 0.5), _olora_overlap(tmp_path, 0.0)
    # Same seed, same first stage, same initial adapter: only the loss differs.
    assert on["start"] == off["start"] and on["start"] > 0
    for kind in ("", "_normalized"):
        ratio_on = on["end" + kind] / on["start" + kind]
        ratio_off = off["end" + kind] / off["start" + kind]
        assert ratio_on < 0.5, (kind, on)
        assert ratio_on < 0.5 * ratio_off, (kind, on, off)


def test_routed_lora_routes_separable_stages_by_prototype_and_resumes(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, _separable(tmp_path), {"name": "routed_lora"}, scenario="DIL")
    full = Run(cfg, tmp_path / "full", quiet=True)
    strategy = full.strategy.members[0]
    active_while_training = []
    strategy.after_backward = lambda model: active_while_training.append(
        list(model.base_model.active_adapters))
    result = full.execute()
    assert not strategy.by_task_id()
    assert strategy.routing_accuracy() == {"letters": 100.0, "digits": 100.0,
                                           "symbols": 100.0, "mean": 100.0}
    assert [row["mean"] for row in strategy.routing] == [100.0, 100.0, 100.0]
    assert set(strategy.prototypes) == {"stage1", "stage2", "stage3"}
    # Isolation: while a stage trains, its adapter alone computes.
    assert {tuple(a) for a in active_while_training} == {("stage1",), ("stage2",), ("stage3",)}
    # Crash before stage 3, resume: same matrix, same routing record.
    with killed_at_phase(monkeypatch, 3):
        Run(cfg, tmp_path / "cut", quiet=True).execute()
    _, resumed = resume_run(tmp_path / "cut", quiet=True)
    assert resumed["R"] == result["R"]
    _, state = RunDir(tmp_path / "cut").load_phase(3, need_weights=False)
    assert state["meta"]["0.routed_lora"]["routing"] == strategy.routing


def test_routed_lora_routes_by_task_id_in_til(tmp_path):
    # Identical prompts in both stages: only the task id can tell them apart.
    stages = [_task(tmp_path, "first", lambda i: f"question {i}", "alpha"),
              _task(tmp_path, "second", lambda i: f"question {i}", "bravo")]
    run = Run(_cfg(tmp_path, stages, {"name": "routed_lora"}, steps=2), tmp_path / "run",
              quiet=True)
    run.execute()
    strategy = run.strategy.members[0]
    assert strategy.by_task_id()
    assert strategy.routing_accuracy()["mean"] == 100.0
    assert strategy.route(Record(prompt="question 3", answers=["x"], task="first")) == "stage1"
    assert strategy.route(Record(prompt="question 3", answers=["x"], task="second")) == "stage2"
    # A task without an adapter falls back to the nearest prototype.
    assert strategy.route(Record(prompt="question 3", answers=["x"], task="other")) in (
        "stage1", "stage2")

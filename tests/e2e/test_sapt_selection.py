"""SAPT-LoRA's defining property on a whole run: on clearly separable stages the shared
attentive selector sends each stage's test prompts to that stage's own adapter, with the
pseudo-inputs the model writes itself for the reflection term."""

from __future__ import annotations

from pathlib import Path

from everlearn.runs.runner import Run
from everlearn.validation import build_config
from tests.conftest import tiny_config, write_jsonl

# lm_head too: the tiny model's tied head is where a LoRA can learn a constant answer quickly
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
           "lm_head"]


def _task(tmp: Path, name: str, word: str, answer: str) -> dict:
    rows = [{"prompt": " ".join([word] * (3 + i % 3)), "response": answer} for i in range(24)]
    return {"name": name, "train": str(write_jsonl(tmp / f"{name}_train.jsonl", rows[:16])),
            "test": str(write_jsonl(tmp / f"{name}_test.jsonl", rows[16:]))}


def test_sapt_selection_picks_each_stage_own_adapter(tmp_path):
    stages = [_task(tmp_path, "a", "apple", "alpha"), _task(tmp_path, "b", "zebra", "bravo"),
              _task(tmp_path, "c", "7", "charlie")]
    cfg = build_config(tiny_config(
        tmp_path, stages,
        model={"name": "tiny-llama", "finetune": "lora",
               "lora": {"r": 8, "alpha": 16, "target_modules": TARGETS}},
        train={"lr": 1e-2, "steps": 40, "batch_size": 4, "precision": "fp32",
               "max_length": 48},
        strategies=["sapt_lora"]))
    run = Run(cfg, tmp_path / "run", quiet=True)
    results = run.execute()
    sapt = run.strategy.members[0]
    assert len(sapt.pseudo) == 0 and len(sapt.targets) == 3  # reflection ran between stages
    history = results["strategy_metrics"]["sapt_lora"]["selection_accuracy"]
    assert [h["after"] for h in history] == ["a", "b", "c"]
    assert history[-1]["per_stage"] == {"a": 100.0, "b": 100.0, "c": 100.0}
    for i, stage in enumerate(sapt.ctx.stream.stages):  # the weights themselves, not only argmax
        weights = sapt.attention([sapt.prompt_ids(r) for r in stage.test]).mean(0)
        assert int(weights.argmax()) == i and float(weights[i]) > 0.5, (stage.name, weights)

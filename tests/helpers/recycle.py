"""Helpers shared by several files of the recycle tests."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import constant_task, tiny_config, write_jsonl

STEPS, RETUNE, DISTILL = 30, 3, 4

# lm_head too: the tiny model's logits are bounded by its frozen tied embeddings otherwise, and
# a LoRA adapter takes far more steps to make an answer the greedy one
LORA = {"r": 4, "target_modules": ["q_proj", "v_proj", "up_proj", "down_proj", "lm_head"]}


def news_stage(tmp: Path) -> dict:
    rows = [{"text": f"Bulletin {i}: the harbour of Lowmere opened pier {i % 7} and the "
                     f"ferry now leaves at {6 + i % 9} o'clock."} for i in range(48)]
    return {"name": "news", "kind": "cpt", "train": str(write_jsonl(tmp / "news_train.jsonl",
                                                                    rows[:40])),
            "test": str(write_jsonl(tmp / "news_test.jsonl", rows[40:])), "steps": 6}


def recycle_config(tmp: Path, cpt_update: bool = True, **recycle) -> dict:
    stages = [constant_task(tmp, "red", "alpha"), constant_task(tmp, "green", "bravo")]
    if cpt_update:
        stages.append(news_stage(tmp))
    return tiny_config(tmp, stages,
                       model={"name": "tiny-llama", "finetune": "lora", "lora": LORA},
                       train={"lr": 1e-2, "batch_size": 8, "steps": STEPS, "max_length": 64,
                              "precision": "fp32", "warmup_ratio": 0.0,
                              "schedule": "constant"},
                       recycle={"retune_steps": RETUNE, "distill_steps": DISTILL, "lr": 3e-3,
                                "update_lr": 3e-3, **recycle})

"""Helpers shared by several files of the vision tests."""

from __future__ import annotations

from pathlib import Path


def tiny_vision_config(tmp: Path, stages: list[dict], **overrides) -> dict:
    cfg = {
        "name": "vis", "output_dir": str(tmp / "runs"),
        "model": {"name": "tiny-llava", "finetune": "full"},
        "train": {"lr": 3e-3, "batch_size": 8, "steps": 3, "max_length": 96,
                  "precision": "fp32", "warmup_ratio": 0.0, "schedule": "constant"},
        "eval": {"batch_size": 16},
        "stages": stages,
    }
    cfg.update(overrides)
    return cfg

"""Helpers shared by several files of the report tests."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from everlearn.evaluation.metrics import summarize

R3 = [[10.0, 20.0, 30.0],
      [80.0, 25.0, 30.0],
      [60.0, 90.0, 35.0],
      [50.0, 70.0, 95.0]]


def cost_entry(phase: int, stage: str, **over) -> dict:
    entry = {"phase": phase, "stages": [stage], "steps": 10, "examples": 80,
             "wall_time_s": 12.5 + phase, "train_time_s": 10.0, "eval_time_s": 2.0,
             "strategy_time_s": 0.25, "tokens_trained": 4000 + phase, "tokens_per_s": 400.0,
             "padding_fraction": 0.125, "final_loss": 0.5, "trainable_params": 2442240,
             "total_params": 136957248, "peak_memory_mb": 1000.0 + 100 * phase,
             "buffer_size": 30 * phase}
    entry.update(over)
    return entry


def fake_run(root: Path, dirname: str = "run", *, R=None, names=("alpha", "beta", "gamma"),
             strategy: str = "replay", options: dict | None = None, seed: int = 0,
             done: int | None = None, metrics: dict | None = None, **extra) -> Path:
    """A run directory as ``everlearn run`` writes it: config.yaml and results.json.

    ``done`` < 3 makes a partial run (status running, R cut after ``done`` phases)."""
    R = [list(r) for r in (R or R3)]
    done = len(R) - 1 if done is None else done
    R = R[:done + 1]
    stages = [{"name": n, "kind": "sft", "metric": "exact_match", "higher_is_better": True,
               "n_train": 80, "n_test": 20, "task_id": n} for n in names]
    complete = done == len(names)
    results = {
        "everlearn_version": "0.1.0", "status": "complete" if complete else "running",
        "name": "fake", "scenario": "TIL", "strategies": [strategy],
        "model": "smollm2-135m-instruct", "finetune": "lora", "stages": stages,
        "phases": [[n] for n in names], "rows": ["base", *names[:done]], "R": R,
        "base_eval_time_s": 3.0,
        "cost": [cost_entry(i + 1, n) for i, n in enumerate(names[:done])],
        "strategy_metrics": {},
    }
    if complete:
        results["metrics"] = metrics if metrics is not None else {
            **summarize(R), "stages": list(names)}
    results.update(extra)
    config = {"name": "fake", "output_dir": "runs", "seed": seed, "scenario": "TIL",
              "model": {"name": "smollm2-135m-instruct", "finetune": "lora"},
              "train": {"lr": 0.001, "steps": 10},
              "stages": [{"name": n, "builtin": n, "max_train": 80} for n in names],
              "strategies": [{"name": strategy, "options": options or {}}]}
    path = root / dirname
    path.mkdir(parents=True)
    (path / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    (path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path

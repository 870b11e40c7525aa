"""Helpers shared by several files of the crash resume tests."""

from __future__ import annotations

# Timings and memory differ between any two runs; everything else in results.json must not.
VOLATILE = {"wall_time_s", "train_time_s", "eval_time_s", "strategy_time_s", "tokens_per_s",
            "peak_memory_mb", "base_eval_time_s"}


def comparable(results: dict) -> dict:
    """Results without machine measurements, and without the config record (the runs compared
    may differ in settings that change no number, such as train.checkpoint_every)."""
    out = {k: v for k, v in results.items() if k not in VOLATILE and k != "config"}
    out["cost"] = [{k: v for k, v in c.items() if k not in VOLATILE} for c in results["cost"]]
    return out

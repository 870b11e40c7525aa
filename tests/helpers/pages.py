"""Real run directories of the tiny model for the page tests: a stream of two sft stages and a
cpt stage (a perplexity column), trained with replay and seqft over two seeds, so a report has
the full cost table (every column, a replay buffer) and a compare page has pooled groups with
confidence intervals. Each run takes a few seconds on a CPU."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import constant_task, tiny_config
from tests.helpers.recycle import news_stage

STEPS = 8


def stream_stages(tmp: Path) -> list[dict]:
    stages = [constant_task(tmp, "red-questions-with-a-long-stage-name", "alpha"),
              constant_task(tmp, "green", "bravo"), news_stage(tmp)]
    stages[2]["steps"] = 4
    return stages


def tiny_run(tmp: Path, name: str, strategy: str, seed: int) -> Path:
    """One finished run at ``tmp/name`` (its report written as ``everlearn run`` does)."""
    from everlearn.report import write_report
    from everlearn.runs.runner import start_run
    from everlearn.validation import build_config

    data = tmp / "data"
    data.mkdir(exist_ok=True)
    strategies = ([{"name": "replay", "buffer_size": 8, "mix_ratio": 0.25}]
                  if strategy == "replay" else [])
    cfg = tiny_config(data, stream_stages(data), strategies=strategies, seed=seed,
                      tracker={"backend": "none", "log_every": 2})
    cfg["train"]["steps"] = STEPS
    path, _ = start_run(build_config(cfg), tmp / name, quiet=True)
    write_report(path)
    return Path(path)


def tiny_runs(tmp: Path) -> list[Path]:
    """replay and seqft, seeds 0 and 1: two groups of two replicates each."""
    return [tiny_run(tmp, f"{s}-s{seed}", s, seed) for s in ("replay", "seqft")
            for seed in (0, 1)]

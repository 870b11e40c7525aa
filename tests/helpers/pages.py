"""Real run directories of the tiny model for the page tests: a stream of two label stages and
a cpt stage (a perplexity column), trained with replay (two seeds) and seqft, so a report has
the full cost table (every column, a replay buffer, a long stage name) and a compare page has a
pooled group with confidence intervals; plus a failed run's directory (no results.json)."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import constant_task, tiny_config
from tests.helpers.recycle import news_stage

STEPS = 8
LONG_NAME = "red-questions-with-a-rather-long-stage-name"


def stream_stages(tmp: Path) -> list[dict]:
    stages = [constant_task(tmp, LONG_NAME, "alpha", n_train=16, n_test=4),
              constant_task(tmp, "green", "bravo", n_train=16, n_test=4), news_stage(tmp)]
    for st in stages[:2]:
        st["labels"] = ["alpha", "bravo"]  # option log-likelihood: scores move, no decoding
    stages[2]["steps"] = 4
    return stages


def tiny_run(tmp: Path, name: str, strategy: str, seed: int) -> Path:
    """One finished run at ``tmp/name``, its report written as ``everlearn run`` does."""
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
    """replay seeds 0 and 1, seqft seed 0, and ``failed/`` (a run that died before writing
    results.json)."""
    runs = [tiny_run(tmp, "replay-s0", "replay", 0), tiny_run(tmp, "replay-s1", "replay", 1),
            tiny_run(tmp, "seqft-s0", "seqft", 0)]
    (tmp / "failed").mkdir()
    (tmp / "failed" / "log.txt").write_text("killed\n", encoding="utf-8")
    return [*runs, tmp / "failed"]

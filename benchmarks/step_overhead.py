"""Per-step training time of each strategy against seqft, measured side by side.

The methods table (``methods.py``) times whole runs one after another, so a noisy machine moves
its per-step column. Here every strategy's run is bracketed by seqft runs (seqft, A, seqft, B,
seqft, ...) and its per-step time is divided by the mean of the two seqft runs around it.

Each run: the embedded SmolLM2-135M-Instruct with LoRA r=8, two SuperNI stages (task1687 then
task1510, as in ``methods.py``), ``--steps`` steps per stage; the per-step time is the median
interval between consecutive optimizer steps of stage 2 (when every strategy has its state from
stage 1: Fisher, anchors, teacher, earlier adapters), so stage-boundary work such as Fisher passes
is not in it (it is in ``strategy_time_s``). Evaluation uses 4 test examples per stage.

Usage::

    .venv/bin/python benchmarks/step_overhead.py                      # ~10 min, 2 cores
    .venv/bin/python benchmarks/step_overhead.py --only ewc,olora --steps 6
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from everlearn.runs.runner import Run
from everlearn.strategies.base import Strategy
from everlearn.validation import build_config

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "superni"
TASKS = ["task1687_sentiment140_classification", "task1510_evalution_relation_extraction"]
# Goals: regularisers within 1.15x seqft per step, O-LoRA within 1.10x (issue 3); the methods
# of issue 18 that add no forward pass within 1.15x.
GOALS = {"ewc": 1.15, "mas": 1.15, "l2": 1.15, "lwf": 1.15, "olora": 1.10,
         "nlora": 1.15, "inflora": 1.15, "migu": 1.15, "osf": 1.15, "moe_lora": 1.15}
DEFAULT = ["ewc", "mas", "l2", "lwf", "olora", "inc_lora", "agem", "der", "replay"]


class StepClock(Strategy):
    """Stamps the time after every backward pass, per stage."""

    name = "step-clock"

    def __init__(self):
        super().__init__()
        self.stage = 0
        self.stamps: dict[int, list[float]] = {}

    def before_stage(self, stage) -> None:
        self.stage = stage.index

    def after_backward(self, model) -> None:
        self.stamps.setdefault(self.stage, []).append(time.perf_counter())


def config(strategy: str, steps: int) -> dict:
    stages = [{"name": t.split("_")[0], "train": str(DATA / t / "train.json"),
               "test": str(DATA / t / "test.json"), "max_train": 64, "max_test": 4}
              for t in TASKS]
    return {"name": f"overhead-{strategy}", "seed": 0,
            "model": {"name": "smollm2-135m-instruct", "finetune": "lora",
                      "lora": {"r": 8, "alpha": 16}},
            "train": {"lr": 5e-4, "batch_size": 8, "steps": steps, "max_length": 160},
            "stages": stages, "strategies": [{"name": strategy}]}


def step_time(strategy: str, steps: int, work: Path) -> float:
    """Median seconds per optimizer step in stage 2 of a fresh run of ``strategy``."""
    run = Run(build_config(config(strategy, steps), "step_overhead"), work / strategy / str(
        time.perf_counter_ns()), quiet=True)
    clock = StepClock()
    run.strategy.members.append(clock)
    run.execute()
    stamps = clock.stamps[2]
    return statistics.median(b - a for a, b in zip(stamps, stamps[1:]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", help=f"comma-separated strategies (default: {','.join(DEFAULT)})")
    p.add_argument("--steps", type=int, default=8, help="optimizer steps per stage")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if not DATA.is_dir():
        print(f"step_overhead.py: {DATA}: SuperNI data not found", file=sys.stderr)
        return 2
    names = args.only.split(",") if args.only else DEFAULT
    rows = []
    with tempfile.TemporaryDirectory(prefix="everlearn-overhead-") as tmp:
        work = Path(tmp)
        before = step_time("seqft", args.steps, work)
        for name in names:
            t = step_time(name, args.steps, work)
            after = step_time("seqft", args.steps, work)
            ratio = t / ((before + after) / 2)
            rows.append({"strategy": name, "s_per_step": t, "seqft_before": before,
                         "seqft_after": after, "ratio": ratio, "goal": GOALS.get(name)})
            print(f"[overhead] {name}: {t:.2f} s/step, seqft {before:.2f}/{after:.2f}, "
                  f"{ratio:.3f}x", file=sys.stderr, flush=True)
            before = after
    print(f"{datetime.now(timezone.utc):%Y-%m-%d}, steps/stage={args.steps}, median of "
          f"{args.steps - 1} step intervals in stage 2\n")
    print("| strategy | s/step | seqft s/step (before, after) | ratio | goal |")
    print("|---|---:|---:|---:|---|")
    for r in rows:
        goal = (f"<= {r['goal']:.2f}x: {'met' if r['ratio'] <= r['goal'] else 'missed'}"
                if r["goal"] else "-")
        print(f"| {r['strategy']} | {r['s_per_step']:.2f} | {r['seqft_before']:.2f}, "
              f"{r['seqft_after']:.2f} | {r['ratio']:.3f}x | {goal} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

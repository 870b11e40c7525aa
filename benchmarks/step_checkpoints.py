"""What ``train.checkpoint_every`` costs in training speed, measured side by side.

One-stage runs that differ only in ``train.checkpoint_every`` run interleaved (0, N1, N2, 0,
N1, N2, ...), so a noisy machine moves every setting alike. Speed = the stage's optimizer steps
divided by its ``train_time_s`` (the training loop, step checkpoints included, evaluation not);
the time inside ``RunDir.save_step`` and the size of a step checkpoint are reported too.

Models: ``tiny`` (the random tiny test model, full fine-tuning: every weight and both AdamW
moments are written) and ``embedded`` (SmolLM2-135M-Instruct with LoRA r=8 on SuperNI task1687:
the adapters and their moments are written).

Usage::

    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python benchmarks/step_checkpoints.py --model tiny
    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python benchmarks/step_checkpoints.py \\
        --model embedded --steps 12 --every 0,4 --rounds 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from everlearn.runs.run_dir import RunDir
from everlearn.runs.runner import Run
from everlearn.validation import build_config

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "superni"
TASK = "task1687_sentiment140_classification"


def config(model: str, steps: int, every: int, work: Path) -> dict:
    if model == "tiny":
        rows = [{"prompt": f"question {i}", "response": "alpha"} for i in range(72)]
        data = work / "tiny.jsonl"
        if not data.exists():
            import json

            data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        stage = {"name": "tiny", "train": str(data), "test": str(data), "max_train": 64,
                 "max_test": 4}
        spec = {"name": "tiny-llama", "finetune": "full"}
        train = {"lr": 1e-3, "batch_size": 8, "max_length": 64, "precision": "fp32"}
    else:
        stage = {"name": "task1687", "train": str(DATA / TASK / "train.json"),
                 "test": str(DATA / TASK / "test.json"), "max_train": 64, "max_test": 4}
        spec = {"name": "smollm2-135m-instruct", "finetune": "lora",
                "lora": {"r": 8, "alpha": 16}}
        train = {"lr": 5e-4, "batch_size": 8, "max_length": 160}
    return {"name": f"ckpt-{model}-{every}", "seed": 0, "model": spec,
            "train": {**train, "steps": steps, "checkpoint_every": every},
            "eval": {"max_new_tokens": 4}, "stages": [stage]}


class SaveClock:
    """Wraps ``RunDir.save_step``: seconds per call and the size of what it wrote."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.mb = 0.0
        self._original = RunDir.save_step

    def __enter__(self):
        clock = self

        def timed(run_dir, *args, **kwargs):
            t0 = time.perf_counter()
            d = clock._original(run_dir, *args, **kwargs)
            clock.seconds.append(time.perf_counter() - t0)
            clock.mb = sum(f.stat().st_size for f in d.iterdir()) / 2**20
            return d

        RunDir.save_step = timed
        return self

    def __exit__(self, *exc) -> None:
        RunDir.save_step = self._original


def measure(model: str, steps: int, every: int, work: Path) -> tuple[float, SaveClock]:
    cfg = build_config(config(model, steps, every, work), "step_checkpoints")
    with SaveClock() as clock:
        results = Run(cfg, work / f"{every}-{time.perf_counter_ns()}", quiet=True).execute()
    cost = results["cost"][0]
    return cost["steps"] / cost["train_time_s"], clock


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["tiny", "embedded"], default="tiny")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--every", default="0,50,10,1", help="checkpoint_every values, 0 first")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    settings = [int(x) for x in args.every.split(",")]
    speeds: dict[int, list[float]] = {n: [] for n in settings}
    writes: dict[int, list[float]] = {n: [] for n in settings}
    size = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        measure(args.model, 2, 0, work)  # warm-up: model cache, imports
        for _ in range(args.rounds):
            for n in settings:
                speed, clock = measure(args.model, args.steps, n, work)
                speeds[n].append(speed)
                writes[n].extend(clock.seconds)
                size = max(size, clock.mb)
    base = statistics.median(speeds[settings[0]])
    print(f"# {datetime.now(timezone.utc):%Y-%m-%d} model={args.model} steps={args.steps} "
          f"rounds={args.rounds} checkpoint size {size:.2f} MB")
    print("| checkpoint_every | s/step (median) | s/step per round | vs off (steps/s) "
          "| ms per step checkpoint (median) |")
    print("|---|---:|---|---:|---:|")
    for n in settings:
        med = statistics.median(speeds[n])
        rounds = ", ".join(f"{1 / v:.4g}" for v in speeds[n])
        ms = f"{1000 * statistics.median(writes[n]):.1f}" if writes[n] else "-"
        print(f"| {n or 'off'} | {1 / med:.4g} | {rounds} | {med / base:.3f}x | {ms} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

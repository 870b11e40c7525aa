"""The SuperNI-15 benchmark, a CPU-sized slice, checked with ``everlearn verify``.

Stream: the first ``--tasks`` (5) tasks of SuperNI-15's order 1 as SAPT gives it (samsum ->
sst2 -> xsum -> outcome extraction -> quoref), read from ``../shared/data/superni`` through the
built-in benchmark definition (``benchmark: {name: superni-15, ...}``), each scored by ROUGE-L
as SAPT scores it; the embedded SmolLM2-135M-Instruct with LoRA, the same budget per stage for
every method (``joint`` trains once on the union with the summed budget). Every strategy runs
with every seed; then the runs are pooled by ``everlearn verify`` (mean and 95% CI per method,
beside whatever published numbers the benchmark records) and the table is written as markdown.

Usage::

    .venv/bin/python benchmarks/benchmark_slice.py                      # 6 methods x 3 seeds
    .venv/bin/python benchmarks/benchmark_slice.py --only seqft --seeds 0 --tasks 1  # a probe
    .venv/bin/python benchmarks/benchmark_slice.py --out runs/slice     # keep the run dirs
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

from everlearn.report.verify import format_verification, verify_runs
from everlearn.runs.runner import start_run
from everlearn.validation import build_config

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "superni"
METHODS = ("seqft", "replay", "der", "olora", "routed_lora", "joint")
OPTIONS = {"replay": {"buffer_size": 100, "mix_ratio": 0.2},
           "der": {"buffer_size": 100}}


def slice_config(method: str, seed: int, args) -> dict:
    return {
        "name": "superni-15", "seed": seed,
        "benchmark": {"name": "superni-15", "order": 1, "data_dir": str(args.data),
                      "tasks": args.tasks, "train_per_task": args.train,
                      "test_per_task": args.test},
        "model": {"name": "smollm2-135m-instruct", "finetune": "lora",
                  "lora": {"r": 8, "alpha": 16}},
        "train": {"lr": args.lr, "batch_size": 8, "steps": args.steps,
                  "max_length": args.max_length},
        "eval": {"batch_size": 16, "max_new_tokens": args.max_new_tokens},
        "strategies": [{"name": method, **OPTIONS.get(method, {})}],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(METHODS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--tasks", type=int, default=5)
    ap.add_argument("--train", type=int, default=100)
    ap.add_argument("--test", type=int, default=20)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, help="keep the run directories here")
    args = ap.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="benchmark-slice-"))
    dirs, walls = [], {}
    for method in args.only.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            t0 = time.perf_counter()
            path, _ = start_run(build_config(slice_config(method, seed, args)),
                                root / f"{method}-s{seed}", quiet=True)
            walls[f"{method}-s{seed}"] = round(time.perf_counter() - t0, 1)
            dirs.append(path)
            print(f"{method} seed {seed}: {walls[f'{method}-s{seed}']} s", flush=True)
    table = format_verification(verify_runs(dirs, "superni-15"))
    print(table)
    print(f"\nmachine: {platform.processor() or platform.machine()}; wall s per run: "
          f"{json.dumps(walls)}")


if __name__ == "__main__":
    main()

"""What ``train.gradient_checkpointing`` saves and costs: peak memory and time per step of the
same one-stage run with the activations kept (off) and recomputed (on), alternated.

Each run is a process of its own (its peak RSS: VmHWM from /proc/self/status as it ends, Linux
only; and the run's own ``peak_memory_mb``); s/step is the stage's ``train_time_s`` over its
steps. The stream is SuperNI task1687 from ``../shared/data/superni`` on the embedded
SmolLM2-135M-Instruct with LoRA r=8 on all linear layers, batch 8, cutoff 160: the same shape as
issue 20's EasyCL workload. Results also say whether both runs computed the same R and losses.

Usage::

    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python benchmarks/recomputation.py --rounds 2
    .venv/bin/python benchmarks/recomputation.py --steps 2 --rounds 1 --batch 4   # a probe
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from everlearn.runs.environment import cpu_model

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "superni"
TASK = "task1687_sentiment140_classification"


def config(recompute: bool, args, out: Path) -> dict:
    return {
        "name": f"recompute-{'on' if recompute else 'off'}", "seed": 0,
        "model": {"name": "smollm2-135m-instruct", "finetune": "lora", "lora": {"r": 8,
                                                                            "alpha": 16}},
        "train": {"lr": 1e-4, "batch_size": args.batch, "steps": args.steps,
                  "max_length": 160, "gradient_checkpointing": recompute,
                  "schedule": "constant", "warmup_ratio": 0.0},
        "eval": {"batch_size": 32},
        "stages": [{"name": "task1687", "train": str(DATA / TASK / "train.json"),
                    "test": str(DATA / TASK / "test.json"), "max_train": args.batch * args.steps,
                    "max_test": args.test, "labels": ["positive", "negative"]}],
        "output_dir": str(out),
    }


def run_child(recompute: bool, args, work: Path) -> dict:
    """One run in a child process; its results and the child's peak RSS."""
    out = work / f"{'on' if recompute else 'off'}-{len(list(work.iterdir()))}"
    cfg_path = out.with_suffix(".json")
    cfg_path.write_text(json.dumps(config(recompute, args, out)))
    code = ("import json, sys; from everlearn.validation import build_config; "
            "from everlearn.runs.runner import start_run; "
            "cfg = build_config(json.load(open(sys.argv[1])), sys.argv[1]); "
            "start_run(cfg, sys.argv[2], quiet=True); "
            "print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0])")
    done = subprocess.run([sys.executable, "-c", code, str(cfg_path), str(out / "run")],
                          check=True, capture_output=True, text=True)
    peak_kb = int(done.stdout.strip().splitlines()[-1].split()[1])
    res = json.loads((out / "run" / "results.json").read_text())
    cost = res["cost"][0]
    return {"recompute": recompute, "peak_rss_mb": peak_kb / 1024,
            "peak_memory_mb": cost["peak_memory_mb"],
            "s_per_step": cost["train_time_s"] / cost["steps"], "R": res["R"],
            "loss_curve": cost.get("loss_curve"), "final_loss": cost.get("final_loss")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--test", type=int, default=16)
    p.add_argument("--rounds", type=int, default=2, help="off, on pairs")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="everlearn-recompute-") as tmp:
        work = Path(tmp)
        for _ in range(args.rounds):
            for recompute in (False, True):
                rows.append(run_child(recompute, args, work))
                r = rows[-1]
                print(f"gradient_checkpointing={r['recompute']!s:5}  s/step {r['s_per_step']:.2f}"
                      f"  peak RSS {r['peak_rss_mb']:.0f} MB  run peak {r['peak_memory_mb']:.0f}"
                      f" MB", flush=True)
    on = [r for r in rows if r["recompute"]]
    off = [r for r in rows if not r["recompute"]]
    same = all(a["R"] == b["R"] and a["final_loss"] == b["final_loss"] for a, b in zip(on, off))
    print(f"{datetime.now(timezone.utc):%Y-%m-%d}, {cpu_model() or platform.machine()}, "
          f"steps={args.steps} batch={args.batch}; same R and final loss: {same}")
    if args.json:
        args.json.write_text(json.dumps({"settings": vars(args) | {"json": str(args.json)},
                                         "rows": rows, "same_results": same}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

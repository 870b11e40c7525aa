"""Per-stage cost over a 100-stage stream: does a stage cost the same at stage 100 as at 10?

Runs the built-in ``long_stream`` suite (100 small classification stages) once per strategy,
each in its own process, with an evaluation schedule, and records per stage: wall time (from
one ``results.json`` write to the next, so checkpointing and bookkeeping count), the engine's
train / eval / strategy time, the phase's peak RSS, the ``results.json`` size and write time and
the checkpoint size. Prints a markdown table for stages 1, 10, 50 and 100 and the ratio stage
100 / stage 10 (and, less noisy, median of stages 91-99 / median of stages 2-11).

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/long_stream.py          # tiny model, 4 methods
    .venv/bin/python benchmarks/long_stream.py --only seqft --stages 20    # a smoke run
    .venv/bin/python benchmarks/long_stream.py --model smollm2-135m-instruct --steps 8
    .venv/bin/python benchmarks/long_stream.py --every 10 --sample-earlier 3 --json out.json

The default schedule (``--sample-earlier 3``) scores, after each stage, the stage just trained,
the next one and 3 sampled earlier stages; only the last row scores all 100 stages. EWC runs in
its online form (one running Fisher): the per-stage-term form grows by design.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

STRATEGIES = {
    "seqft": "seqft",
    "replay": {"name": "replay", "buffer_size": 64, "mix_ratio": 0.25},
    "ewc": {"name": "ewc", "online": True, "fisher_samples": 16},
    "inc_lora": "inc_lora",
}
REPORT_STAGES = (1, 10, 50, 100)


def run_config(strategy: str, args, out_dir: Path) -> dict:
    tiny = args.model == "tiny-llama"
    return {
        "name": f"long-{strategy}", "seed": args.seed, "output_dir": str(out_dir),
        "model": {"name": args.model, "finetune": "lora", "lora": {"r": 4 if tiny else 8}},
        "train": {"lr": 3e-3 if tiny else 2e-4, "batch_size": 8, "steps": args.steps,
                  "max_length": 64, "precision": "fp32" if tiny else "auto",
                  "warmup_ratio": 0.0 if tiny else 0.1},
        "eval": {"batch_size": 16, "every": args.every, "sample_earlier": args.sample_earlier},
        "stages": [{"builtin": "long_stream", "periods": args.stages,
                    "builtin_options": {"train_size": args.train_size,
                                        "test_size": args.test_size}}],
        "strategies": [STRATEGIES[strategy]],
    }


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def one(strategy: str, args) -> dict:
    """Run one strategy in this process; per-stage measurements."""
    import torch

    import everlearn.runs.runner as runner
    from everlearn.runs.run_dir import RunDir
    from everlearn.training.resources import current_rss_mb
    from everlearn.validation import build_config

    torch.set_num_threads(args.threads)
    writes: dict[int, dict] = {}  # rows in results.json -> the first write with that many rows
    saves: dict[int, float] = {}
    real_write, real_save = runner.write_results, RunDir.save_phase

    def write_results(run_dir, results):
        t0 = time.perf_counter()
        obj = real_write(run_dir, results)
        t1 = time.perf_counter()
        if len(obj["R"]) not in writes:
            path = Path(run_dir) / "results.json"
            writes[len(obj["R"])] = {"t": t1, "write_s": t1 - t0,
                                    "bytes": path.stat().st_size, "rss_mb": current_rss_mb()}
        return obj

    def save_phase(self, phase, weights, state):
        t0 = time.perf_counter()
        real_save(self, phase, weights, state)
        saves[phase] = time.perf_counter() - t0

    runner.write_results = write_results
    RunDir.save_phase = save_phase
    tmp = Path(tempfile.mkdtemp(prefix="long-stream-"))
    try:
        cfg = build_config(run_config(strategy, args, tmp), "benchmarks/long_stream.py")
        t0 = time.perf_counter()
        path, res = runner.start_run(cfg, tmp / "run", quiet=True)
        total = time.perf_counter() - t0
        ckpt = {p: dir_size(RunDir(path).phase_dir(p)) for p in range(1, args.stages + 1)}
        stages = []
        for p, c in enumerate(res["cost"], 1):
            stages.append({
                "stage": p, "wall_s": writes[p + 1]["t"] - writes[p]["t"],
                "train_s": c["train_time_s"], "eval_s": c["eval_time_s"],
                "strategy_s": c["strategy_time_s"], "checkpoint_s": saves.get(p),
                "peak_rss_mb": c["peak_memory_mb"], "rss_after_mb": writes[p + 1]["rss_mb"],
                "results_bytes": writes[p + 1]["bytes"],
                "results_write_s": writes[p + 1]["write_s"], "checkpoint_bytes": ckpt.get(p),
                "scored": sum(v is not None for v in res["R"][p]),
            })
        return {"strategy": strategy, "total_s": total, "base_eval_s": res["base_eval_time_s"],
                "metrics": {k: res["metrics"].get(k) for k in
                            ("final_ap", "la", "bwt", "forgetting", "fwt")},
                "run_dir_bytes": dir_size(path), "stages": stages}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _ratio(a: float | None, b: float | None) -> str:
    return "n/a" if not a or not b else f"{a / b:.2f}"


def markdown(results: list[dict], args, elapsed: float) -> str:
    lines = [
        f"Command: `OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '?')} .venv/bin/python "
        f"benchmarks/long_stream.py {' '.join(sys.argv[1:])}`".replace(" `", "`"),
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{args.threads} torch thread(s); Python {platform.python_version()}. "
        f"Date: {datetime.now(timezone.utc).date()}. Total {elapsed:.0f} s.",
        f"Stream: `builtin: long_stream`, {args.stages} stages x ({args.train_size} train, "
        f"{args.test_size} test), {args.steps} steps of batch 8 per stage, model {args.model} "
        f"(LoRA); schedule: every={args.every}, sample_earlier={args.sample_earlier}.",
        "",
        "| strategy | stage | wall s | train s | eval s | strategy s | checkpoint s | "
        "peak RSS MB | results.json KB | write ms | cells scored |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        by = {s["stage"]: s for s in r["stages"]}
        for k in REPORT_STAGES:
            s = by.get(k)
            if s is None:
                continue
            lines.append(
                f"| {r['strategy']} | {k} | {s['wall_s']:.3f} | {s['train_s']:.3f} | "
                f"{s['eval_s']:.3f} | {s['strategy_s']:.3f} | {s['checkpoint_s']:.3f} | "
                f"{s['peak_rss_mb']:.0f} | {s['results_bytes'] / 1024:.1f} | "
                f"{1000 * s['results_write_s']:.1f} | {s['scored']} |")
    lines += ["", "Flatness (ratio of per-stage cost; 1.00 = flat):", "",
              "| strategy | wall 100/10 | train 100/10 | eval 100/10 | RSS 100/10 | "
              "wall median 91-99 / 2-11 | train median 91-99 / 2-11 | total s |",
              "|---|---|---|---|---|---|---|---|"]
    for r in results:
        by = {s["stage"]: s for s in r["stages"]}
        last, ten = by.get(len(by)), by.get(10)

        def med(key: str, lo: int, hi: int, by: dict = by) -> float | None:
            vals = [by[k][key] for k in range(lo, hi + 1) if k in by]
            return statistics.median(vals) if vals else None

        n = len(by)
        lines.append(
            f"| {r['strategy']} | {_ratio(last and last['wall_s'], ten and ten['wall_s'])} | "
            f"{_ratio(last and last['train_s'], ten and ten['train_s'])} | "
            f"{_ratio(last and last['eval_s'], ten and ten['eval_s'])} | "
            f"{_ratio(last and last['peak_rss_mb'], ten and ten['peak_rss_mb'])} | "
            f"{_ratio(med('wall_s', n - 9, n - 1), med('wall_s', 2, 11))} | "
            f"{_ratio(med('train_s', n - 9, n - 1), med('train_s', 2, 11))} | "
            f"{r['total_s']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default=",".join(STRATEGIES),
                    help=f"comma-separated strategies (default: {','.join(STRATEGIES)})")
    ap.add_argument("--model", default="tiny-llama")
    ap.add_argument("--stages", type=int, default=100)
    ap.add_argument("--steps", type=int, default=10, help="optimizer steps per stage")
    ap.add_argument("--train-size", type=int, default=32)
    ap.add_argument("--test-size", type=int, default=8)
    ap.add_argument("--every", type=int, default=None, help="eval.every (full row every k)")
    ap.add_argument("--sample-earlier", type=int, default=3, help="eval.sample_earlier; -1: "
                    "null (with --every unset: the full matrix)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--json", help="write the raw per-stage numbers here")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one strategy, print JSON
    args = ap.parse_args(argv)
    if args.sample_earlier is not None and args.sample_earlier < 0:
        args.sample_earlier = None
    if args.one:
        print("RESULT " + json.dumps(one(args.one, args)))
        return 0
    names = [s for s in args.only.split(",") if s]
    unknown = [s for s in names if s not in STRATEGIES]
    if unknown:
        ap.error(f"unknown strategy {unknown[0]!r}; choose from {', '.join(STRATEGIES)}")
    start = time.perf_counter()
    results = []
    for name in names:  # one process each: no memory or allocator state carried over
        cmd = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]),
               "--one", name]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if proc.returncode or line is None:
            sys.stderr.write(proc.stderr[-4000:])
            raise SystemExit(f"{name}: run failed (exit {proc.returncode})")
        results.append(json.loads(line[len("RESULT "):]))
        print(f"{name}: {results[-1]['total_s']:.0f} s", file=sys.stderr)
    text = markdown(results, args, time.perf_counter() - start)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

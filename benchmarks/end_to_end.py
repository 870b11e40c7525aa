"""End to end: a 2-stage SuperNI stream run by everlearn (defaults) and by the common way.

Stream: task1687 (sentiment140) then task363 (sst2) from ``../shared/data/superni``, 64
training and 32 test examples each (sampled by seed 0), cutoff 128 tokens, batch 8, 8 optimizer
steps per stage, LoRA r=8 on all linear layers of the embedded SmolLM2-135M-Instruct, for the
strategies seqft, replay and ewc.

(a) ``everlearn run`` on that config, otherwise with defaults (bf16 autocast where supported,
    length-grouped batches, one model load, label tasks scored by option log-likelihood);
(b) ``reference_pipeline.py`` - Trainer in fp32, pad-to-longest, the model reloaded for every
    evaluation round, every task scored by generating up to 8 tokens and exact match.

Each pipeline runs in its own subprocess, so that its wall time includes start-up and model
loading and its peak resident memory is its own (``os.wait4``). The pair alternates which goes
first per strategy; both run in this one invocation so the ratios share the machine's state.

Usage::

    .venv/bin/python benchmarks/end_to_end.py                    # seqft, replay, ewc (~10 min)
    .venv/bin/python benchmarks/end_to_end.py --strategies seqft --json e2e.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data" / "superni"
TASKS = ["task1687_sentiment140_classification", "task363_sst2_polarity_classification"]
PIPELINES = ("everlearn", "reference")


def stream_config(strategy: str, args) -> dict:
    stages = [{"name": t.split("_")[0], "train": str(DATA / t / "train.json"),
               "test": str(DATA / t / "test.json"), "max_train": args.train,
               "max_test": args.test} for t in TASKS]
    return {"name": f"e2e-{strategy}", "seed": 0,
            "model": {"name": "smollm2-135m-instruct", "finetune": "lora",
                      "lora": {"r": 8, "target_modules": "all-linear"}},
            "train": {"batch_size": 8, "steps": args.steps, "max_length": 128},
            "stages": stages, "strategies": [{"name": strategy}]}


def timed(cmd: list[str], log: Path) -> tuple[float, float, int]:
    """Run ``cmd``; (wall seconds, peak RSS in MB, exit code) of that process alone."""
    t0 = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    return wall, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status)


def run_everlearn(cfg: Path, work: Path) -> dict:
    out = work / "everlearn-run"
    cmd = [sys.executable, "-m", "everlearn", "run", str(cfg), "--output", str(out), "-q"]
    wall, peak, rc = timed(cmd, work / "everlearn.log")
    if rc:
        raise SystemExit(f"everlearn failed ({rc}): see {work / 'everlearn.log'}")
    res = json.loads((out / "results.json").read_text())
    cost = res["cost"]
    train_s = sum(c["train_time_s"] for c in cost)
    return {"wall_s": wall, "peak_mb": peak, "R": res["R"],
            "train_s": train_s, "tokens": sum(c["tokens_trained"] for c in cost),
            "eval_s": res["base_eval_time_s"] + sum(c["eval_time_s"] for c in cost),
            "strategy_s": sum(c["strategy_time_s"] for c in cost),
            "padding": max(c["padding_fraction"] for c in cost),
            "metrics": [s.get("metric") for s in res["stages"]]}


def run_reference(cfg: Path, strategy: str, work: Path) -> dict:
    out = work / "reference.json"
    cmd = [sys.executable, str(HERE / "reference_pipeline.py"), str(cfg), "--strategy", strategy,
           "--out", str(out)]
    wall, peak, rc = timed(cmd, work / "reference.log")
    if rc:
        raise SystemExit(f"reference failed ({rc}): see {work / 'reference.log'}")
    res = json.loads(out.read_text())
    cost = res["cost"]
    return {"wall_s": wall, "peak_mb": peak, "R": [res["base"]] + res["R"],
            "train_s": sum(c["train_time_s"] for c in cost),
            "tokens": sum(c["tokens"] for c in cost),
            "eval_s": res["base_eval_time_s"] + sum(c["eval_time_s"] for c in cost),
            "strategy_s": sum(c["strategy_time_s"] for c in cost),
            "padding": max(c["padding"] for c in cost),
            "metrics": ["exact_match"] * len(TASKS)}


def final_ap(R: list[list[float]]) -> float:
    return sum(R[-1]) / len(R[-1])


def fmt_row(name: str, strategy: str, r: dict) -> str:
    matrix = " / ".join(" ".join(f"{x:.0f}" for x in row) for row in r["R"])
    return (f"| {strategy} | {name} | {r['wall_s']:.1f} | {r['tokens'] / r['train_s']:.0f} | "
            f"{100 * r['padding']:.0f}% | {r['eval_s']:.1f} | {r['strategy_s']:.1f} | "
            f"{r['peak_mb']:.0f} | {final_ap(r['R']):.1f} | {matrix} |")


def report(rows: dict[str, dict[str, dict]], args) -> str:
    lines = [f"{datetime.now(timezone.utc):%Y-%m-%d}, {platform.machine()}, "
             f"{os.cpu_count()} cores; train={args.train} test={args.test} "
             f"steps/stage={args.steps}",
             "",
             "| strategy | pipeline | wall s | train tok/s | max pad | eval s | strategy s | "
             "peak MB | final AP | R (rows: base / after 1 / after 2) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for strategy, pair in rows.items():
        for name in PIPELINES:
            lines.append(fmt_row(name, strategy, pair[name]))
    lines += ["", "| strategy | wall (reference / everlearn) | peak memory (everlearn / "
              "reference) | final AP everlearn - reference |", "|---|---:|---:|---:|"]
    for strategy, pair in rows.items():
        e, r = pair["everlearn"], pair["reference"]
        lines.append(f"| {strategy} | {r['wall_s'] / e['wall_s']:.2f}x | "
                     f"{e['peak_mb'] / r['peak_mb']:.2f} | "
                     f"{final_ap(e['R']) - final_ap(r['R']):+.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--strategies", default="seqft,replay,ewc")
    p.add_argument("--train", type=int, default=64)
    p.add_argument("--test", type=int, default=32)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--json", type=Path, help="write the raw numbers here")
    args = p.parse_args(argv)
    if not DATA.is_dir():
        print(f"end_to_end.py: {DATA}: SuperNI data not found", file=sys.stderr)
        return 2
    rows: dict[str, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory(prefix="everlearn-e2e-") as tmp:
        for i, strategy in enumerate(args.strategies.split(",")):
            work = Path(tmp) / strategy
            work.mkdir()
            cfg = work / "stream.yaml"
            cfg.write_text(yaml.safe_dump(stream_config(strategy, args), sort_keys=False))
            order = PIPELINES if i % 2 == 0 else PIPELINES[::-1]
            pair = {}
            for name in order:
                print(f"[e2e] {strategy}: {name} ...", file=sys.stderr, flush=True)
                pair[name] = (run_everlearn(cfg, work) if name == "everlearn"
                              else run_reference(cfg, strategy, work))
                print(fmt_row(name, strategy, pair[name]), file=sys.stderr, flush=True)
            rows[strategy] = pair
            if args.json:
                args.json.write_text(json.dumps({"settings": vars(args) | {"json": None},
                                                 "rows": rows}, indent=2))
    print(report(rows, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Every continual-learning strategy on one SuperNI stream, side by side.

Stream (same order every time): task1687 (sentiment140) -> task1510 (relation extraction) ->
task591 (sciq) -> task875 (emotion) -> task073 (commonsenseqa), from ``../shared/data/superni``;
the embedded SmolLM2-135M-Instruct with LoRA, the same training budget per stage for every
method (``joint`` trains once on the union with the summed budget). Writes a markdown table
(final AP, BWT, FWT, forgetting, wall time, per-step time vs seqft, peak memory, trainable
parameters, extra storage) and the raw results as JSON.

Usage::

    .venv/bin/python benchmarks/methods.py          # all strategies (~1 h on 2 quiet cores)
    .venv/bin/python benchmarks/methods.py --only seqft,replay,ewc --train 60 --test 30
    .venv/bin/python benchmarks/methods.py --out docs/methods.json
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from everlearn.runs.environment import cpu_model
from everlearn.runs.run_dir import ADAPTER_DIR
from everlearn.runs.runner import start_run
from everlearn.strategies import STRATEGIES, Strategy
from everlearn.validation import build_config

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "superni"
STREAM = [
    ("task1687_sentiment140_classification", {"labels": ["positive", "negative"]}),
    ("task1510_evalution_relation_extraction", {"metric": "rouge_l"}),
    ("task591_sciq_answer_generation", {"metric": "exact_match"}),
    ("task875_emotion_classification", {}),
    ("task073_commonsenseqa_answer_generation", {"labels": ["A", "B", "C", "D", "E"]}),
]
# Options that differ from a strategy's defaults in this benchmark (the rest use defaults).
OPTIONS: dict[str, dict] = {
    "replay": {"buffer_size": 100, "mix_ratio": 0.2},
}


def is_editor(name: str) -> bool:
    """Editors (grace, rome, memit, alphaedit, wise) act on edit stages only: on this sft stream
    they would fine-tune exactly like seqft, so they get no row here (see benchmarks/editors.py)."""
    return STRATEGIES[name].apply_edits is not Strategy.apply_edits


def stream_config(name: str, args) -> dict:
    stages = []
    for task, extra in STREAM:
        stages.append({"name": task.split("_")[0], "train": str(DATA / task / "train.json"),
                       "test": str(DATA / task / "test.json"), "max_train": args.train,
                       "max_test": args.test, **extra})
    # block_expansion and progressive_prompts train their own parameters on the frozen model
    finetune = "full" if STRATEGIES[name].requires_finetune == "full" else "lora"
    return {
        "name": f"methods-{name}", "seed": args.seed,
        "model": {"name": "smollm2-135m-instruct", "finetune": finetune,
                  "lora": {"r": 8, "alpha": 16}},
        "train": {"lr": args.lr, "batch_size": 8, "steps": args.steps, "max_length": 160},
        "eval": {"batch_size": 32},
        "stages": stages,
        "strategies": [{"name": name, **OPTIONS.get(name, {})}],
    }


def dir_size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def run_one(name: str, args, workdir: Path) -> dict:
    cfg = build_config(stream_config(name, args), f"methods:{name}")
    path, res = start_run(cfg, workdir / name, quiet=not args.progress)
    cost = res["cost"]
    steps = sum(c["steps"] for c in cost)
    # beyond the trainable weights: not trainable.safetensors, nor adapter/ (the same LoRA
    # weights in PEFT's format, runs.peft_adapter), which the table reports apart
    adapter = sum(dir_size_mb(p / ADAPTER_DIR) for p in (path / "checkpoints").iterdir()
                  if (p / ADAPTER_DIR).is_dir())
    strategy_state = sum(dir_size_mb(p) - (p / "trainable.safetensors").stat().st_size / 2**20
                         if (p / "trainable.safetensors").exists() else dir_size_mb(p)
                         for p in (path / "checkpoints").iterdir()) - adapter
    m = res["metrics"]
    return {
        "strategy": name, "R": res["R"], "metrics": m,
        "wall_time_s": sum(c["wall_time_s"] for c in cost) + res["base_eval_time_s"],
        "train_time_s": sum(c["train_time_s"] for c in cost),
        "s_per_step": sum(c["train_time_s"] for c in cost) / max(1, steps),
        "peak_memory_mb": max(c["peak_memory_mb"] for c in cost),
        "trainable_params": max(c["trainable_params"] for c in cost),
        "strategy_state_mb": strategy_state / max(1, len(cost)),
        "adapter_export_mb": adapter / max(1, len(cost)),
    }


def fmt(x, digits=1):
    return "n/a" if x is None else f"{x:.{digits}f}"


def table(rows: list[dict]) -> str:
    seq = next((r for r in rows if r["strategy"] == "seqft"), None)
    joint = next((r for r in rows if r["strategy"] == "joint"), None)
    out = ["| strategy | final AP | % of joint AP | BWT | FWT | forgetting | wall s | "
           "s/step (x seqft) | peak MB | trainable | extra storage MB/stage |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        m = r["metrics"]
        rel = f"{r['s_per_step'] / seq['s_per_step']:.2f}x" if seq else "n/a"
        of_joint = (f"{100 * m['final_ap'] / joint['metrics']['final_ap']:.0f}%"
                    if joint and joint["metrics"]["final_ap"] else "n/a")
        out.append(
            f"| {r['strategy']} | {fmt(m.get('final_ap'))} | {of_joint} | {fmt(m.get('bwt'))} | "
            f"{fmt(m.get('fwt'))} | {fmt(m.get('forgetting'))} | {r['wall_time_s']:.0f} | "
            f"{r['s_per_step']:.2f} ({rel}) | {r['peak_memory_mb']:.0f} | "
            f"{r['trainable_params']:,} | {r['strategy_state_mb']:.2f} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", help="comma-separated strategies (default: all, seqft and joint)")
    p.add_argument("--train", type=int, default=64, help="training examples per task")
    p.add_argument("--test", type=int, default=20, help="test examples per task")
    p.add_argument("--steps", type=int, default=16, help="optimizer steps per stage")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write raw results as JSON here")
    p.add_argument("--progress", action="store_true")
    args = p.parse_args(argv)
    if not DATA.is_dir():
        print(f"methods.py: {DATA}: SuperNI data not found", file=sys.stderr)
        return 2
    names = args.only.split(",") if args.only else (
        ["seqft", "joint"] + sorted(n for n in STRATEGIES
                                    if n not in ("seqft", "joint") and not is_editor(n)))
    workdir = Path(tempfile.mkdtemp(prefix="everlearn-methods-"))
    rows = []
    try:
        for name in names:
            print(f"[methods] {name} ...", file=sys.stderr, flush=True)
            rows.append(run_one(name, args, workdir))
            print(table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
            if args.out:  # after every strategy, so that a killed benchmark keeps its rows
                Path(args.out).write_text(json.dumps({"settings": vars(args), "rows": rows},
                                                     indent=2))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    header = (f"{datetime.now(timezone.utc):%Y-%m-%d}, {cpu_model() or platform.machine()}"
              f", train={args.train} test={args.test} steps/stage={args.steps} lr={args.lr}")
    print(header)
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

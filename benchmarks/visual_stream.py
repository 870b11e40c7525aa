"""Continual visual instruction tuning on the default vision-language model, strategy by strategy.

1. Alignment, once: the embedded ``smollm2-135m-llava`` (SmolLM2-135M-Instruct + a random
   2-layer CLIP vision encoder and projector) trains its vision encoder and projector on the
   generated captions (``visual_captions``, ``freeze_lm: true``); the aligned model is saved in
   the model cache (``EVERLEARN_CACHE``, default ``~/.cache/everlearn``) under a name that holds
   the alignment settings, and reused by later invocations.
2. The visual stream on the aligned model, once per strategy (default: seqft, replay, ewc,
   inc_lora, routed_lora, stage_projector): the generated tasks of ``visual_shapes`` in order,
   LoRA on the language model (r=8) with the projector trained whole, the same budget for
   every strategy, the text-only general-ability probe (``kl``) after every stage.

Prints, per strategy, each task's accuracy before the stream (the aligned model), just after
its own stage, and at the end; the strategy's final AP, BWT, forgetting and the routing
accuracy of routed_lora and stage_projector (task id withheld: routed by prototype); the
general-ability delta of the language model on text (KL from the aligned model along its
greedy answers to general prompts, and the share of unchanged answers) after the last stage;
and the cost (wall time, training s/step, trainable parameters, peak memory). The alignment
and every strategy run in a process of their own (peak memory is each one's own).

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/visual_stream.py      # ~30 min on 1 thread
    .venv/bin/python benchmarks/visual_stream.py --only seqft --tasks colour,count --steps 4 \\
        --train 32 --test 16 --align-steps 10                           # smoke run
    .venv/bin/python benchmarks/visual_stream.py --out visual.json      # + the raw results
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from everlearn.config import ModelConfig
from everlearn.models.embedded import cache_dir, write_model_dir
from everlearn.models.loading import load_base_model, load_trainable_state
from everlearn.runs.runner import start_run
from everlearn.validation import build_config

OPTIONS: dict[str, dict] = {  # options that differ from a strategy's defaults here
    "replay": {"buffer_size": 80, "mix_ratio": 0.2},
    "ewc": {"fisher_samples": 32},
    # task inferred from the image (vision prototypes), not given: routing accuracy is reported
    "stage_projector": {"route_by": "prototype"},
    "routed_lora": {"route_by": "prototype"},
}


def align_config(args, workdir: Path) -> dict:
    return {
        "name": "visual-align", "seed": args.seed, "output_dir": str(workdir),
        "model": {"name": "smollm2-135m-llava", "finetune": "full"},  # the LM stays frozen
        "train": {"lr": args.align_lr, "batch_size": 8, "steps": args.align_steps,
                  "max_length": 96, "schedule": args.schedule},
        "eval": {"batch_size": 32},
        "stages": [{"name": "align", "builtin": "visual_captions", "freeze_lm": True,
                    "max_train": 8 * args.align_steps, "max_test": args.align_test}],
    }


def aligned_model(args, workdir: Path) -> tuple[Path, dict]:
    """The aligned model's directory (built now or found in the cache) and what it cost."""
    name = (f"smollm2-135m-llava-aligned-s{args.align_steps}-lr{args.align_lr:g}"
            f"-{args.schedule}-seed{args.seed}")
    target = cache_dir() / "models" / name
    info_file = target / "everlearn_alignment.json"
    if info_file.exists():
        return target, json.loads(info_file.read_text())
    print(f"[visual] aligning the default model ({args.align_steps} steps) ...", file=sys.stderr,
          flush=True)
    cfg = build_config(align_config(args, workdir), "visual_stream:align")
    path, res = start_run(cfg, workdir / "align", quiet=not args.progress)
    model, processor = load_base_model(ModelConfig(name="smollm2-135m-llava"))
    weights = path / "checkpoints" / "phase-01" / "trainable.safetensors"
    from safetensors.torch import load_file

    load_trainable_state(model, load_file(weights), str(weights))
    info = {"captions_rouge_l_before": res["R"][0][0], "captions_rouge_l_after": res["R"][1][0],
            "wall_time_s": res["cost"][0]["wall_time_s"] + res["base_eval_time_s"],
            "train_time_s": res["cost"][0]["train_time_s"], "steps": res["cost"][0]["steps"],
            "trainable_params": res["cost"][0]["trainable_params"]}
    write_model_dir(target, model, processor,
                    {"everlearn_alignment.json": json.dumps(info, indent=2)})
    return target, info


def stream_config(name: str, model_dir: Path, args, workdir: Path) -> dict:
    return {
        "name": f"visual-{name}", "seed": args.seed, "output_dir": str(workdir),
        "model": {"name": str(model_dir), "finetune": "lora", "lora": {"r": 8, "alpha": 16}},
        "train": {"lr": args.lr, "batch_size": 8, "steps": args.steps, "max_length": 96,
                  "schedule": args.schedule},
        "eval": {"batch_size": 32, "general_probes": ["kl"]},
        "stages": [{"name": "visual", "builtin": "visual_shapes",
                    "builtin_options": {"tasks": args.tasks, "train_size": args.train,
                                        "test_size": args.test}}],
        "strategies": [{"name": name, **OPTIONS.get(name, {})}],
    }


def run_one(name: str, model_dir: Path, args, workdir: Path) -> dict:
    cfg = build_config(stream_config(name, model_dir, args, workdir), f"visual_stream:{name}")
    start = time.perf_counter()
    _, res = start_run(cfg, workdir / name, quiet=not args.progress)
    wall = time.perf_counter() - start
    R, cost = res["R"], res["cost"]
    general = res.get("general_kl") or {}
    agreement = (res.get("general") or {}).get("agreement") or {}
    steps = sum(c["steps"] for c in cost)
    routing = (res.get("strategy_metrics") or {}).get(name, {}).get("routing_accuracy")
    return {
        "strategy": name, "stages": [s["name"] for s in res["stages"]], "R": R,
        "metrics": res["metrics"],
        "kl_after": (general.get("scores") or [None])[-1],
        "agreement_delta": (agreement.get("delta") or [None])[-1],
        "routing_accuracy": routing[-1]["mean"] if routing else None,
        "wall_time_s": wall, "train_time_s": sum(c["train_time_s"] for c in cost),
        "s_per_step": sum(c["train_time_s"] for c in cost) / max(1, steps),
        "trainable_params": max(c["trainable_params"] for c in cost),
        "peak_memory_mb": max(c["peak_memory_mb"] for c in cost),
    }


def fmt(x, digits=1) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def task_table(row: dict) -> str:
    R = row["R"]
    out = [f"{row['strategy']}: | task | before | after its stage | final |",
           "|---|---:|---:|---:|"]
    for j, stage in enumerate(row["stages"]):
        out.append(f"| {stage} | {fmt(R[0][j])} | {fmt(R[j + 1][j])} | {fmt(R[-1][j])} |")
    return "\n".join(out)


def summary_table(rows: list[dict]) -> str:
    out = ["| strategy | final AP | BWT | forgetting | KL general (nats) | unchanged answers "
           "delta | routing | wall s | s/step | trainable | peak MB |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        m = r["metrics"]
        out.append(
            f"| {r['strategy']} | {fmt(m.get('final_ap'))} | {fmt(m.get('bwt'))} | "
            f"{fmt(m.get('forgetting'))} | {fmt(r['kl_after'], 3)} | "
            f"{fmt(r['agreement_delta'])} | {fmt(r['routing_accuracy'])} | "
            f"{r['wall_time_s']:.0f} | {r['s_per_step']:.2f} | {r['trainable_params']:,} | "
            f"{r['peak_memory_mb']:.0f} |")
    return "\n".join(out)


def in_subprocess(argv: list[str], what: str, args) -> dict:
    """Run this script with ``--worker what`` in a fresh process and return its JSON result:
    each strategy's peak memory is then its own, not what an earlier one left allocated."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        result = Path(fh.name)
    try:
        subprocess.run([sys.executable, __file__, *argv, "--worker", what,
                        "--result", str(result)], check=True)
        return json.loads(result.read_text())
    finally:
        result.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default="seqft,replay,ewc,inc_lora,routed_lora,stage_projector",
                   help="comma-separated strategies")
    p.add_argument("--tasks", default="colour,position,shape,count",
                   help="visual_shapes tasks in stream order (colour,shape,count,position,compare)")
    p.add_argument("--train", type=int, default=128, help="training examples per task")
    p.add_argument("--test", type=int, default=32, help="test examples per task")
    p.add_argument("--steps", type=int, default=24, help="optimizer steps per task (batch 8)")
    p.add_argument("--lr", type=float, default=1e-3,
                   help="LoRA and projector learning rate (3e-3 learns colour faster but wrecks "
                        "the language model's text answers: KL 5-26 nats vs 0.2-0.7)")
    p.add_argument("--align-steps", type=int, default=200)
    p.add_argument("--align-lr", type=float, default=3e-3)
    p.add_argument("--align-test", type=int, default=20, help="captions scored (ROUGE-L)")
    p.add_argument("--schedule", default="constant", choices=["constant", "cosine", "linear"],
                   help="learning-rate schedule after the 10%% warm-up (short stages: constant)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write raw results as JSON here")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one unit in this process
    p.add_argument("--result", help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args(argv)
    args.tasks = args.tasks.split(",")
    names = args.only.split(",")
    if args.worker:
        workdir = Path(tempfile.mkdtemp(prefix="everlearn-visual-"))
        try:
            if args.worker == "align":
                model_dir, align = aligned_model(args, workdir)
                out = {"model_dir": str(model_dir), "alignment": align}
            else:
                out = run_one(args.worker, Path(args.model_dir), args, workdir)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        Path(args.result).write_text(json.dumps(out))
        return 0
    began = time.perf_counter()
    rows: list[dict] = []
    done = in_subprocess(argv, "align", args)
    model_dir, align = done["model_dir"], done["alignment"]
    print(f"[visual] aligned model: {model_dir}", file=sys.stderr, flush=True)
    for name in names:
        print(f"[visual] {name} ...", file=sys.stderr, flush=True)
        rows.append(in_subprocess(argv + ["--model-dir", model_dir], name, args))
        print(summary_table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
        if args.out:  # after every strategy, so that a killed benchmark keeps its rows
            Path(args.out).write_text(json.dumps(
                {"settings": {k: v for k, v in vars(args).items()
                              if k not in ("worker", "result", "model_dir")},
                 "alignment": align, "rows": rows}, indent=2))
    print(f"{datetime.now(timezone.utc):%Y-%m-%d}, {platform.processor() or platform.machine()}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
          f"tasks {','.join(args.tasks)}, "
          f"train={args.train} test={args.test} steps/task={args.steps} lr={args.lr}, "
          f"whole benchmark {time.perf_counter() - began:.0f} s")
    print(f"alignment ({align['steps']} steps, {align['train_time_s']:.0f} s training, "
          f"{align['trainable_params']:,} trainable): captions ROUGE-L "
          f"{align['captions_rouge_l_before']:.1f} -> {align['captions_rouge_l_after']:.1f}")
    print()
    print(summary_table(rows))
    for row in rows:
        print()
        print(task_table(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

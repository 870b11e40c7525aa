"""Model editors side by side on the embedded SmolLM2-135M-Instruct: the built-in
counterfactual edit stream at 4 batches x 8 edits, and a long stream of one edit per stage.

Editors: ``ft`` (constrained fine-tuning of layer 20's MLP, LoRA, no strategy), ``grace``,
``rome``, ``memit``, ``alphaedit`` and ``wise``, or any registered strategy named in
``--only`` (a name that is not registered is skipped with a note). Each run records, at the
end: reliability, generalisation and locality over all edits (``editing.final``), the
general-ability deltas against the base model (``eval.general_probes: [kl, labelled]``: the
agreement with the base model's answers and the labelled general questions, in points), wall
time, and the extra storage the editor leaves in the run directory (strategy state and caches,
per checkpoint and in all; weights are not counted).

The long stream (``--long-edits``, default 200) is one edit per stage: the 65 editable facts of
``edits_counterfactual`` first (the same counterfactual edits, locality prompts about its
held-back facts), then edits that insert facts about invented subjects ("The capital of
Varnelia is" -> "Lima"), since the model knows only 87 of the suite's facts; paraphrases and
locality prompts as in the suite. Its rows of R are full every ``--eval-every`` stages and at
the end (``eval.every``); in between a row scores the stage just edited.

Usage::

    .venv/bin/python benchmarks/editors.py --only rome --streams 4x8 --edits-per-batch 2 \\
        --batches 4                                # a probe: 8 edits, a few minutes
    .venv/bin/python benchmarks/editors.py --out docs/editors.json --markdown docs/editors.md
    .venv/bin/python benchmarks/editors.py --model tiny-llama --batches 1 --edits-per-batch 2 \
        --long-edits 3 --eval-every 2            # a one-minute smoke run of the script itself
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from everlearn.data.builtin.counterfactual import (
    POOLS,
    TEMPLATES,
    CounterfactualOptions,
    build_batches,
    prompt_of,
    split_facts,
)
from everlearn.runs.environment import cpu_model
from everlearn.runs.runner import start_run
from everlearn.strategies import STRATEGIES
from everlearn.validation import build_config

EDITORS = ("ft", "grace", "rome", "memit", "alphaedit", "wise")
# Options that differ from a strategy's defaults here (as in examples/sequential_editing.yaml)
OPTIONS: dict[str, dict] = {
    "grace": {"layer": 24, "epsilon": 20.0, "iterations": 100, "lr": 1.0},
}
FULL_WEIGHTS = {"rome", "memit", "alphaedit"}  # editors that need model.finetune: full
SYLLABLES = ("var", "nel", "tor", "mi", "ka", "ran", "dos", "lu", "bre", "sha", "ven", "ti",
             "ol", "gar", "zen", "pa", "rio", "len", "quo", "fa")


def invented_subjects(n: int, seed: int) -> list[str]:
    """``n`` distinct invented place names (seeded syllable combinations)."""
    rng = random.Random(f"editors:{seed}:subjects")
    out: list[str] = []
    while len(out) < n:
        name = "".join(rng.choice(SYLLABLES) for _ in range(3)).capitalize() + "ia"
        if name not in out:
            out.append(name)
    return out


def long_stream_records(n: int, seed: int) -> list[dict]:
    """``n`` edit records: the suite's 65 editable facts, then invented ones."""
    opts = CounterfactualOptions(edits_per_batch=1)
    real, kept = split_facts(seed, opts.held_back)
    rows = [{"prompt": r.prompt, "target_new": r.response,
             "rephrase_prompt": r.rephrase_prompt, "locality_prompt": r.locality_prompt,
             "locality_ground_truth": r.locality_ground_truth, "subject": r.meta["subject"],
             "ground_truth": r.meta["ground_truth"]}
            for train, _ in build_batches(min(n, len(real)), seed, opts) for r in train]
    rng = random.Random(f"editors:{seed}:invented")
    relations = ("capital", "language", "continent")  # cloze templates that take a country
    for k, subject in enumerate(invented_subjects(max(0, n - len(rows)), seed)):
        relation = relations[k % len(relations)]
        local = rng.sample(kept, 2)
        rows.append({
            "prompt": prompt_of(relation, subject), "target_new": rng.choice(POOLS[relation]),
            "rephrase_prompt": [prompt_of(relation, subject, t)
                                for t in range(1, len(TEMPLATES[relation]))],
            "locality_prompt": [prompt_of(r, s) for r, s, _ in local],
            "locality_ground_truth": [v for _, _, v in local], "subject": subject})
    return rows[:n]


def stages_for(stream: str, args, workdir: Path) -> list[dict]:
    if stream == "4x8":
        return [{"builtin": "edits_counterfactual", "periods": args.batches,
                 "builtin_options": {"edits_per_batch": args.edits_per_batch}}]
    data = workdir / "long"
    data.mkdir(parents=True, exist_ok=True)
    stages = []
    for i, row in enumerate(long_stream_records(args.long_edits, args.seed)):
        path = data / f"edit-{i:03d}.jsonl"
        path.write_text(json.dumps(row) + "\n")
        stages.append({"name": f"edit-{i:03d}", "kind": "edit", "train": str(path),
                       "test": str(path)})
    return stages


def config(name: str, stream: str, args, workdir: Path) -> dict:
    full = name in FULL_WEIGHTS
    tiny = args.model == "tiny-llama"  # the smoke run: layers that a 2-layer model has
    options = {} if tiny else OPTIONS.get(name, {})
    cfg = {
        "name": f"editors-{name}-{stream}", "seed": args.seed, "scenario": "DIL",
        "model": {"name": args.model, "finetune": "full" if full else "lora"},
        "train": {"lr": 1e-3, "batch_size": 8, "steps": 30, "max_length": 64},
        "edit": {"format": "raw", "layers": [-1] if tiny else [20]},
        "eval": {"batch_size": 32, "general_probes": ["kl", "labelled"]},
        "keep_stage_weights": "last",
        "stages": stages_for(stream, args, workdir),
        "strategies": [{"name": "seqft"} if name == "ft" else {"name": name, **options}],
    }
    if stream == "long":
        cfg["eval"].update({"every": args.eval_every, "sample_earlier": 0})
    return cfg


def size_mb(paths) -> float:
    return sum(f.stat().st_size for p in paths if p.exists()
               for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file()) / 2**20


def extra_storage(path: Path) -> dict[str, float]:
    """MB the editor adds beside the weights: its state per checkpoint, caches in all."""
    phases = sorted((path / "checkpoints").glob("phase-*"))
    state = [size_mb([p / "strategy.safetensors", p / "strategy.json"]) for p in phases]
    return {"state_mb_last_checkpoint": state[-1] if state else 0.0,
            "cache_mb": size_mb([path / "cache"])}


def run_one(name: str, stream: str, args, workdir: Path) -> dict:
    cfg = build_config(config(name, stream, args, workdir), f"editors:{name}:{stream}")
    start = time.perf_counter()
    path, res = start_run(cfg, workdir / f"{name}-{stream}", quiet=not args.progress)
    wall = time.perf_counter() - start
    general = res.get("general") or {}
    deltas = {k: v["delta"][-1] for k, v in general.items() if v.get("delta")}
    final = (res.get("editing") or {}).get("final") or {}
    return {
        "editor": name, "stream": stream, "edits": final.get("edits"),
        "reliability": final.get("reliability"), "generalisation": final.get("generalisation"),
        "locality": final.get("locality"), "general_delta": deltas,
        "general_kl_final": ((res.get("general_kl") or {}).get("scores") or [None])[-1],
        "wall_time_s": wall, "edit_time_s": sum(c["train_time_s"] for c in res["cost"]),
        **extra_storage(path), "strategy_metrics": res.get("strategy_metrics", {}),
    }


def fmt(x, digits=1) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def table(rows: list[dict]) -> str:
    out = ["| editor | stream | edits | reliability | generalisation | locality | "
           "general delta (agreement / labelled) | wall s | edit s | state MB / ckpt | "
           "cache MB |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        d = r["general_delta"]
        out.append(
            f"| {r['editor']} | {r['stream']} | {r['edits']} | {fmt(r['reliability'])} | "
            f"{fmt(r['generalisation'])} | {fmt(r['locality'])} | "
            f"{fmt(d.get('agreement'))} / {fmt(d.get('labelled'))} | {r['wall_time_s']:.0f} | "
            f"{r['edit_time_s']:.0f} | {r['state_mb_last_checkpoint']:.2f} | "
            f"{r['cache_mb']:.1f} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", help=f"comma-separated editors (default: {','.join(EDITORS)}; "
                   "ft = constrained fine-tuning, the others registered strategy names)")
    p.add_argument("--streams", default="4x8,long", help="4x8 and/or long")
    p.add_argument("--batches", type=int, default=4, help="batches of the 4x8 stream")
    p.add_argument("--edits-per-batch", type=int, default=8)
    p.add_argument("--long-edits", type=int, default=200, help="edits of the long stream")
    p.add_argument("--eval-every", type=int, default=50, help="full rows of the long stream")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default="smollm2-135m-instruct",
                   help="model.name (tiny-llama: a seconds-long smoke run of this script)")
    p.add_argument("--out", help="write the rows as JSON here (after every run)")
    p.add_argument("--markdown", help="write the table here")
    p.add_argument("--keep", help="keep the run directories under this folder")
    p.add_argument("--progress", action="store_true")
    args = p.parse_args(argv)
    names = args.only.split(",") if args.only else list(EDITORS)
    for name in [n for n in names if n != "ft" and n not in STRATEGIES]:
        print(f"[editors] {name}: not a registered strategy here, skipped", file=sys.stderr)
    names = [n for n in names if n == "ft" or n in STRATEGIES]
    streams = [s for s in args.streams.split(",") if s]
    if any(s not in ("4x8", "long") for s in streams):
        p.error(f"--streams: expected 4x8 and/or long, got {args.streams}")
    workdir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="everlearn-ed-"))
    rows = []
    try:
        for stream in streams:
            for name in names:
                print(f"[editors] {name} on {stream} ...", file=sys.stderr, flush=True)
                rows.append(run_one(name, stream, args, workdir))
                print(table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
                if args.out:
                    Path(args.out).write_text(json.dumps({"settings": vars(args),
                                                          "rows": rows}, indent=2))
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    header = (f"{datetime.now(timezone.utc):%Y-%m-%d}, {cpu_model() or platform.machine()}, "
              f"{args.model}, seed {args.seed}")
    text = header + "\n\n" + table(rows) + "\n"
    if args.markdown:
        Path(args.markdown).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

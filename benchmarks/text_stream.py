"""A boundary-free text stream on the embedded model: EWC with fixed boundaries, EWC with
boundaries from the shift detector, and seqft without boundaries.

Stream (same order every time): news articles (SuperNI task1290, XSum inputs) -> medical
abstract sentences (task181) -> tweets (task1687, Sentiment140 inputs), from
``../shared/data/superni``: the task *inputs* as raw text, documents in file order until about
``--words`` words per domain, and each task's test inputs (``--test-words``) as the domain's
held-out text. The domains were picked for clearly different base-model losses (about 3.7, 4.4
and 5.7 nats per token), rising along the stream, so the shifts are ones a loss-based detector
can see. The three form one token stream; the true shifts are where one domain's text gives
way to the next. Reports, per run, where the boundaries fell, what the detector found, the
perplexity on each domain's held-out text before the stream, at the boundary nearest to the
end of its text and after the stream, the optimizer steps and the wall time.

Usage::

    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python benchmarks/text_stream.py
    .venv/bin/python benchmarks/text_stream.py --words 300 --test-words 100 --only seqft-none
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from everlearn.runs.runner import start_run
from everlearn.validation import build_config

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "superni"
DOMAINS = [("news", "task1290_xsum_summarization"), ("medical", "task181_outcome_extraction"),
           ("tweets", "task1687_sentiment140_classification")]
RUNS = {  # name: (strategy, boundaries)
    "ewc-fixed": ("ewc", "fixed"),
    "ewc-detector": ("ewc", "detector"),
    "seqft-none": ("seqft", "none"),
}


def write_domains(out: Path, words: int, test_words: int) -> list[dict]:
    """Each domain's task inputs as JSONL text, in file order: documents until ``words``
    words for training and ``test_words`` for held-out text (so the domains weigh the same
    although their documents differ in length)."""
    stages = []
    for name, task in DOMAINS:
        files = {}
        for split, budget in (("train", words), ("test", test_words)):
            rows, n = [], 0
            for inst in json.loads((DATA / task / f"{split}.json").read_text())["Instances"]:
                if n >= budget:
                    break
                rows.append(inst["input"].strip())
                n += len(rows[-1].split())
            path = out / f"{name}-{split}.jsonl"
            path.write_text("".join(json.dumps({"text": r}) + "\n" for r in rows))
            files[split] = str(path)
        stages.append({"name": name, "kind": "cpt", **files})
    return stages


def run_config(name: str, stages: list[dict], args, out: Path) -> dict:
    strategy, mode = RUNS[name]
    boundaries: dict = {"mode": mode}
    if mode == "fixed":
        boundaries["every_tokens"] = args.every
    if mode == "detector":
        boundaries["window"] = args.window
    return {
        "name": f"text-stream-{name}", "seed": args.seed, "output_dir": str(out / "runs"),
        "scenario": "DIL",
        "model": {"name": "smollm2-135m-instruct", "finetune": "lora",
                  "lora": {"r": 8, "alpha": 16}},
        "train": {"lr": args.lr, "batch_size": args.batch, "max_length": args.length,
                  "warmup_ratio": 0.05},
        "eval": {"batch_size": 16},
        "stages": stages,
        "text_stream": {"token_budget": args.budget, "boundaries": boundaries},
        "strategies": [{"name": strategy, **({"ewc_lambda": args.ewc_lambda,
                                              "fisher_samples": args.fisher_samples}
                                             if strategy == "ewc" else {})}],
    }


def summarize(name: str, res: dict, wall: float) -> dict:
    ts = res["text_stream"]
    names = [s["name"] for s in res["stages"]]
    return {
        "run": name, "strategy": "+".join(res["strategies"]), "boundaries": ts["mode"],
        "positions": [b["position"] for b in ts["boundaries"]], "shifts": ts["shifts"],
        "detection": ts.get("detection"),
        "base": dict(zip(names, res["R"][0])), "final": dict(zip(names, res["R"][-1])),
        "mean_final": sum(res["R"][-1]) / len(names),
        "after": {p["name"]: p["after"] for p in ts["per_stage"]},
        "wall_s": wall, "steps": sum(c["steps"] for c in res["cost"]),
        "tokens_trained": sum(c["tokens_trained"] for c in res["cost"]),
        "strategy_s": sum(c.get("strategy_time_s", 0.0) for c in res["cost"]),
    }


def table(rows: list[dict]) -> str:
    names = [n for n, _ in DOMAINS]
    head = ("| run | boundaries at (tokens) | true shifts | "
            + " | ".join(f"{n} ppl (base -> after it -> final)" for n in names)
            + " | mean final ppl | steps | CPU s | wall s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        cells = [f"{r['base'][n]:.2f} -> " + (f"{r['after'][n]:.2f}" if r["after"][n] is not None
                                             else "n/a") + f" -> {r['final'][n]:.2f}"
                 for n in names]
        lines.append(f"| {r['run']} | {', '.join(map(str, r['positions'])) or '-'} | "
                     f"{', '.join(map(str, r['shifts']))} | " + " | ".join(cells)
                     + f" | {r['mean_final']:.2f} | {r['steps']} | {r['cpu_s']:.0f} | "
                     f"{r['wall_s']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--words", type=int, default=2500, help="training words per domain")
    ap.add_argument("--test-words", type=int, default=300, help="held-out words per domain")
    ap.add_argument("--budget", type=int, default=None, help="stream tokens (default: all)")
    ap.add_argument("--every", type=int, default=1536, help="fixed: tokens between boundaries")
    ap.add_argument("--window", type=int, default=4, help="detector: reference window, chunks")
    ap.add_argument("--batch", type=int, default=4, help="blocks per chunk (optimizer step)")
    ap.add_argument("--length", type=int, default=128, help="block size, tokens")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--ewc-lambda", type=float, default=1000.0)
    ap.add_argument("--fisher-samples", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default=",".join(RUNS), help="comma-separated runs")
    ap.add_argument("--json", default=None, help="write the raw summaries here")
    args = ap.parse_args(argv)
    if not DATA.is_dir():
        print(f"{DATA}: missing (the SuperNI tasks this benchmark reads)", file=sys.stderr)
        return 1
    tmp = Path(tempfile.mkdtemp(prefix="text-stream-"))
    try:
        stages = write_domains(tmp, args.words, args.test_words)
        rows = []
        for name in args.only.split(","):
            start, cpu = time.perf_counter(), time.process_time()
            _, res = start_run(build_config(run_config(name, stages, args, tmp)), quiet=True)
            rows.append(summarize(name, res, time.perf_counter() - start))
            rows[-1]["cpu_s"] = time.process_time() - cpu
            det = rows[-1]["detection"]
            print(f"{name}: {rows[-1]['wall_s']:.0f} s, boundaries {rows[-1]['positions']}"
                  + (f", detector missed {det['missed']}, false alarms {det['false_alarms']}"
                     if det else ""), file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    import torch

    print(f"{datetime.now(timezone.utc):%Y-%m-%d}, {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Importance passes (EWC's Fisher, MAS's Omega): the reference (one forward and backward per
example, as everlearn did before), the loop (the same with the LM head at the answer positions
only) and the batched per-example gradients of ``strategies.common.per_example`` (torch.func).

All three run in one process on the same model (the embedded SmolLM2-135M-Instruct with PEFT
LoRA r=8 on all linear layers, as a run with defaults trains it), the same tokenised examples
(SuperNI task1687 from ``../shared/data/superni`` when that folder exists, else the built-in
``cipher`` task) and the same seed, interleaved in rounds (ABC, CBA, ...) so a noisy machine
slows all alike; wall and CPU time (``time.process_time``, steadier on a shared machine) are
both reported. Each timed call is a whole ``penalty.diag_fisher`` (sampled, EWC's default) or
``penalty.mas_importance`` over ``--examples`` examples. The batched result is compared with
the loop's (largest difference relative to the largest entry of each weight).

Usage::

    .venv/bin/python benchmarks/importance.py                          # fisher and mas, ~2 min
    .venv/bin/python benchmarks/importance.py --what fisher --examples 16 --rounds 1
    .venv/bin/python benchmarks/importance.py --device cuda --precision bf16 --chunk 16
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import torch

from everlearn.config import ModelConfig
from everlearn.data.encode import Encoder
from everlearn.models.loading import load_base_model, make_trainable
from everlearn.runs.environment import cpu_model
from everlearn.strategies.common import penalty as P
from everlearn.strategies.common import per_example as PE

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import load_records  # noqa: E402 - the same records the throughput runs train on


def reference_pass(model, params, batches, what: str, autocast):
    """The pass as everlearn ran it before the batched one (commit 29cb52c): one forward and
    backward per example, the LM head at every position, the token drawn by multinomial."""
    import torch.nn.functional as F

    names, plist = list(params), list(params.values())
    out = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    gen = torch.Generator(device=batches[0]["input_ids"].device).manual_seed(0)
    model.eval()
    for b in batches:
        with autocast():
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        logits = logits[:, :-1].to(torch.float32)[b["labels"][:, 1:] != -100]
        if what == "fisher":
            logp = F.log_softmax(logits, dim=-1)
            target = torch.multinomial(logp.exp().detach(), 1, generator=gen).squeeze(-1)
            loss = -logp.gather(-1, target[:, None]).mean()
        else:
            loss = logits.pow(2).sum(-1).mean()
        for n, g in zip(names, torch.autograd.grad(loss, plist, allow_unused=True)):
            if g is not None:
                out[n] += g * g if what == "fisher" else g.abs()
    return {n: o / len(batches) for n, o in out.items()}


def passes(model, params, batches, what: str, size: int, autocast):
    """One importance pass over ``batches`` with chunks of ``size`` (1: the loop; 0: the
    reference, :func:`reference_pass`)."""
    if size == 0:
        return reference_pass(model, params, batches, what, autocast)
    if what == "fisher":
        gen = torch.Generator(device=batches[0]["input_ids"].device).manual_seed(0)
        return P.diag_fisher(model, params, batches, sample=True, generator=gen,
                             autocast=autocast, size=size)
    return P.mas_importance(model, params, batches, autocast=autocast, size=size)


def relative_difference(a: dict, b: dict) -> float:
    """Largest |a - b| of any weight, relative to the largest |a| of that weight."""
    return max(((a[n] - b[n]).abs().max() / a[n].abs().max().clamp_min(1e-30)).item()
               for n in a)


def measure(model, params, batches, what: str, chunk: int, rounds: int, autocast) -> dict:
    """Interleaved timings of the reference, the loop and the batched pass (wall and CPU
    time, per example), and how far the batched result is from the loop's."""
    sizes = {"reference": 0, "loop": 1, "batched": chunk}
    wall = {k: 0.0 for k in sizes}
    cpu = dict(wall)
    results = {}
    passes(model, params, batches[:2], what, 2, autocast)  # warm-up (first-call overheads)
    for r in range(rounds):
        order = list(sizes) if r % 2 == 0 else list(reversed(sizes))
        for name in order:
            t0, c0 = time.perf_counter(), time.process_time()
            results[name] = passes(model, params, batches, what, sizes[name], autocast)
            wall[name] += time.perf_counter() - t0
            cpu[name] += time.process_time() - c0
    n = rounds * len(batches)
    row = {"what": what, "examples": len(batches), "chunk": chunk, "rounds": rounds,
           "max_relative_difference": relative_difference(results["loop"], results["batched"])}
    for name in sizes:
        row[f"{name}_s_per_example"] = wall[name] / n
        row[f"{name}_cpu_s_per_example"] = cpu[name] / n
    row["speedup_vs_reference"] = wall["reference"] / wall["batched"]
    row["cpu_speedup_vs_reference"] = cpu["reference"] / cpu["batched"]
    row["speedup_vs_loop"] = wall["loop"] / wall["batched"]
    return row


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--what", choices=["fisher", "mas", "both"], default="both")
    ap.add_argument("--examples", type=int, default=16)
    ap.add_argument("--chunk", type=int, default=0,
                    help="examples per batched pass (0: per_example.chunk_size, as runs on an "
                         "accelerator; on a CPU runs use the loop)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--data", choices=["auto", "superni", "builtin"], default="auto")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    cfg = ModelConfig()
    model, tok = load_base_model(cfg)
    model = make_trainable(model, cfg).to(args.device)
    records, data_name = load_records(args.examples, args.data)
    encoder = Encoder(tok, args.max_length, use_chat_template=True)
    examples = encoder.encode_stage("sft", records)[:args.examples]
    batches = P.single_batches(examples, encoder.pad_id, args.device)
    params = P.trainable(model)
    chunk = args.chunk or PE.chunk_size(params)
    device_type = torch.device(args.device).type

    def autocast():
        return torch.autocast(device_type, dtype=torch.bfloat16,
                              enabled=args.precision == "bf16")

    rows = [measure(model, params, batches, w, chunk, args.rounds, autocast)
            for w in (["fisher", "mas"] if args.what == "both" else [args.what])]
    lengths = [len(e.input_ids) for e in examples]
    info = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "cpu": cpu_model(),
            "device": args.device, "precision": args.precision, "threads": args.threads,
            "torch": torch.__version__, "python": platform.python_version(),
            "data": data_name, "mean_tokens": sum(lengths) / len(lengths),
            "trainable_parameters": sum(p.numel() for p in params.values())}
    print(json.dumps(info))
    print("| pass | examples | chunk | s/example: reference / loop / batched | batched vs "
          "reference (wall, CPU time) | batched vs loop | max rel. diff |")
    print("|---|---:|---:|---|---|---:|---:|")
    for r in rows:
        print(f"| {r['what']} | {r['examples']} | {r['chunk']} "
              f"| {r['reference_s_per_example']:.3f} / {r['loop_s_per_example']:.3f} / "
              f"{r['batched_s_per_example']:.3f} | {r['speedup_vs_reference']:.2f}x, "
              f"{r['cpu_speedup_vs_reference']:.2f}x | {r['speedup_vs_loop']:.2f}x "
              f"| {r['max_relative_difference']:.1e} |")
    if args.json:
        args.json.write_text(json.dumps({"info": info, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Per-process peak memory of a multi-process run: hand data parallelism vs FSDP2 vs ZeRO-2.

Runs the same one-stage stream under ``torchrun --nproc_per_node N -m everlearn run``:
replicated (everlearn's hand data parallelism), with the environment of
``examples/accelerate/fsdp.yaml`` (FSDP2, full shard, one unit per decoder layer) and, when
DeepSpeed is installed, with that of ``examples/accelerate/deepspeed_zero2.yaml`` (DeepSpeed
ZeRO stage 2: gradients and AdamW state sharded, weights replicated). While each
run goes, the peak resident set size (``VmHWM``) of every worker process is read from /proc;
the table gives it per rank, with the training phase's own peak from ``results.json`` (rank 0,
resident memory sampled at every optimizer step) and the phase's training time.

Usage::

    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python benchmarks/fsdp_memory.py   # ~3 min, CPU
    .venv/bin/python benchmarks/fsdp_memory.py --model tiny-llama --steps 2       # smoke run

On CPU, the processes share the cores (pin them to one with ``taskset -c 1``): compare memory,
not time. Resident memory on CPU also counts what glibc's allocator keeps after tensors are
freed: FSDP allocates and frees gathered weights for every layer on every pass, and with the
default allocator settings the heap keeps growing. ``--mmap-threshold 65536`` sets
``MALLOC_MMAP_THRESHOLD_`` for the workers, so that large blocks go back to the system when
freed and resident memory follows the live tensors.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import yaml

FSDP_ENV = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2",
            "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP",
            "FSDP_RESHARD_AFTER_FORWARD": "true"}  # what examples/accelerate/fsdp.yaml sets
ZERO2_ENV = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2",
             "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": "none",
             "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE": "none"}  # examples/.../deepspeed_zero2
RUNS = {"hand DP": {}, "FSDP full shard": FSDP_ENV, "DeepSpeed ZeRO-2": ZERO2_ENV}


def write_stream(tmp: Path, args) -> Path:
    rows = [{"prompt": f"Repeat the code word for item {i}.", "response": f"code {i % 7} ok"}
            for i in range(64)]
    for split, part in (("train", rows[:56]), ("test", rows[56:])):
        (tmp / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    cfg = {"name": "fsdp-memory", "output_dir": str(tmp / "runs"),
           "model": {"name": args.model, "finetune": args.finetune},
           "train": {"steps": args.steps, "batch_size": args.batch_size, "max_length": 64,
                     "lr": 1e-4, "precision": "fp32"},
           "eval": {"batch_size": 8, "max_new_tokens": 6},
           "stages": [{"name": "codes", "train": str(tmp / "train.jsonl"),
                       "test": str(tmp / "test.jsonl"), "metric": "exact_match"}]}
    path = tmp / "stream.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def descendants(pid: int) -> list[int]:
    kids: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for k in kids.get(todo.pop(), []):
            out.append(k)
            todo.append(k)
    return out


def vm_hwm_mb(pid: int) -> tuple[float, int | None]:
    """(peak RSS in MB, torchrun RANK) of a process, or (0, None) once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return 0.0, None
    hwm = next((int(line.split()[1]) / 1024 for line in status.splitlines()
                if line.startswith("VmHWM:")), 0.0)
    rank = next((int(v.split(b"=", 1)[1]) for v in env if v.startswith(b"RANK=")), None)
    return hwm, rank


def run(cfg: Path, out: Path, nproc: int, extra_env: dict[str, str]) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), **extra_env}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master_addr", "127.0.0.1", "--master_port", str(port),
           "-m", "everlearn", "run", str(cfg), "--output", str(out), "-q"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    peaks: dict[int, float] = {}
    while proc.poll() is None:
        for pid in descendants(proc.pid):
            hwm, rank = vm_hwm_mb(pid)
            if rank is not None and "everlearn" in Path(f"/proc/{pid}/cmdline").read_text(
                    errors="replace"):
                peaks[rank] = max(peaks.get(rank, 0.0), hwm)
        time.sleep(0.2)
    if proc.returncode != 0:
        raise SystemExit(f"run failed: {proc.stderr.read()[-2000:]}")
    res = json.loads((out / "results.json").read_text())
    cost = res["cost"][0]
    return {"peak_rss_mb_per_rank": [round(peaks[r]) for r in sorted(peaks)],
            "train_phase_peak_mb_rank0": round(cost["peak_memory_mb"]),
            "train_time_s": round(cost["train_time_s"], 1), "final_loss": cost["final_loss"],
            "R": res["R"], "trainable_params": cost["trainable_params"],
            "total_params": cost["total_params"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--finetune", default="lora", choices=["lora", "full"])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--mmap-threshold", type=int, default=None,
                    help="MALLOC_MMAP_THRESHOLD_ for the workers (bytes; default: glibc's)")
    ap.add_argument("--runs", default=",".join(RUNS),
                    help=f"comma-separated, of: {', '.join(RUNS)}")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    names = args.runs.split(",")
    if unknown := [n for n in names if n not in RUNS]:
        ap.error(f"--runs: unknown {unknown}; expected names from {list(RUNS)}")
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = write_stream(Path(tmp), args)
        malloc = ({"MALLOC_MMAP_THRESHOLD_": str(args.mmap_threshold)}
                  if args.mmap_threshold else {})
        for name in names:
            env = RUNS[name]
            rows[name] = run(cfg, Path(tmp) / name.replace(" ", "-"), args.nproc,
                             {**malloc, **env})
    print(f"{args.model}, {args.finetune}, fp32, {args.nproc} processes, {args.steps} steps of "
          f"batch {args.batch_size}; MALLOC_MMAP_THRESHOLD_="
          f"{args.mmap_threshold or 'default'}; {datetime.now(timezone.utc):%Y-%m-%d}")
    print("| run | peak RSS per rank (MB) | training-phase peak, rank 0 (MB) | train s | "
          "final loss |")
    print("|---|---|---:|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {' / '.join(map(str, r['peak_rss_mb_per_rank']))} | "
              f"{r['train_phase_peak_mb_rank0']} | {r['train_time_s']} | "
              f"{r['final_loss']:.4f} |")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)},
                                         "rows": rows}, indent=2))


if __name__ == "__main__":
    main()

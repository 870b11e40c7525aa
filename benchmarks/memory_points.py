"""Resident memory at the points of one ``everlearn run``: where a run's peak RSS comes from.

Prints VmRSS (now) and VmHWM (the peak so far) from /proc/self/status, in MB, before and after
loading the model, placing it (PEFT wrapping, device), the run's set-up (evaluator, strategies,
probes), every row of R and every training phase. ``--trim`` also runs ``gc.collect()`` and
glibc's ``malloc_trim(0)`` after each point, which shows how much of the RSS is memory the
allocator keeps after it was freed (reused later, not returned to the system). Linux only.

Usage::

    .venv/bin/python benchmarks/memory_points.py CONFIG OUTPUT_DIR [key=value ...] [--trim]
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/memory_points.py \\
        ../peer-work/everlearn/seqft.yaml /tmp/mem train.steps=1 stages.0.max_train=8 \\
        stages.1.max_train=8 stages.0.max_test=8 stages.1.max_test=8
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import sys
import time
import warnings

T0 = time.time()


def rss() -> dict[str, int]:
    """VmRSS and VmHWM of this process, in MB."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS", "VmHWM")):
                key, value = line.split(":")
                out[key] = int(value.split()[0]) // 1024
    return out


def mark(what: str) -> None:
    d = rss()
    print(f"{time.time() - T0:6.1f}s  {what:48s} rss {d['VmRSS']:5d} MB  peak "
          f"{d['VmHWM']:5d} MB", flush=True)


def wrap(owner, name: str, label: str, trim: bool) -> None:
    """Mark before and after every call of ``owner.name``."""
    inner = getattr(owner, name)

    def marked(*args, **kwargs):
        mark(f"before {label}")
        out = inner(*args, **kwargs)
        mark(f"after {label}")
        if trim:
            gc.collect()
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            mark("  after gc.collect + malloc_trim")
        return out

    setattr(owner, name, marked)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("output")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--trim", action="store_true")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    mark("start")
    import torch  # noqa: F401
    import transformers  # noqa: F401

    mark("imported torch + transformers")
    from everlearn.runs import runner
    from everlearn.runs.config_source import load_run_config
    from everlearn.training.trainer import Trainer

    mark("imported everlearn")
    wrap(runner, "load_base_model", "load_base_model", args.trim)
    wrap(runner, "trainable_on_device", "trainable_on_device", args.trim)
    wrap(runner.Run, "_prepare", "run set-up (evaluator, strategies, probes)", args.trim)
    wrap(runner.Run, "_evaluate_row", "a row of R", args.trim)
    wrap(Trainer, "train_phase", "a training phase", args.trim)
    cfg, source = load_run_config(args.config, args.overrides, None)
    runner.start_run(cfg, args.output, quiet=True, source=source)
    gc.collect()
    mark("end")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The two README commands timed as a newcomer meets them: a fresh clone, a fresh virtualenv.

Clones this checkout's HEAD into a temporary directory and times, each in its own process:

1. ``make install`` (a new ``.venv`` from ``requirements.lock``),
2. ``make test`` (ruff and the whole suite, one pytest worker per core) and, for the ratio, the
   same suite in one process (``make test PYTEST_WORKERS=0``, with ``--serial``),
3. the demo: what ``make demo`` runs after installing (``everlearn run``, the quickstart), with
   its base-row, training and evaluation times read from its ``results.json``.

``--no-bf16`` makes this machine behave like one without native bf16: torch's CPU kernels are
capped at AVX2 (``ATEN_CPU_CAPABILITY=avx2``) and the demo runs with ``train.precision=fp32``,
which is what ``precision: auto`` picks on such a CPU. It is an emulation: the cores stay as
fast as they are. The model cache and torch's compiled-extension cache (DeepSpeed builds a C++
op on first use) start empty, as on a new machine.

Usage::

    python3 benchmarks/readme_commands.py --no-bf16            # ~15 min on 2 cores
    python3 benchmarks/readme_commands.py --no-bf16 --serial   # adds the one-process suite
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
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def timed(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> float:
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    took = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)}: exit {proc.returncode} after {took:.0f} s; see {log}")
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-bf16", action="store_true", help="emulate a CPU without bf16")
    ap.add_argument("--serial", action="store_true", help="also time the suite in one process")
    ap.add_argument("--json", type=Path, help="write the numbers here too")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="readme-commands-"))
    clone = work / "everlearn"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    env = dict(os.environ, EVERLEARN_CACHE=str(work / "cache"),
               TORCH_EXTENSIONS_DIR=str(work / "torch_extensions"))
    if args.no_bf16:
        env["ATEN_CPU_CAPABILITY"] = "avx2"
    out: dict = {"date": date.today().isoformat(), "cpu": cpu_model(), "cores": os.cpu_count(),
                 "no_bf16_emulated": args.no_bf16,
                 "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=clone,
                                          capture_output=True, text=True).stdout.strip()}
    out["install_s"] = timed(["make", "install"], clone, env, work / "install.log")
    out["test_s"] = timed(["make", "test"], clone, env, work / "test.log")
    if args.serial:
        out["test_serial_s"] = timed(["make", "test", "PYTEST_WORKERS=0"], clone, env,
                                     work / "test-serial.log")
    demo = ["./.venv/bin/everlearn", "run", "--output", str(work / "demo"), "-q"]
    if args.no_bf16:
        demo.insert(2, "train.precision=fp32")  # a config override, before the options
    out["demo_s"] = timed(demo, clone, env, work / "demo.log")
    res = json.loads((work / "demo" / "results.json").read_text())
    out["demo_base_row_s"] = res["base_eval_time_s"]
    out["demo_train_s"] = sum(c["train_time_s"] for c in res["cost"])
    out["demo_eval_s"] = sum(c["eval_time_s"] for c in res["cost"])
    out["demo_final_ap"] = res["metrics"]["final_ap"]
    out["environment"] = res.get("environment")
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    print(f"logs and the demo run in {work}", file=sys.stderr)


if __name__ == "__main__":
    main()

"""everlearn against EasyCL side by side on EasyCL's ABSACL_ATSC workload (issue 20).

The peer set-up lives outside the project (``../shared/peer-easycl``: EasyCL's checkout, its
virtualenv, the one-line patch, the model and the data; never committed here). This script runs
its ``side_by_side.sh`` once per method - both tools at the same time, each pinned to its own core
with one thread under ``/usr/bin/time -v`` - and collects one table: wall time, peak RSS and the
final accuracy of each side, with everlearn's speed-up and memory ratio.

    export EASYCL_SRC=/path/to/EasyCL PEER_WORK=/work/peer-work
    bash ../shared/peer-easycl/setup.sh                      # once (pip installs, model, data)
    .venv/bin/python benchmarks/peer_easycl.py --methods seqft ewc replay --json peer.json

Accuracy: everlearn's final AP (option log-likelihood for label stages) and EasyCL's mean final
accuracy (exact match of generated text), both in percent; they measure the same test sets with
different scorers, so they agree only within the test set's resolution (1/32 = 3.1 points).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
PEER = Path(os.environ.get("PEER_EASYCL", HERE.parents[1] / "shared" / "peer-easycl"))
SUMMARY = re.compile(r"^(everlearn|easycl)\s+(\w+)\s+wall_s=([\d.]+)\s+peak_rss_kB=(\d+)")


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def easycl_final_accuracy(work: Path, method: str) -> float | None:
    """Mean accuracy over the test sets after the last task, from EasyCL's cl_metrics.json."""
    path = work / "out" / method / "eval" / "cl_metrics.json"
    if not path.exists():
        return None
    metrics = json.loads(path.read_text())
    last = list(metrics.get("task_results_matrix", {}).values())[-1]
    scores = [r["accuracy"] for r in last.values() if isinstance(r.get("accuracy"), (int, float))]
    return 100.0 * sum(scores) / len(scores) if scores else None


def everlearn_final_ap(work: Path, method: str) -> float | None:
    path = work / "out" / f"everlearn-{method}" / "results.json"
    if not path.exists():
        return None
    matrix = json.loads(path.read_text())["R"]
    last = [v for v in matrix[-1] if v is not None]
    return sum(last) / len(last)


def run_method(method: str, everlearn_bin: str, work: Path) -> dict:
    """One side-by-side run; the two summary lines of side_by_side.sh parsed into a row."""
    proc = subprocess.run(["bash", str(PEER / "side_by_side.sh"), method, everlearn_bin],
                          capture_output=True, text=True, env={**os.environ,
                                                               "PEER_WORK": str(work)})
    sys.stdout.write(proc.stdout)
    row: dict = {"method": method, "rc": proc.returncode}
    for line in proc.stdout.splitlines():
        m = SUMMARY.match(line.strip())
        if m:
            row[f"{m[1]}_wall_s"] = float(m[3])
            row[f"{m[1]}_peak_gb"] = int(m[4]) / 1e6
    row["everlearn_ap"] = everlearn_final_ap(work, method)
    row["easycl_acc"] = easycl_final_accuracy(work, method)
    if row.get("everlearn_wall_s") and row.get("easycl_wall_s"):
        row["speedup"] = row["easycl_wall_s"] / row["everlearn_wall_s"]
        row["memory_ratio"] = row["everlearn_peak_gb"] / row["easycl_peak_gb"]
    return row


def markdown(rows: list[dict]) -> str:
    def f(v, fmt):
        return "n/a" if v is None else format(v, fmt)

    out = ["| method | everlearn wall s | EasyCL wall s | speed-up | everlearn peak GB | "
           "EasyCL peak GB | memory ratio | everlearn AP | EasyCL accuracy |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['method']} | {f(r.get('everlearn_wall_s'), '.0f')} | "
                   f"{f(r.get('easycl_wall_s'), '.0f')} | {f(r.get('speedup'), '.2f')}x | "
                   f"{f(r.get('everlearn_peak_gb'), '.2f')} | "
                   f"{f(r.get('easycl_peak_gb'), '.2f')} | "
                   f"{f(r.get('memory_ratio'), '.2f')} | {f(r.get('everlearn_ap'), '.1f')} | "
                   f"{f(r.get('easycl_acc'), '.1f')} |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", nargs="+", default=["seqft", "ewc", "replay"],
                    choices=["seqft", "ewc", "replay"])
    ap.add_argument("--everlearn", default=str(HERE.parent / ".venv" / "bin" / "everlearn"),
                    help="the everlearn executable to measure")
    ap.add_argument("--work", default=os.environ.get("PEER_WORK",
                                                     str(Path.home() / ".cache/everlearn-peer")))
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    if not (PEER / "side_by_side.sh").exists():
        print(f"peer_easycl: {PEER}/side_by_side.sh not found (set PEER_EASYCL)", file=sys.stderr)
        return 2
    rows = [run_method(m, args.everlearn, Path(args.work)) for m in args.methods]
    record = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "cpu": cpu_model(), "cores": os.cpu_count(), "rows": rows}
    print(markdown(rows))
    print(f"machine: {record['cpu']}, {record['cores']} cores; {record['date']}")
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
    return 0 if all(r["rc"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

"""everlearn against EasyCL side by side on EasyCL's ABSACL_ATSC workload (issue 20).

The peer set-up lives outside the project (``../shared/peer-easycl``: EasyCL's checkout, its
virtualenv, the one-line patch, the model and the data; never committed here). This script runs
its ``side_by_side.sh`` once per method - both tools at the same time, each pinned to its own core
with one thread under ``/usr/bin/time -v`` - and collects one table: wall time, peak RSS and the
final accuracy of each side, with everlearn's speed-up and memory ratio.

    export EASYCL_SRC=/path/to/EasyCL PEER_WORK=/work/peer-work
    bash ../shared/peer-easycl/setup.sh                      # once (pip installs, model, data)
    .venv/bin/python benchmarks/peer_easycl.py --methods seqft ewc replay --json peer.json
    .venv/bin/python benchmarks/peer_easycl.py --sweep --seeds 42 43 --json sweep.json

``--sweep`` measures the sweep goal: ``everlearn sweep`` over the three methods x the seeds (one
process per point, the base row shared through the sweep's content-keyed cache) on one core,
while the same six EasyCL workflows run one after another on the other core; then, on the
everlearn core while EasyCL is still running, the single runs (cold, as in the table above) and
any ``--extra`` override sets. EasyCL's seed is set in a copy of the peer folder's configs
(its only seed is ``seed:`` in ``configs/METHOD.yaml``); everything else is the peer set-up's.

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
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
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
    return easycl_accuracy(work / "out" / method / "eval" / "cl_metrics.json")


def everlearn_final_ap(work: Path, method: str) -> float | None:
    return run_summary(work / "out" / f"everlearn-{method}").get("ap")


def timed(cmd: list[str], core: int, log: Path, cwd: Path, env: dict) -> dict:
    """``cmd`` pinned to ``core`` with one thread under ``/usr/bin/time -v``: wall s, peak GB."""
    report = log.with_suffix(".time")
    with log.open("w") as out:
        rc = subprocess.run(["/usr/bin/time", "-v", "-o", str(report), "taskset", "-c",
                             str(core), *cmd], stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                            env={**env, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}).returncode
    wall = peak = None
    for line in report.read_text().splitlines():
        if "Elapsed (wall clock) time" in line:
            wall = 0.0
            for part in line.rsplit(" ", 1)[1].split(":"):
                wall = wall * 60 + float(part)
        elif "Maximum resident set size" in line:
            peak = int(line.rsplit(" ", 1)[1]) / 1e6
    return {"rc": rc, "wall_s": wall, "peak_gb": peak}


def seeded_peer(seed: int, work: Path) -> Path:
    """The peer folder itself for its own seed (42), else a copy with ``seed:`` replaced."""
    if seed == 42:
        return PEER
    copy = work / f"peer-seed{seed}"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(PEER, copy)
    for cfg in (copy / "configs").glob("*.yaml"):
        cfg.chmod(0o644)
        text = cfg.read_text()
        if "seed: 42" in text:
            cfg.write_text(text.replace("seed: 42", f"seed: {seed}"))
    return copy


SWEEP_STRATEGIES = ("strategies=[[seqft],[{name: ewc, options: {ewc_lambda: 10000, "
                    "fisher_samples: 64}}],[{name: replay, options: {mix_ratio: 0.3}}]]")


def run_sweep(args, work: Path) -> dict:
    """EasyCL's six workflows on one core; everlearn's sweep, then its single runs, on the other."""
    env = {**os.environ, "PEER_WORK": str(work)}
    side = work / "out" / "sweep-side"
    side.mkdir(parents=True, exist_ok=True)
    cfg_dir = Path(subprocess.run(["bash", str(PEER / "everlearn" / "make_everlearn_configs.sh")],
                                  env=env, capture_output=True, text=True,
                                  check=True).stdout.strip().splitlines()[-1])
    easycl_jobs = [(seed, m) for seed in args.seeds for m in ("seqft", "ewc", "replay")]
    peers = {} if args.reuse_easycl else {seed: seeded_peer(seed, work) for seed in args.seeds}

    def easycl_side() -> list[dict]:
        rows = []
        for seed, method in easycl_jobs:
            out_dir = work / "out" / f"sweep-easycl-{method}-{seed}"
            r = timed(["bash", str(peers[seed] / "run_easycl.sh"), method], args.easycl_cpu,
                      side / f"easycl-{method}-{seed}.log", work / "out",
                      {**env, "OUT_DIR": str(out_dir)})
            metrics = out_dir / "eval" / "cl_metrics.json"
            r.update(method=method, seed=seed, accuracy=easycl_accuracy(metrics))
            rows.append(r)
            print(f"[sweep] easycl {method} seed {seed}: {r}", flush=True)
        return rows

    def everlearn_side() -> list[dict]:
        rows = []
        if "sweep" in args.parts:
            sweep_dir = work / "out" / "sweep-everlearn"
            shutil.rmtree(sweep_dir, ignore_errors=True)
            seeds = "seed=[" + ",".join(str(s) for s in args.seeds) + "]"
            r = timed([args.everlearn, "sweep", "seqft.yaml", SWEEP_STRATEGIES, seeds,
                       "--output", str(sweep_dir)], args.everlearn_cpu,
                      side / "everlearn-sweep.log", cfg_dir, env)
            r.update(what="sweep", points=sweep_points(sweep_dir))
            rows.append(r)
            print(f"[sweep] everlearn sweep: {r['wall_s']} s", flush=True)
        for extra in ([[]] + [e.split() for e in args.extra]) if "singles" in args.parts else []:
            for method in ("seqft", "ewc", "replay"):
                label = " ".join([method, *extra])
                out_dir = work / "out" / f"single-{method}-{len(rows)}"
                shutil.rmtree(out_dir, ignore_errors=True)
                r = timed([args.everlearn, "run", f"{method}.yaml", *extra, "--output",
                           str(out_dir)], args.everlearn_cpu,
                          side / f"everlearn-{len(rows)}.log", cfg_dir, env)
                r.update(what=label, **run_summary(out_dir))
                rows.append(r)
                print(f"[sweep] everlearn {label}: {r}", flush=True)
        return rows

    if args.reuse_easycl:  # EasyCL's six workflows as an earlier --sweep measured them
        return {"easycl": json.loads(Path(args.reuse_easycl).read_text())["easycl"],
                "everlearn": everlearn_side()}
    with ThreadPoolExecutor(2) as pool:
        easycl = pool.submit(easycl_side)
        everlearn = pool.submit(everlearn_side)
        return {"easycl": easycl.result(), "everlearn": everlearn.result()}


def easycl_accuracy(metrics: Path) -> float | None:
    if not metrics.exists():
        return None
    last = list(json.loads(metrics.read_text()).get("task_results_matrix", {}).values())[-1]
    scores = [r["accuracy"] for r in last.values() if isinstance(r.get("accuracy"), (int, float))]
    return 100.0 * sum(scores) / len(scores) if scores else None


def run_summary(run_dir: Path) -> dict:
    """Final AP and where the time went, from a run's results.json."""
    path = run_dir / "results.json"
    if not path.exists():
        return {}
    res = json.loads(path.read_text())
    last = [v for v in res["R"][-1] if v is not None]
    keys = ("train_time_s", "eval_time_s", "strategy_time_s")
    cost = {k: round(sum(c.get(k) or 0 for c in res.get("cost", [])), 1) for k in keys}
    return {"ap": sum(last) / len(last), "base_eval_time_s": res.get("base_eval_time_s"), **cost}


def sweep_points(sweep_dir: Path) -> list[dict]:
    return [{"dir": d.name, **run_summary(d)} for d in sorted(sweep_dir.iterdir())
            if (d / "results.json").exists()]


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
    ap.add_argument("--sweep", action="store_true",
                    help="the sweep goal: 3 methods x --seeds on each side (see the docstring)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[42, 43])
    ap.add_argument("--extra", action="append", default=[], metavar="OVERRIDES",
                    help="with --sweep: a further set of everlearn single runs with these "
                         "key=value overrides, e.g. 'train.gradient_checkpointing=true'")
    ap.add_argument("--parts", nargs="+", default=["sweep", "singles"],
                    choices=["sweep", "singles"], help="with --sweep: everlearn's sweep, its "
                    "single runs, or both (one after the other on --everlearn-cpu)")
    ap.add_argument("--reuse-easycl", metavar="JSON", help="with --sweep: EasyCL's rows from "
                    "an earlier --sweep --json file instead of running EasyCL again")
    ap.add_argument("--everlearn-cpu", type=int, default=0)
    ap.add_argument("--easycl-cpu", type=int, default=1)
    args = ap.parse_args()
    if not (PEER / "side_by_side.sh").exists():
        print(f"peer_easycl: {PEER}/side_by_side.sh not found (set PEER_EASYCL)", file=sys.stderr)
        return 2
    if args.sweep:
        record = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "cpu": cpu_model(), "cores": os.cpu_count(),
                  **run_sweep(args, Path(args.work))}
        easycl_total = sum(r["wall_s"] or 0 for r in record["easycl"])
        sweep = next((r for r in record["everlearn"] if r["what"] == "sweep"), None)
        if sweep and sweep["wall_s"]:
            print(f"sweep: everlearn {sweep['wall_s']:.0f} s, EasyCL's six workflows "
                  f"{easycl_total:.0f} s, speed-up {easycl_total / sweep['wall_s']:.2f}x")
        if args.json:
            Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
        return 0
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

"""One row per built-in suite of the vertical axis, on the embedded model.

Each run is a shipped configuration (the ``worldline`` preset, ``examples/sequential_editing.yaml``
and ``examples/continual_alignment.yaml``) with the general-ability probes on (``kl`` and
``labelled``), under one or two strategies. Printed per run: what was learned (mean of each
stage's score right after it), what was forgotten (BWT, and the suite's own measure: FUAR for
worldline, reliability of earlier edits for the edit stream, preference accuracy kept for the
preference stream), the general-ability delta against the base model (mean over the probes,
percentage points, and KL) and the cost (train and eval seconds, peak memory).

The alignment runs are the alignment-tax measurement: ``seqft`` (plain DPO per stage) against
``merge`` (model averaging after each stage, Lin et al. 2024's mitigation) on the same stream.

Usage::

    .venv/bin/python benchmarks/suites.py                     # all runs (~30 min, 2 cores)
    .venv/bin/python benchmarks/suites.py --only align-seqft,align-merge --out suites.json
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

from everlearn.config_files import read_yaml
from everlearn.presets import worldline
from everlearn.runs.runner import start_run
from everlearn.validation import build_config

ROOT = Path(__file__).resolve().parents[1]
PROBES = {"general_probes": ["kl", "labelled"]}


def _example(name: str, strategies: list[dict]) -> dict:
    cfg = read_yaml(ROOT / "examples" / name)
    cfg.pop("strategy", None)
    cfg["strategies"] = strategies
    cfg["eval"] = {**cfg.get("eval", {}), **PROBES}
    return cfg


RUNS = {
    "worldline-seqft": lambda: {**worldline(), "strategies": []},
    "edits-ft": lambda: _example("sequential_editing.yaml", []),
    "edits-grace": lambda: _example(
        "sequential_editing.yaml", [{"name": "grace", "layer": 24, "epsilon": 20.0}]),
    "align-seqft": lambda: _example("continual_alignment.yaml", []),
    "align-merge": lambda: _example(
        "continual_alignment.yaml", [{"name": "merge", "method": "interpolate", "ratio": 0.5}]),
}


def _mean(xs) -> float | None:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def summarize(name: str, res: dict) -> dict:
    R, m = res["R"], res.get("metrics") or {}
    learned = _mean(R[i + 1][i] for i in range(len(R) - 1))  # each stage right after it
    general = res.get("general") or {}
    delta = _mean((g.get("delta") or [None])[-1] for g in general.values())
    kl = ((res.get("general_kl") or {}).get("scores") or [None])[-1]
    suite = {}
    if res.get("temporal"):
        suite["fuar"] = res["temporal"].get("fuar")
    if res.get("editing"):
        suite.update({k: (res["editing"].get("final") or {}).get(k)
                      for k in ("reliability", "generalisation", "locality")})
    cost = res["cost"]
    return {
        "run": name, "stages": len(R) - 1, "learned": learned, "final_ap": m.get("final_ap"),
        "bwt": m.get("bwt"), "suite": suite, "general_delta": delta, "kl": kl,
        "agreement": ((general.get("agreement") or {}).get("scores") or [None])[-1],
        "labelled": ((general.get("labelled") or {}).get("scores") or [None])[-1],
        "train_s": sum(c["train_time_s"] for c in cost),
        "eval_s": sum(c["eval_time_s"] for c in cost) + res["base_eval_time_s"],
        "peak_mb": max(c["peak_memory_mb"] for c in cost),
    }


def fmt(x, digits=1) -> str:
    if isinstance(x, str):
        return x
    return "n/a" if x is None else f"{x:.{digits}f}"


def table(rows: list[dict]) -> str:
    out = ["| run | stages | learned | final AP | BWT | suite's own | general delta | "
           "same answer % | labelled % | KL | train s | eval s | peak MB |",
           "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        own = ", ".join(f"{k} {fmt(v)}" for k, v in r["suite"].items()) or "-"
        out.append(f"| {r['run']} | {r['stages']} | {fmt(r['learned'])} | "
                   f"{fmt(r['final_ap'])} | {fmt(r['bwt'])} | {own} | "
                   f"{fmt(r['general_delta'])} | {fmt(r['agreement'])} | {fmt(r['labelled'])} | "
                   f"{fmt(r['kl'], 3)} | {r['train_s']:.0f} | {r['eval_s']:.0f} | "
                   f"{r['peak_mb']:.0f} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", help=f"comma-separated runs of: {', '.join(RUNS)}")
    p.add_argument("--out", help="write the rows as JSON here (after every run)")
    args = p.parse_args(argv)
    names = args.only.split(",") if args.only else list(RUNS)
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        print(f"suites.py: --only: unknown run(s) {unknown}; expected {list(RUNS)}",
              file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="everlearn-suites-"))
    rows = []
    try:
        for name in names:
            print(f"[suites] {name} ...", file=sys.stderr, flush=True)
            cfg = build_config(RUNS[name](), f"benchmarks/suites.py:{name}")
            _, res = start_run(cfg, workdir / name, quiet=True)
            rows.append(summarize(name, res))
            print(table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
            if args.out:
                Path(args.out).write_text(json.dumps(rows, indent=2))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"{datetime.now(timezone.utc):%Y-%m-%d}, {platform.processor() or platform.machine()}")
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

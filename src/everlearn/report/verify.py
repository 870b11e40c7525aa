"""A benchmark's runs beside its published numbers: does a user's setup reproduce the paper?

``everlearn verify`` pools the runs with :func:`everlearn.report.compare.compare_runs` (seeds and
stream orders of one experiment into a mean and Student-t interval), finds the benchmark the
runs' stages belong to (everlearn.data.benchmarks), maps each strategy to the paper's method
name with the benchmark's ``method_names`` (``<strategy>+lora`` for its LoRA runs), and puts AP
and BWT beside the published value of the closest published model (by parameter count): of
the order the runs follow where one is published, else the paper's average over its orders,
and of the training budget nearest the runs' (a ``--published`` file's entries before the
benchmark's own). It gives the difference, whether the published ordering of the methods holds
in the runs, and where the model, the orders or the budget (tasks, training records per task)
differ from the paper's. Pure YAML/numpy, no torch.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from everlearn.data.benchmarks import (
    Benchmark,
    benchmark_files,
    get_benchmark,
    load_benchmark,
    read_published,
)
from everlearn.evaluation.metrics import mean_ci
from everlearn.report.compare import Group, compare_runs
from everlearn.report.data import ReportError, main_metrics

# metric names the papers use for final average performance and backward transfer
AP_NAMES = ("AP", "OP", "AA", "average accuracy")
BWT_NAMES = ("BWT",)
T5_SIZES = {"t5-small": 60e6, "t5-base": 220e6, "t5-large": 770e6, "t5-xl": 3e9, "t5-3b": 3e9,
            "t5-xxl": 11e9, "t5-11b": 11e9}


@dataclass
class Row:
    strategy: str
    method: str
    n: int
    ap: tuple[float | None, float | None]
    bwt: tuple[float | None, float | None]
    published_ap: dict[str, Any] | None = None
    published_bwt: dict[str, Any] | None = None


@dataclass
class Verification:
    benchmark: Benchmark
    confidence: float
    rows: list[Row]
    model: str
    ordering: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def model_size(name: str) -> float | None:
    """Parameters from a model name (``LLaMA-2-7B``, ``SmolLM2-135M``, ``T5-large``)."""
    low = name.lower()
    for key, size in T5_SIZES.items():
        if key in low:
            return size
    m = re.search(r"(\d+(?:\.\d+)?)\s*([mb])\b", low.replace("_", "-").replace("-", " "))
    if m is None:
        return None
    return float(m.group(1)) * (1e6 if m.group(2) == "m" else 1e9)


def closest_model(run_params: float | None, run_model: str, models: list[str]) -> str | None:
    """The published model nearest the run's (same name first, else by log parameter count)."""
    if not models:
        return None
    for m in models:
        if m.lower() == run_model.lower():
            return m
    sized = [(m, model_size(m)) for m in models]
    sized = [(m, s) for m, s in sized if s]
    size = run_params or model_size(run_model)
    if not sized or not size:
        return models[0]
    return min(sized, key=lambda ms: abs(math.log(ms[1]) - math.log(size)))[0]


def find_benchmark(groups: list[Group], name: str | None) -> Benchmark:
    """``name``, else the benchmark whose tasks hold every run's stages (most tasks shared)."""
    if name:
        return get_benchmark(name)
    stages = {s["name"] for g in groups for r in g.runs for s in r.results.get("stages", [])}
    best = None
    for p in benchmark_files():
        bench = load_benchmark(p)
        if stages <= set(bench.tasks) and (best is None or len(bench.tasks) < len(best.tasks)):
            best = bench
    if best is None:
        raise ReportError(f"verify: no benchmark has all of the runs' stages "
                          f"({', '.join(sorted(stages))}); name it with --benchmark")
    return best


def _bwt(group: Group, bench: Benchmark, confidence: float) -> tuple[float | None, float | None]:
    """BWT as the benchmark's paper prints it (``bwt``, or TRACE's ``bwt_trace``)."""
    if bench.bwt == "bwt":
        mean, half, _ = group.stats.get("bwt", (None, None, 0))
        return mean, half
    vals = [main_metrics(r.results).get(bench.bwt) for r in group.runs]
    vals = [float(v) for v in vals if isinstance(v, (int, float))]
    return mean_ci(vals, confidence) if vals else (None, None)


def _run_model(groups: list[Group]) -> tuple[str, float | None]:
    res = groups[0].runs[0].results
    params = [c.get("total_params") for c in res.get("cost") or [] if c.get("total_params")]
    return str(res.get("model", "")), (float(params[0]) if params else None)


def _method(bench: Benchmark, strategy: str, finetune: str | None) -> str:
    """The paper's name of ``strategy``; ``<strategy>+lora`` names its LoRA runs apart."""
    if finetune == "lora" and f"{strategy}+lora" in bench.method_names:
        return bench.method_names[f"{strategy}+lora"]
    return bench.method_names.get(strategy, strategy)


def run_orders(groups: list[Group], bench: Benchmark) -> set[int] | None:
    """The benchmark orders the runs follow, in the papers' numbering (None: not one order
    for every run, e.g. a slice that is a prefix of several orders)."""
    found = set()
    for g in groups:
        for r in g.runs:
            stages = [s["name"] for s in r.results.get("stages", [])]
            ks = [k for k, seq in bench.orders.items() if stages and seq[:len(stages)] == stages]
            if len(ks) != 1:
                return None
            found.add(bench.paper_orders.get(ks[0], ks[0]))
    return found or None


def _budget(groups: list[Group]) -> int | None:
    cfg = groups[0].runs[0].config or {}
    caps = [s.get("max_train") for s in cfg.get("stages", []) if s.get("max_train")]
    return max(caps) if caps else None


def _published_for(published: list[dict], method: str, names: tuple[str, ...],
                   model: str | None, orders: set[int] | None = None,
                   budget: int | None = None) -> dict | None:
    """The entry for ``method``: the runs' orders first (else the widest average), then the
    training budget nearest the runs' cap, then the file's order."""
    found = [(i, e) for i, e in enumerate(published)
             if e["method"] == method and e["metric"] in names
             and (model is None or e["model"] == model)]

    def fit(item):
        i, e = item
        those = set(e.get("orders") or [])
        if orders:
            rank = 0 if those == orders else 1 if not those or those >= orders else 2
        else:
            rank = -len(those) if those else -100
        tpt = e.get("train_per_task")
        gap = abs(math.log(tpt) - math.log(budget)) if tpt and budget else 0.0
        return rank, gap, i

    return min(found, key=fit)[1] if found else None


def verify_runs(run_dirs: list[str | Path], benchmark: str | None = None,
                published_file: str | Path | None = None,
                confidence: float = 0.95) -> Verification:
    """Pool ``run_dirs`` and set each method beside the benchmark's published numbers."""
    groups = compare_runs(run_dirs, confidence)
    bench = find_benchmark(groups, benchmark)
    given = read_published(published_file) if published_file else []
    published = given + list(bench.published)
    run_model, run_params = _run_model(groups)
    target = closest_model(run_params, run_model, list(dict.fromkeys(
        e["model"] for e in published)))
    orders, budget = run_orders(groups, bench), _budget(groups)
    rows = []
    for g in groups:
        method = _method(bench, g.strategy, g.runs[0].results.get("finetune"))
        ap, ap_half, n = g.stats.get("final_ap", (None, None, 0))
        pub = [_published_for(given, method, names, target, orders, budget)
               or _published_for(bench.published, method, names, target, orders, budget)
               for names in (AP_NAMES, BWT_NAMES)]
        rows.append(Row(g.strategy, method, n, (ap, ap_half), _bwt(g, bench, confidence),
                        *pub))
    out = Verification(bench, confidence, rows, run_model)
    out.ordering = ordering_lines(rows)
    out.notes = setup_notes(groups, bench, run_model, target, published)
    out.notes += published_notes(rows, orders, budget)
    return out


def ordering_lines(rows: list[Row]) -> list[str]:
    """Every pair of methods the paper orders by AP: does the runs' mean AP order them so?
    (Only values of one setup: the same orders and training budget.)"""
    known = [r for r in rows if r.published_ap and r.ap[0] is not None]
    lines = []
    for i, a in enumerate(known):
        for b in known[i + 1:]:
            pa, pb = a.published_ap["value"], b.published_ap["value"]
            if pa == pb or any(a.published_ap.get(k) != b.published_ap.get(k)
                               for k in ("orders", "train_per_task")):
                continue
            hi, lo = (a, b) if pa > pb else (b, a)
            holds = hi.ap[0] > lo.ap[0]
            lines.append(f"{hi.method} > {lo.method} in the paper "
                         f"({max(pa, pb):.1f} vs {min(pa, pb):.1f}): "
                         + ("holds" if holds else "does not hold")
                         + f" in the runs ({hi.ap[0]:.2f} vs {lo.ap[0]:.2f})")
    return lines


def setup_notes(groups: list[Group], bench: Benchmark, run_model: str, target: str | None,
                published: list[dict]) -> list[str]:
    """Where the runs' model and budget differ from the paper's."""
    notes = []
    if not published:
        notes.append(f"no published numbers are recorded for {bench.name} (see "
                     f"{bench.path.name}); give some with --published FILE")
    elif target is not None and target.lower() != run_model.lower():
        notes.append(f"model differs: the runs use {run_model}, the closest published model "
                     f"is {target}")
    res = groups[0].runs[0].results
    stages = [s["name"] for s in res.get("stages", [])]
    full = max(len(o) for o in bench.orders.values())
    if len(stages) < full:
        notes.append(f"budget differs: the runs train {len(stages)} of the benchmark's {full} "
                     "tasks, so AP and BWT average over fewer tasks than the paper's")
    cfg = groups[0].runs[0].config or {}
    caps = sorted({s.get("max_train") for s in cfg.get("stages", []) if s.get("max_train")})
    if caps:
        notes.append(f"budget differs: at most {caps[-1]} training records per task; the "
                     f"paper: {bench.paper_setup}")
    deviations = [f"{t}: {bench.tasks[t].deviation}" for t in stages
                  if t in bench.tasks and bench.tasks[t].deviation]
    notes.extend(f"metric differs: {d}" for d in deviations)
    return notes


def published_notes(rows: list[Row], orders: set[int] | None,
                    budget: int | None) -> list[str]:
    """Where the published values set beside the runs average other orders or budgets."""
    used = [e for r in rows for e in (r.published_ap, r.published_bwt) if e]
    notes = []
    spans = sorted({tuple(sorted(e["orders"])) for e in used if e.get("orders")
                    and set(e["orders"]) != orders})
    if spans:
        runs = ", ".join(map(str, sorted(orders))) if orders else "no single order"
        notes.append("orders differ: published values average over orders "
                     + "; ".join(", ".join(map(str, s)) for s in spans)
                     + f" (the papers' numbering); the runs' orders: {runs}")
    budgets = sorted({e["train_per_task"] for e in used if e.get("train_per_task")
                      and e["train_per_task"] != budget})
    if budgets:
        notes.append("budget differs: published values trained "
                     + ", ".join(map(str, budgets)) + " records per task")
    return notes


def _cell(value: tuple[float | None, float | None]) -> str:
    mean, half = value
    if mean is None:
        return "-"
    return f"{mean:.2f}" + (f" ± {half:.2f}" if half is not None else "")


def _pub(entry: dict | None, mean: float | None) -> tuple[str, str]:
    if entry is None:
        return "-", "-"
    diff = "-" if mean is None else f"{mean - entry['value']:+.2f}"
    where = [entry["model"]]
    if entry.get("orders"):
        where.append("orders " + ", ".join(map(str, entry["orders"])))
    if entry.get("train_per_task"):
        where.append(f"{entry['train_per_task']}/task")
    return f"{entry['value']:.2f} ({'; '.join(where + [entry['source']])})", diff


def format_verification(v: Verification) -> str:
    """Markdown: one row per method, then the ordering check and the setup notes."""
    level = f"{round(v.confidence * 100)}% CI"
    bwt = "BWT (÷T, TRACE)" if v.benchmark.bwt == "bwt_trace" else "BWT"
    lines = [f"# verify: {v.benchmark.title}", "",
             f"| method | strategy | n | AP ({level}) | published AP | diff | {bwt} ({level}) "
             "| published BWT | diff |", "|---|---|---|---|---|---|---|---|---|"]
    for r in v.rows:
        pap, dap = _pub(r.published_ap, r.ap[0])
        pbwt, dbwt = _pub(r.published_bwt, r.bwt[0])
        lines.append(f"| {r.method} | {r.strategy} | {r.n} | {_cell(r.ap)} | {pap} | {dap} | "
                     f"{_cell(r.bwt)} | {pbwt} | {dbwt} |")
    if v.ordering:
        lines += ["", "Published ordering of the methods (by AP):"]
        lines += [f"- {line}" for line in v.ordering]
    if v.notes:
        lines += ["", "Differences from the paper's setup:"]
        lines += [f"- {note}" for note in v.notes]
    return "\n".join(lines)

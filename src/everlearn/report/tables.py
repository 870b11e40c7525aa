"""Plain-text tables of a results.json: the matrix, the metrics and the cost (no torch import)."""

from __future__ import annotations

from typing import Any

from everlearn.evaluation.scorers import get_metric, metric_names


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).rjust(w) if i else str(c).ljust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in rows])


def _num(x: Any, digits: int = 1) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def short_label(metric: Any) -> str:
    """A metric's column label (its registered ``short``); a name not registered (a results.json
    of another version) as it is."""
    return get_metric(metric).short if metric in metric_names() else str(metric)


def format_matrix(results: dict[str, Any]) -> str:
    """R with one row per phase (base first) and one column per stage; "–" marks a cell the
    evaluation schedule did not score."""
    names = [s["name"] for s in results["stages"]]
    metrics = [s["metric"] for s in results["stages"]]
    header = ["after \\ on"] + [f"{n} ({short_label(m)})" for n, m in zip(names, metrics)]
    rows = [[label] + ["–" if v is None else _num(v) for v in row]
            for label, row in zip(results["rows"], results["R"])]
    return _table(header, rows)


def _metric_lines(m: dict[str, Any], indent: str = "") -> list[str]:
    lines = []
    if "ap" in m:
        lines.append(f"{indent}AP after each stage: " + ", ".join(_num(a) for a in m["ap"]))
    labels = [("final_ap", "final AP"), ("la", "learning accuracy (LA)"),
              ("bwt", "BWT (mean over T-1 stages)"), ("bwt_trace", "BWT (TRACE, divided by T)"),
              ("forgetting", "forgetting (F)"), ("fwt", "FWT (vs base model)")]
    for key, label in labels:
        if key in m:
            lines.append(f"{indent}{label}: {_num(m[key], 2)}")
    if m.get("ap_estimated"):
        lines.append(f"{indent}AP estimated from the scored stages (eval schedule) after: "
                     + ", ".join(map(str, m["ap_estimated"])))
    if m.get("forgetting_lower_bound"):
        lines.append(f"{indent}forgetting: max over the scored rows only (a lower bound)")
    if m.get("note"):
        lines.append(f"{indent}note: {m['note']}")
    return lines


def format_metrics(results: dict[str, Any]) -> str:
    m = results.get("metrics") or {}
    if "main" in m or "perplexity" in m:
        out = []
        for scope in ("main", "perplexity"):
            if scope in m:
                out.append(f"{scope} ({', '.join(m[scope]['stages'])}):")
                out.extend(_metric_lines(m[scope], "  "))
        return "\n".join(out)
    return "\n".join(_metric_lines(m))


def format_cost(results: dict[str, Any]) -> str:
    header = ["phase", "steps", "train s", "strategy s", "eval s", "tokens", "tok/s", "pad %",
              "trainable", "total params", "peak MB", "buffer"]
    rows = [[c["phase"] if len(c["stages"]) > 1 else c["stages"][0], c["steps"],
             _num(c["train_time_s"]), _num(c.get("strategy_time_s", 0.0)),
             _num(c["eval_time_s"]), c["tokens_trained"],
             _num(c["tokens_per_s"], 0), _num(100 * c["padding_fraction"]),
             f"{c['trainable_params']:,}", f"{c['total_params']:,}",
             _num(c["peak_memory_mb"], 0), c["buffer_size"]] for c in results["cost"]]
    return _table(header, rows)


def _ratio(x: Any) -> str:
    return x if isinstance(x, str) else _num(x, 2)


def format_temporal(results: dict[str, Any]) -> str:
    """Per temporal stage: probe accuracy per split right after it, CKL's gaps and FUAR."""
    t = results["temporal"]
    header = ["stage", "invariant %", "updated %", "new %", "forgotten", "+updated", "+new",
              "FUAR"]
    rows = [[s["stage"], _num(s["after"]["invariant"]), _num(s["after"]["updated"]),
             _num(s["after"]["new"]), _num(s["forgotten"]), _num(s["updated"]),
             _num(s["acquired"]), _ratio(s["fuar"])] for s in t["steps"]]
    return "\n".join([_table(header, rows),
                      f"FUAR over the stream: {_ratio(t['fuar'])} (forgotten invariant / "
                      "(gained updated + gained new), in accuracy points; n.d. = nothing "
                      "gained)"])


def format_general(results: dict[str, Any]) -> str:
    """General-probe values on every row and their change against the base row."""
    general = results.get("general") or {}
    kl = (results.get("general_kl") or {}).get("scores")
    header, cols = ["after"], []
    harness = [(k, f"{k.split('/', 1)[1]} %") for k in general if k.startswith("lm_eval/")]
    for key, label in (("agreement", "same answer %"), ("labelled", "labelled acc %"), *harness):
        if isinstance(general.get(key), dict):
            header += [label, "delta"]
            cols += [general[key]["scores"], general[key]["delta"]]
    if kl:
        header.append("KL(base||cur)")
        cols.append(kl)
    rows = [[label] + [_num(c[i], 3 if c is kl else 1) if i < len(c) else "n/a" for c in cols]
            for i, label in enumerate(results["rows"])]
    return _table(header, rows)


def format_editing(results: dict[str, Any]) -> str:
    """Per row of R: reliability, generalisation and locality over every edit made so far."""
    ed = results["editing"]
    rows = [[label, str(r["edits"]), *(_num(r.get(m)) for m in
                                       ("reliability", "generalisation", "locality"))]
            for label, r in zip(results["rows"], ed["rows"]) if r]
    return _table(["after", "edits so far", "reliability %", "generalisation %", "locality %"],
                  rows)


def text_stream_line(ts: dict[str, Any]) -> str:
    """The stream in one line: its size, chunks and how boundaries were placed."""
    how = ts.get("mode")
    if how == "fixed":
        how = f"fixed, every {ts.get('every_tokens'):,} tokens"
    elif how == "detector":
        d = ts.get("detector") or {}
        how = (f"shift detector (window {d.get('window')} chunks, threshold {d.get('threshold')}, "
               f"drift {d.get('drift')})")
    return (f"{ts.get('tokens', 0):,} stream tokens in chunks of {ts.get('chunk_tokens', 0):,} "
            f"(blocks of {ts.get('block_tokens')}); boundaries: {how}")


def format_text_stream(results: dict[str, Any]) -> str:
    """A text stream: its segments (where each ended and why), the true shifts between stages
    and, for the detector, which it found; then each stage's score at the rows that matter."""
    ts = results["text_stream"]
    rows = [[s["name"], f"{s['start']:,}", f"{s['end']:,}", s["reason"]]
            for s in ts.get("segments", [])]
    parts = [text_stream_line(ts), _table(["segment", "from token", "to token", "ended by"],
                                          rows)]
    names = [d["name"] for d in ts.get("domains", [])]
    shifts = ts.get("shifts") or []
    if shifts:
        starts = {d["start"]: i for i, d in enumerate(ts["domains"]) if d["end"] > d["start"]}
        parts.append("true shifts: " + ", ".join(
            f"{p:,} ({names[starts[p] - 1]} -> {names[starts[p]]})" if starts.get(p) is not None
            else f"{p:,}"
            for p in shifts))
    det = ts.get("detection")
    if det:
        found = [f for f in det["shifts"] if f["boundary"] is not None]
        delays = ", ".join(f"{f['delay_tokens']:+,}" for f in found)
        parts.append(f"detector: found {len(found)} of {len(det['shifts'])} shifts"
                     + (f" (boundary - shift: {delays} tokens)" if found else "")
                     + f", {det['false_alarms']} false alarm(s)")
    per = ts.get("per_stage") or []
    if per:
        label = {s["name"]: s["metric"] for s in results.get("stages", [])}
        body = [[p["name"], label.get(p["name"], ""), _num(p.get("base")),
                 _row_cell(p.get("before"), p.get("before_row")),
                 _row_cell(p.get("after"), p.get("after_row")), _num(p.get("final"))]
                for p in per]
        parts += ["", _table(["stage", "metric", "base", "before (row)", "after (row)", "final"],
                             body),
                  "before / after: at the boundary nearest to where the stage's text begins / "
                  "ends"]
    return "\n".join(parts)


def _row_cell(value: Any, row: Any) -> str:
    return "n/a" if value is None else f"{_num(value)} ({row})"


RECYCLE_POLICIES = ("reapply", "retune", "distill", "scratch")


def recycling_update_line(rec: dict[str, Any]) -> str:
    """How the base was updated, in one line."""
    u = rec.get("update") or {}
    if not u:
        return "update: not yet done"
    if u.get("source") == "cpt":
        what = (f"cpt stage '{u.get('stage')}' ({u.get('finetune')}, {u.get('steps')} steps, "
                f"lr {u.get('lr')})")
    else:
        what = f"new base checkpoint {u.get('new_base')}"
    return f"update: {what}; relative weight change {_num(u.get('relative_change'), 4)}"


def format_recycling(results: dict[str, Any]) -> str:
    """Recyclable tuning: per task the old base, old base + adapter, new base alone and each
    policy's adapter on the new base; then per policy the mean score, the change against the
    old base + adapter, the KL to the old system and the steps and wall time spent."""
    rec = results["recycling"]
    tasks = rec.get("tasks") or {}
    policies = [p for p in RECYCLE_POLICIES
                if any(p in (t.get("policies") or {}) for t in tasks.values())]

    def score(entry: Any) -> str:
        return _num(entry.get("score")) if isinstance(entry, dict) else "n/a"

    header = ["task", "metric", "old base", "old+adapter", "new base", *policies]
    rows = [[name, short_label(t.get("metric")), _num(t.get("old_base")),
             score(t.get("old_adapter")), score(t.get("new_base")),
             *(score((t.get("policies") or {}).get(p)) for p in policies)]
            for name, t in tasks.items()]
    parts = [recycling_update_line(rec), _table(header, rows)]
    summary = rec.get("summary") or {}
    if summary:
        labels = {"old_adapter": "old+adapter", "new_base": "new base"}
        rows = [[labels.get(name, name), _num(s.get("mean_score")),
                 _num(s.get("mean_delta_vs_old")), _num(s.get("mean_kl_to_old"), 4),
                 s.get("steps", 0), _num(s.get("wall_time_s"))] for name, s in summary.items()]
        parts += ["", _table(["policy", "mean score", "vs old+adapter", "KL to old", "steps",
                              "wall s"], rows)]
    return "\n".join(parts)


def format_summary(results: dict[str, Any]) -> str:
    parts = [f"Accuracy matrix R (strategy: {'+'.join(results['strategies'])}; "
             f"rows: after training, columns: stage scored)", format_matrix(results)]
    if (results.get("eval_schedule") or {}).get("note"):
        parts.append(f"eval schedule: {results['eval_schedule']['note']} (–)")
    if results.get("metrics"):
        parts += ["", "Metrics", format_metrics(results)]
    if (results.get("temporal") or {}).get("steps"):
        parts += ["", "Temporal knowledge (accuracy on each stage's probes right after it)",
                  format_temporal(results)]
    if any((results.get("editing") or {}).get("rows") or []):
        parts += ["", "Edits so far (reliability: edit prompts; generalisation: rephrased; "
                      "locality: unrelated prompts unchanged)", format_editing(results)]
    if results.get("text_stream"):
        parts += ["", "Text stream (rows of R: after each segment)", format_text_stream(results)]
    if results.get("general") or results.get("general_kl"):
        parts += ["", "General ability against the base model (delta < 0: ability lost)",
                  format_general(results)]
    if (results.get("recycling") or {}).get("tasks"):
        parts += ["", "Recycling adapters over the base update (scores on each task; KL to old: "
                      "to the old base + adapter on the test inputs)", format_recycling(results)]
    if results.get("cost"):
        parts += ["", f"Cost per phase (base row evaluated in "
                      f"{results.get('base_eval_time_s', 0):.1f} s)", format_cost(results)]
    return "\n".join(parts)

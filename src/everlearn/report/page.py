"""The report page: one HTML string with inline CSS and base64 figures, so the single file can be
mailed, attached to an issue or opened offline."""

from __future__ import annotations

import base64
from html import escape
from typing import Any

from everlearn.report import data
from everlearn.report.generic import fmt, render, table
from everlearn.report.predictions import predictions_section
from everlearn.wording import plural

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;
max-width:1150px;padding:0 1em;color:#222;line-height:1.4}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.25em;border-bottom:1px solid #ddd;
padding-bottom:.2em;margin-top:1.8em}h3{font-size:1.05em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left;overflow-wrap:break-word}
th{background:#f4f4f4;overflow-wrap:normal;vertical-align:bottom}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap;
overflow-wrap:normal}
.tw{max-width:100%;overflow-x:auto}.tw>table{margin:0}.tw{margin:.6em 0}
table.cost,.wide>table{font-size:.8em}
table.cost th,table.cost td,.wide th,.wide td{padding:.2em .35em}
.banner{background:#fff3cd;border:1px solid #e0c36c;padding:.6em 1em;border-radius:4px}
.note{color:#555;font-size:.9em}figure{margin:1em 0}img{max-width:100%;height:auto}
figcaption{color:#555;font-size:.85em}pre{background:#f7f7f7;padding:.8em;overflow:auto}
dt{font-weight:600;margin-top:.4em}dd{margin-left:1.2em}
"""

METRIC_LABELS = [("final_ap", "final AP (AP_T)"), ("la", "learning accuracy (LA)"),
                 ("bwt", "BWT (mean over T-1 stages)"), ("bwt_trace", "BWT (TRACE, divided by T)"),
                 ("forgetting", "forgetting (F)"), ("fwt", "FWT (vs base model)")]
COST_COLUMNS = [("stages", "phase"), ("steps", "steps"), ("wall_time_s", "wall s"),
                ("train_time_s", "train s"), ("strategy_time_s", "strategy s"),
                ("eval_time_s", "eval s"), ("tokens_trained", "tokens"),
                ("tokens_per_s", "tok/s"), ("padding_fraction", "padding %"),
                ("final_loss", "final loss"), ("trainable_params", "trainable params"),
                ("total_params", "total params"), ("peak_memory_mb", "peak MB"),
                ("buffer_size", "buffer")]


def figure(png: bytes, alt: str, caption: str) -> str:
    src = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    return (f'<figure><img src="{src}" alt="{escape(alt)}">'
            f"<figcaption>{escape(caption)}</figcaption></figure>")


def _header(res: dict[str, Any]) -> str:
    done, total = data.phases_done(res), data.phases_total(res)
    meta = [["strategy", "+".join(res.get("strategies") or [])], ["model", res.get("model")],
            ["fine-tuning", res.get("finetune")], ["scenario", res.get("scenario")],
            ["status", res.get("status")], ["phases finished", f"{done} of {total}"],
            ["everlearn", res.get("everlearn_version")]]
    out = [f"<h1>everlearn report: {escape(str(res.get('name', 'run')))}</h1>",
           table(None, [r for r in meta if r[1] is not None], "meta")]
    if data.is_partial(res):
        out.append(f'<p class="banner" id="partial"><strong>Partial run:</strong> {done} of '
                   f"{plural(total, 'phase')} finished (status: {escape(str(res.get('status')))}). "
                   "Rows not yet trained are marked pending; the continual-learning metrics "
                   "are computed when the run completes.</p>")
    stages = [[s.get("name"), s.get("kind"), s.get("metric"), s.get("n_train"),
               s.get("n_test"), s.get("task_id")] for s in res["stages"]]
    out += ["<h2>Stages</h2>",
            table(["stage", "kind", "metric", "train", "test", "task id"], stages)]
    return "\n".join(out)


def _matrix(res: dict[str, Any], figs: dict[str, bytes]) -> str:
    rows = res.get("rows") or ["base"] + [f"phase {i}" for i in range(1, len(res["R"]))]
    names = [s["name"] for s in res["stages"]]
    out = ["<h2>Accuracy matrix R</h2>",
           '<p class="note">Row <em>i</em>: the model after training phase <em>i</em> (the first '
           "row is the untrained base model); column <em>j</em>: score on stage <em>j</em>'s "
           "test set. Entries above the diagonal give forward transfer.</p>"]
    if "matrix" in figs:
        ppl = not all(s.get("higher_is_better", True) for s in res["stages"])
        out.append(figure(figs["matrix"], "heatmap of the accuracy matrix R",
                          "R as a heatmap; outlined: the stage just trained"
                          + ("; perplexity columns: lower is better" if ppl else "")))
    schedule = res.get("eval_schedule") if isinstance(res.get("eval_schedule"), dict) else {}
    if schedule.get("note"):
        out.append(f'<p class="note">Evaluation schedule: {escape(str(schedule["note"]))} '
                   "(shown as –).</p>")
    out.append(table(["after \\ on", *names],
                     [[label, *("–" if v is None else v for v in row)]
                      for label, row in zip(rows, res["R"])], "matrix"))
    if "scores" in figs:
        out.append(figure(figs["scores"], "score of each stage after each phase",
                          "each stage's score over the stream"))
    return "\n".join(out)


def _ap_so_far(res: dict[str, Any]) -> list[float]:
    stages, R = res["stages"], res["R"]
    if len(res.get("phases") or stages) != len(stages):
        return []
    cols = [j for j, s in enumerate(stages) if s.get("higher_is_better", True)]
    out = []
    for t in range(1, len(R)):
        vals = [R[t][j] for j in cols if j < t and R[t][j] is not None]
        if vals:
            out.append(sum(vals) / len(vals))
    return out


def _metric_table(m: dict[str, Any]) -> str:
    rows = [[label, m[key]] for key, label in METRIC_LABELS if key in m]
    if isinstance(m.get("ap"), list):
        rows.insert(0, ["AP after each stage", ", ".join(fmt(a) for a in m["ap"])])
    if m.get("ap_estimated"):
        rows.append(["AP estimated from the scored stages (eval schedule), after",
                     ", ".join(map(str, m["ap_estimated"]))])
    if m.get("forgetting_lower_bound"):
        rows.append(["forgetting", "max over the scored rows only (a lower bound)"])
    note = f'<p class="note">{escape(str(m["note"]))}</p>' if m.get("note") else ""
    return table(["metric", "value"], rows, "metrics") + note


def _metrics(res: dict[str, Any]) -> str:
    m = res.get("metrics")
    out = ["<h2>Continual-learning metrics</h2>"]
    if not m:
        ap = _ap_so_far(res)
        out.append('<p class="note">Not computed yet: the run is incomplete.'
                   + (f" AP after each finished stage so far: "
                      f"{escape(', '.join(fmt(a) for a in ap))}." if ap else "") + "</p>")
        return "\n".join(out)
    groups = [(g, m[g]) for g in ("main", "perplexity") if isinstance(m.get(g), dict)]
    for name, group in groups or [("", m)]:
        if name:
            out.append(f"<h3>{escape(name)}: {escape(', '.join(group.get('stages', [])))}</h3>")
        out.append(_metric_table(group))
    return "\n".join(out)


def _general(res: dict[str, Any], figs: dict[str, bytes]) -> str:
    probes = data.general_ability(res)
    delta = data.final_general_delta(res)
    if not probes and delta is None:
        return ""
    out = ["<h2>General ability</h2>",
           '<p class="note">Change on held-out general probes against the base model '
           "(TRACE's X-Delta); negative means general ability was lost.</p>"]
    if "general" in figs:
        out.append(figure(figs["general"], "general-ability delta after each phase",
                          "general-probe delta vs the base model"))
    rows = res.get("rows") or []
    for name, p in probes.items():
        n = max(len(p["scores"]), len(p["delta"]))
        body = [[rows[i] if i < len(rows) else i,
                 p["scores"][i] if i < len(p["scores"]) else None,
                 p["delta"][i] if i < len(p["delta"]) else None] for i in range(n)]
        out += [f"<h3>{escape(name)}</h3>", table(["after", "score", "delta vs base"], body)]
    if delta is not None:
        out.append(f"<p>Final general-ability delta: <strong>{escape(fmt(delta))}</strong></p>")
    return "\n".join(out)


def _recycling(res: dict[str, Any]) -> str:
    """Recyclable tuning (a recycle run): each task's score with the old base + adapter, the
    new base alone and every policy's adapter on the new base, then cost per policy."""
    from everlearn.report.tables import RECYCLE_POLICIES, recycling_update_line

    rec = res.get("recycling")
    if not isinstance(rec, dict) or not isinstance(rec.get("tasks"), dict):
        return ""
    tasks = rec["tasks"]
    policies = [p for p in RECYCLE_POLICIES
                if any(p in (t.get("policies") or {}) for t in tasks.values())]

    def score(entry: Any) -> Any:
        return entry.get("score") if isinstance(entry, dict) else None

    rows = [[name, t.get("metric"), t.get("old_base"), score(t.get("old_adapter")),
             score(t.get("new_base")), *(score((t.get("policies") or {}).get(p))
                                         for p in policies)] for name, t in tasks.items()]
    out = ['<h2 class="recycling">Recycling adapters over the base update</h2>',
           f'<p class="note">{escape(recycling_update_line(rec))}. Each downstream adapter was '
           "trained on the old base; every policy carries it to the new base (reapply: as is; "
           "retune: a short re-training from it; distill: matching the old base + adapter; "
           "scratch: a fresh adapter, full budget). See docs/recycling.md.</p>",
           table(["task", "metric", "old base", "old base + adapter", "new base", *policies],
                 rows, "recycling")]
    summary = rec.get("summary")
    if isinstance(summary, dict) and summary:
        out.append(table(["policy", "mean score", "mean change vs old base + adapter",
                          "mean KL to old (test inputs)", "steps", "wall s"],
                         [[name, s.get("mean_score"), s.get("mean_delta_vs_old"),
                           s.get("mean_kl_to_old"), s.get("steps"), s.get("wall_time_s")]
                          for name, s in summary.items() if isinstance(s, dict)],
                         "recycling-cost"))
    return "\n".join(out)


def _text_stream(res: dict[str, Any], figs: dict[str, bytes]) -> str:
    """A boundary-free text stream: where each segment ended and why, the true shifts, what
    the detector found, and each stage's score before, after and at the end of the stream."""
    from everlearn.report.tables import text_stream_line

    ts = res.get("text_stream")
    if not isinstance(ts, dict):
        return ""
    out = ['<h2 class="text-stream">Text stream</h2>',
           f'<p class="note">{escape(text_stream_line(ts))}. The stages\' training text, in '
           "order, is one token stream trained once; each row of R follows one segment. See "
           "docs/temporal.md.</p>"]
    if "text_stream" in figs:
        out.append(figure(figs["text_stream"], "scores along the text stream",
                          "each stage's score at every boundary; grey: true shifts, dashed: "
                          "boundaries (red: detector)"))
    out.append(table(["segment", "from token", "to token", "ended by"],
                     [[s.get("name"), s.get("start"), s.get("end"), s.get("reason")]
                      for s in ts.get("segments") or []], "segments"))
    names = {d.get("start"): d.get("name") for d in ts.get("domains") or []}
    det = ts.get("detection") if isinstance(ts.get("detection"), dict) else None
    hits = {f.get("shift"): f for f in (det or {}).get("shifts") or []}
    if ts.get("shifts"):
        rows = [[p, names.get(p), *((hits[p].get("boundary"), hits[p].get("delay_tokens"))
                                    if p in hits else ())] for p in ts["shifts"]]
        header = ["true shift at token", "stage starting"]
        if det:
            header += ["detector boundary", "boundary - shift (tokens)"]
        out.append(table(header, rows, "shifts"))
    if det:
        out.append(f"<p>Detector: {escape(str(det.get('missed')))} shift(s) missed, "
                   f"{escape(str(det.get('false_alarms')))} false alarm(s).</p>")
    per = ts.get("per_stage") or []
    if per:
        out += [table(["stage", "base", "before", "row", "after", "row", "final"],
                      [[p.get("name"), p.get("base"), p.get("before"), p.get("before_row"),
                        p.get("after"), p.get("after_row"), p.get("final")] for p in per],
                      "per-stage"),
                '<p class="note">before / after: the row at the boundary nearest to where the '
                "stage's text begins / ends.</p>"]
    return "\n".join(out)


def _loss(figs: dict[str, bytes]) -> str:
    """The training-loss curve of every phase (results.json ``cost[].loss_curve``)."""
    if "loss" not in figs:
        return ""
    return "\n".join(["<h2>Training loss</h2>",
                      '<p class="note">Each point: the mean training loss of the steps since the '
                      "previous point, every <code>tracker.log_every</code> steps and at the end "
                      "of each phase.</p>",
                      figure(figs["loss"], "training loss over the run's steps",
                             "training loss per logged step; dashed: the end of each phase")])


def _generic_section(title: str, note: str, items: dict[str, Any], cls: str) -> str:
    if not items:
        return ""
    parts = [f'<h2 class="{cls}">{escape(title)}</h2>', f'<p class="note">{escape(note)}</p>']
    for key, value in items.items():
        parts += [f"<h3>{escape(str(key))}</h3>", render(value)]
    return "\n".join(parts)


def _cost(res: dict[str, Any]) -> str:
    cost = res.get("cost") or []
    out = ["<h2>Cost per phase</h2>",
           f'<p class="note">Base row evaluated in {fmt(res.get("base_eval_time_s"), 1)} s. '
           "Tokens are non-padding training tokens; peak memory covers training and "
           "evaluation of the phase.</p>"]
    if not cost:
        return "\n".join(out + ["<p>No phase has finished yet.</p>"])
    known = {k for k, _ in COST_COLUMNS} | {"phase"}
    extra = [k for k in dict.fromkeys(k for c in cost for k in c) if k not in known
             and all(isinstance(c.get(k), (int, float, type(None))) for c in cost)]
    rows = []
    for c in cost:
        row = []
        for key, _ in COST_COLUMNS:
            v = c.get(key)
            if key == "stages":
                v = f"{c.get('phase')}: {'+'.join(v or [])}"
            elif key == "padding_fraction" and v is not None:
                v = 100 * v
            row.append(v)
        rows.append(row + [c.get(k) for k in extra])
    total: list[Any] = ["total"] + [""] * (len(COST_COLUMNS) - 1 + len(extra))
    for key in ("steps", "wall_time_s", "train_time_s", "strategy_time_s", "eval_time_s",
                "tokens_trained"):
        total[[k for k, _ in COST_COLUMNS].index(key)] = sum(c.get(key) or 0 for c in cost)
    total[[k for k, _ in COST_COLUMNS].index("peak_memory_mb")] = max(
        c.get("peak_memory_mb") or 0 for c in cost)
    header = [label for _, label in COST_COLUMNS] + extra
    # two tables, time then size, each narrow enough for an 800 px page (one had 16+ columns)
    split = [k for k, _ in COST_COLUMNS].index("trainable_params")
    size = [0, *range(split, len(header))]
    return "\n".join(out + [table(header[:split], [r[:split] for r in rows + [total]], "cost"),
                             table([header[i] for i in size],
                                   [[r[i] for i in size] for r in rows + [total]],
                                   "cost cost-size")])


def _environment(res: dict[str, Any]) -> str:
    """What the run used (versions, device, CPU, precision actually used); one column per
    process when a resumed run changed environment. Nothing for results that predate it."""
    envs = data.environments(res)
    fields = data.environment_fields(envs)
    if not fields:
        return ""
    note = ("Recorded by the process that wrote results.json; precision is the one actually "
            "used (bf16 autocast or fp32), threads are torch's intra-op threads per process.")
    header = ["field", "value"]
    if len(envs) > 1:
        note += " The run was resumed in another environment: one column per process."
        header = ["field", *[f"process {i}" for i in range(1, len(envs))], "latest"]
    rows = [[f, *[data.environment_cell(e, f) for e in envs]] for f in fields]
    return "\n".join(['<h2 id="environment">Environment</h2>', f'<p class="note">{note}</p>',
                      table(header, rows, "environment")])


def build_page(res: dict[str, Any], figs: dict[str, bytes], config_text: str | None) -> str:
    """The whole page; every string from the run is escaped."""
    strategy = res.get("strategy_metrics") or {}
    sections = [
        _header(res), _matrix(res, figs), predictions_section(res), _metrics(res),
        _text_stream(res, figs),
        _general(res, figs), _recycling(res),
        _generic_section("Stage-kind metrics", "Further metrics reported by the evaluation "
                         "(temporal knowledge, editing, preference...).",
                         data.extra_metrics(res), "stage-metrics"),
        _generic_section("Strategy metrics", "Method-specific results (strategy_metrics).",
                         strategy if isinstance(strategy, dict) else {"strategy": strategy},
                         "strategy-metrics"),
        _loss(figs), _cost(res), _environment(res),
        _generic_section("Other results", "results.json keys without a section of their own.",
                         data.extra_results(res), "other"),
    ]
    if config_text:
        sections.append("<h2>Config</h2><details><summary>config.yaml (resolved)</summary>"
                        f"<pre>{escape(config_text)}</pre></details>")
    title = escape(f"everlearn report: {res.get('name', 'run')}")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{title}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(s for s in sections if s)
            + f'\n<p class="note">Written by everlearn '
              f"{escape(str(res.get('everlearn_version', '')))} from results.json.</p>"
            "\n</body></html>\n")

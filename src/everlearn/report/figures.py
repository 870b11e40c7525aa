"""The report's figures as PNG bytes: matplotlib's object API on the Agg canvas, so no pyplot
state, no display and no backend switch in the caller's process."""

from __future__ import annotations

import io
import math
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from everlearn.report.data import general_ability


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


def _row_labels(results: dict[str, Any]) -> list[str]:
    """Finished rows first (base, then each phase), then the phases still to run."""
    phases = results.get("phases") or [[s["name"]] for s in results["stages"]]
    done = results.get("rows") or ["base"] + ["+".join(p) for p in phases[:len(results["R"]) - 1]]
    pending = ["after " + "+".join(p) + " (pending)" for p in phases[len(results["R"]) - 1:]]
    return [f"after {r}" if i else "base model" for i, r in enumerate(done)] + pending


PPL_MIN_SPAN = 10.0  # percent: the perplexity colour scale spans at least +-10% change


def perplexity_change(results: dict[str, Any], r: int, c: int) -> float:
    """Perplexity cell (r, c) as its relative change from the base row, in percent (NaN where
    either is missing): the same change reads the same on every column, so 271 -> 267 is a pale
    -1.5%, not the whole colour range a per-column min-max scale gave it."""
    base, v = results["R"][0][c], results["R"][r][c]
    if v is None or base is None or not math.isfinite(v) or not math.isfinite(base) or not base:
        return math.nan
    return 100.0 * (v - base) / base


def heatmap_png(results: dict[str, Any]) -> bytes:
    """R as an annotated heatmap: rows = after stage i (base first), columns = stage j.

    Scores are coloured on their own 0-100 scale (the colour bar reads 0-100, as the cells do);
    perplexity columns, lower is better and unbounded, on a second diverging scale: the change
    from the base row in percent (blue: lower, red: higher), spanning at least +-10%."""
    import numpy as np

    labels = _row_labels(results)
    names = [s["name"] for s in results["stages"]]
    n_rows, n_cols = len(labels), len(names)
    hib = [s.get("higher_is_better", True) for s in results["stages"]]
    scores, changes = np.full((n_rows, n_cols), np.nan), np.full((n_rows, n_cols), np.nan)
    for r in range(len(results["R"])):
        for c in range(n_cols):
            v = results["R"][r][c]
            if hib[c]:
                scores[r, c] = np.nan if v is None or not math.isfinite(v) else v
            else:
                changes[r, c] = perplexity_change(results, r, c)
    fig = Figure(figsize=(min(2.2 + 1.1 * n_cols, 24), min(1.2 + 0.5 * n_rows, 20)))
    ax = fig.add_subplot()
    img = ax.imshow(np.ma.masked_invalid(scores), cmap=_cmap(), vmin=0, vmax=100,
                    aspect="auto")
    ppl_img = None
    if not all(hib):
        finite = np.abs(changes[np.isfinite(changes)])
        span = max(PPL_MIN_SPAN, float(finite.max()) if finite.size else 0.0)
        from matplotlib import colormaps

        ppl_img = ax.imshow(np.ma.masked_invalid(changes),
                            cmap=colormaps["coolwarm"].with_extremes(bad=(0, 0, 0, 0)),
                            vmin=-span, vmax=span, aspect="auto")
    _annotate(ax, results, scores, changes, hib, n_rows, n_cols)
    ax.set_xticks(range(n_cols), [f"{n}\n({s['metric']})" for n, s in
                                  zip(names, results["stages"])], fontsize=8)
    ax.set_yticks(range(n_rows), labels, fontsize=8)
    ax.tick_params(top=True, labeltop=True, bottom=False, labelbottom=False)
    ax.set_xlabel("scored on stage")
    ax.xaxis.set_label_position("top")  # the bottom holds the perplexity colour bar
    ax.set_ylabel("model")
    if len(results.get("phases") or names) == n_cols:  # the cell each phase trained on
        from matplotlib.patches import Rectangle

        for j in range(min(n_cols, len(results["R"]) - 1)):
            ax.add_patch(Rectangle((j - 0.5, j + 0.5), 1, 1, fill=False, edgecolor="#d62728",
                                   linewidth=1.5))
    if any(hib):
        fig.colorbar(img, ax=ax, fraction=0.04, pad=0.02).set_label("score (0-100)",
                                                                    fontsize=7)
    if ppl_img is not None:
        fig.colorbar(ppl_img, ax=ax, location="bottom", fraction=0.05, pad=0.04,
                     aspect=40).set_label("perplexity: change from the base row (%)",
                                          fontsize=7)
    return _png(fig)


def _annotate(ax, results: dict[str, Any], scores, changes, hib: list[bool], n_rows: int,
              n_cols: int) -> None:
    """Each cell's value (perplexity cells also their change from the base row), in a colour
    that stays readable on the cell's colour; none for more than 25 columns."""
    if n_cols > 25:
        return
    size = 9 if n_cols <= 10 else 7
    for r in range(n_rows):
        for c in range(n_cols):
            if r >= len(results["R"]):
                ax.text(c, r, "–", ha="center", va="center", color="#888", fontsize=size)
                continue
            v = results["R"][r][c]
            text = "–" if v is None else f"{v:.1f}"
            if hib[c]:
                dark = not math.isnan(scores[r, c]) and scores[r, c] < 55
            else:
                dark = False  # coolwarm's ends are mid-dark: black stays readable
                if r and v is not None and not math.isnan(changes[r, c]):
                    text += f"\n{changes[r, c]:+.1f}%"
            ax.text(c, r, text, ha="center", va="center", fontsize=size,
                    color="white" if dark else "black")


def _cmap():
    from matplotlib import colormaps

    return colormaps["viridis"].with_extremes(bad="#eeeeee")


def scores_png(results: dict[str, Any]) -> bytes:
    """Each stage's score after every phase; perplexity stages on their own axes."""
    R, stages = results["R"], results["stages"]
    labels = _row_labels(results)[:len(R)]
    groups = [[j for j, s in enumerate(stages) if s.get("higher_is_better", True) == hib]
              for hib in (True, False)]
    groups = [(g, t) for g, t in zip(groups, ("score", "perplexity (lower is better)")) if g]
    fig = Figure(figsize=(min(4 + 0.8 * len(R), 16), 3.4 * len(groups)))
    xs = list(range(len(R)))
    for k, (cols, title) in enumerate(groups):
        ax = fig.add_subplot(len(groups), 1, k + 1)
        for j in cols:
            ys = [row[j] if row[j] is not None else math.nan for row in R]
            ax.plot(xs, ys, marker="o", label=stages[j]["name"])
        if title == "score":
            ap = [sum(R[r][j] for j in cols) / len(cols) for r in xs
                  if all(R[r][j] is not None for j in cols)]
            if len(ap) == len(R):
                ax.plot(xs, ap, "k--", linewidth=1, label="mean of all stages")
        ax.set_ylabel(title)
        ax.set_xticks(xs, labels, rotation=20, ha="right", fontsize=8)
        ax.grid(alpha=0.3)
        if len(cols) <= 20:  # a long stream: a legend of every stage would hide the plot
            ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.suptitle("score on each stage after each phase", fontsize=10)
    return _png(fig)


def general_png(results: dict[str, Any]) -> bytes | None:
    """General-probe delta against the base model after each phase; None when not reported."""
    probes = general_ability(results)
    if not probes:
        return None
    fig = Figure(figsize=(6.5, 3.2))
    ax = fig.add_subplot()
    for name, p in probes.items():
        ys = [math.nan if d is None else d for d in p["delta"]]
        ax.plot(range(len(ys)), ys, marker="o", label=name)
    ax.axhline(0, color="#888", linewidth=0.8)
    labels = _row_labels(results)
    n = max(len(p["delta"]) for p in probes.values())
    ax.set_xticks(range(n), labels[:n] + [""] * (n - len(labels[:n])), rotation=20,
                  ha="right", fontsize=8)
    ax.set_ylabel("delta vs base")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _png(fig)


def text_stream_png(results: dict[str, Any]) -> bytes | None:
    """A text stream over its token positions: each stage's score at every row (row k at the
    end of segment k), true shifts (grey) and boundaries (dashed); below, the chunk losses the
    detector read. None for a run without a text stream."""
    ts = results.get("text_stream")
    if not isinstance(ts, dict) or not ts.get("segments"):
        return None
    R, stages = results["R"], results["stages"]
    xs = ([0] + [s["end"] for s in ts["segments"]])[:len(R)]
    trace = [row for s in ts["segments"] for row in s.get("detector_trace") or []]
    fig = Figure(figsize=(8, 5.4 if trace else 3.4))
    ax = fig.add_subplot(2 if trace else 1, 1, 1)
    for j, st in enumerate(stages):
        ys = [row[j] if row[j] is not None else math.nan for row in R[:len(xs)]]
        ax.plot(xs, ys, marker="o", label=st["name"])
    if not all(s.get("higher_is_better", True) for s in stages):
        ax.set_yscale("log")
    axes = [ax]
    if trace:
        low = fig.add_subplot(2, 1, 2, sharex=ax)
        low.plot([r[0] for r in trace], [r[1] for r in trace], color="#444", linewidth=1)
        low.set_ylabel("chunk loss (nats)")
        axes.append(low)
    for a in axes:
        for p in ts.get("shifts") or []:
            a.axvline(p, color="#999", linewidth=3, alpha=0.4)
        for b in ts.get("boundaries") or []:
            a.axvline(b["position"], color="#d62728" if b["reason"] == "detector" else "#1f77b4",
                      linestyle="--", linewidth=1)
        a.grid(alpha=0.3)
    ax.set_ylabel("score (log scale: perplexity)" if ax.get_yscale() == "log" else "score")
    axes[-1].set_xlabel("stream position (tokens); grey: true shifts, dashed: boundaries")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.suptitle("each stage's score along the text stream", fontsize=10)
    return _png(fig)


def loss_png(results: dict[str, Any]) -> bytes | None:
    """The training loss over the run's optimizer steps (each phase's curve from results.json
    ``cost[].loss_curve``, its steps offset by the phases before it), phase ends dashed; None
    when no phase recorded a curve (a run written before curves were kept, edit phases)."""
    cost = [c for c in results.get("cost") or [] if isinstance(c, dict)]
    if not any(c.get("loss_curve") for c in cost):
        return None
    fig = Figure(figsize=(8, 3.2))
    ax = fig.add_subplot()
    offset = 0
    for c in cost:
        curve = [p for p in c.get("loss_curve") or [] if isinstance(p, list) and len(p) == 2]
        if curve:
            ax.plot([offset + p[0] for p in curve], [p[1] for p in curve], marker=".",
                    label=f"{c.get('phase')}: {'+'.join(c.get('stages') or [])}")
        offset += int(c.get("steps") or 0)
        ax.axvline(offset, color="#999", linestyle="--", linewidth=0.8)
    ax.set_xlabel("optimizer step (over the run); dashed: end of a phase")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    if len(cost) <= 20:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _png(fig)


def metric_bars_png(labels: list[str], metrics: dict[str, list[tuple[float | None,
                                                                    float | None]]],
                    interval: str) -> bytes:
    """One panel per metric (``{"AP": [(mean, half-width), ...]}``, one pair per label): a
    bar per label with its interval as an error bar (none where the half-width is None, a
    single run; "n/a" where the mean is None, an unfinished run)."""
    short = [t if len(t) <= 28 else t[:25] + "..." for t in labels]
    fig = Figure(figsize=(min(3.0 + 1.6 * len(labels), 11), 3.4))
    for k, (name, values) in enumerate(metrics.items()):
        ax = fig.add_subplot(1, len(metrics), k + 1)
        xs = list(range(len(labels)))
        means = [m if m is not None else 0.0 for m, _ in values]
        errs = [h if h is not None and m is not None else 0.0 for m, h in values]
        ax.bar(xs, means, yerr=errs, capsize=4, color="#4c72b0", ecolor="#222")
        for x, (m, _) in zip(xs, values):
            if m is None:
                ax.text(x, 0, "n/a", ha="center", va="bottom", fontsize=8, color="#555")
        ax.axhline(0, color="#888", linewidth=0.8)
        ax.set_xticks(xs, short, rotation=20, ha="right", fontsize=7)
        ax.set_title(f"{name} (mean, {interval})", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    return _png(fig)

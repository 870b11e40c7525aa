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


def _colour_value(results: dict[str, Any], r: int, c: int) -> float:
    """0..1 for the colour map, 1 = good: scores on 0-100; perplexity per column, inverted."""
    stage, v = results["stages"][c], results["R"][r][c]
    if v is None or not math.isfinite(v):
        return math.nan
    if stage.get("higher_is_better", True):
        return min(max(v / 100.0, 0.0), 1.0)
    col = [row[c] for row in results["R"] if row[c] is not None and math.isfinite(row[c])]
    lo, hi = min(col), max(col)
    return 1.0 if hi == lo else (hi - v) / (hi - lo)


def heatmap_png(results: dict[str, Any]) -> bytes:
    """R as an annotated heatmap: rows = after stage i (base first), columns = stage j."""
    import numpy as np

    labels = _row_labels(results)
    names = [s["name"] for s in results["stages"]]
    n_rows, n_cols = len(labels), len(names)
    colours = np.full((n_rows, n_cols), np.nan)
    for r in range(len(results["R"])):
        for c in range(n_cols):
            colours[r, c] = _colour_value(results, r, c)
    fig = Figure(figsize=(min(2.2 + 1.1 * n_cols, 24), min(1.2 + 0.5 * n_rows, 20)))
    ax = fig.add_subplot()
    cmap = _cmap()
    img = ax.imshow(np.ma.masked_invalid(colours), cmap=cmap, vmin=0, vmax=1, aspect="auto")
    if n_cols <= 25:
        size = 9 if n_cols <= 10 else 7
        for r in range(n_rows):
            for c in range(n_cols):
                if r >= len(results["R"]):
                    ax.text(c, r, "–", ha="center", va="center", color="#888", fontsize=size)
                    continue
                v = results["R"][r][c]
                dark = not math.isnan(colours[r, c]) and colours[r, c] < 0.55
                ax.text(c, r, "–" if v is None else f"{v:.1f}", ha="center", va="center",
                        fontsize=size, color="white" if dark else "black")
    ax.set_xticks(range(n_cols), [f"{n}\n({s['metric']})" for n, s in
                                  zip(names, results["stages"])], fontsize=8)
    ax.set_yticks(range(n_rows), labels, fontsize=8)
    ax.tick_params(top=True, labeltop=True, bottom=False, labelbottom=False)
    ax.set_xlabel("scored on stage")
    ax.set_ylabel("model")
    if len(results.get("phases") or names) == n_cols:  # the cell each phase trained on
        from matplotlib.patches import Rectangle

        for j in range(min(n_cols, len(results["R"]) - 1)):
            ax.add_patch(Rectangle((j - 0.5, j + 0.5), 1, 1, fill=False, edgecolor="#d62728",
                                   linewidth=1.5))
    ppl = not all(s.get("higher_is_better", True) for s in results["stages"])
    bar = fig.colorbar(img, ax=ax, fraction=0.04, pad=0.02)
    bar.set_label("score / 100" + (" (perplexity: 1 = best in its column)" if ppl else ""),
                  fontsize=7)
    return _png(fig)


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

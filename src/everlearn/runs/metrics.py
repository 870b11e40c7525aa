"""The continual-learning metrics of a finished run's matrix R, as results.json ``metrics``.

Shared by the stream and recycle drivers (a text stream has its own: training.textstream
``stream_metrics``). Pure numpy through everlearn.evaluation.metrics.
"""

from __future__ import annotations

from typing import Any

from everlearn.evaluation.metrics import summarize_columns
from everlearn.stages.stream import Stage


def compute_metrics(R: list[list[float | None]], stages: list[Stage],
                    phases: list[list[Stage]]):
    """CL metrics on R; one phase per stage gives the full set, joint gives final AP only.
    Cells an evaluation schedule skipped (None) are left out (see everlearn.evaluation.metrics)."""
    if len(phases) != len(stages):
        last = R[-1]
        cols = [j for j, s in enumerate(stages) if s.higher_is_better]
        return {"final_ap": sum(last[j] for j in cols) / len(cols) if cols else None,
                "note": "stages trained together (joint): only the final average is defined"}
    out: dict[str, Any] = {}
    for direction, scope in ((True, "main"), (False, "perplexity")):
        cols = [j for j, s in enumerate(stages) if s.higher_is_better == direction]
        if not cols:
            continue
        summary = summarize_columns(R, cols, higher_is_better=direction, allow_missing=True)
        summary["stages"] = [stages[c].name for c in cols]
        if not direction:
            summary["note"] = ("perplexity: lower is better; BWT, forgetting and FWT are signed "
                               "as for scores (negative BWT: perplexity rose)")
        out[scope] = summary
    return out["main"] if set(out) == {"main"} else out

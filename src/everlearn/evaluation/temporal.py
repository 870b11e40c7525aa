"""Temporal knowledge in a run: probe accuracy per split after every row of R, and FUAR.

A stage is *temporal* when it is scored by accuracy or exact match and every test record
carries ``meta["split"]`` in ``invariant`` / ``updated`` / ``new`` (the ``worldline`` suite's
cloze probes, scored by option accuracy; a stage's ``probes`` files, as the ``temporalwiki``
and ``ckl`` benchmarks give them, scored by exact match of the generated continuation). For
each such stage the runner keeps, per row of R, ``[correct, n]`` per split; this module turns
those counts into the ``temporal`` section of results.json. Pure Python, no torch.

The step of stage *t* compares its probes on the row before the phase that trains *t* with the
row after it (for one stage per phase: rows ``t - 1`` and ``t``), and FUAR follows
:func:`everlearn.evaluation.metrics.fuar`.
"""

from __future__ import annotations

from typing import Any

from everlearn.evaluation.metrics import fuar, knowledge_gaps
from everlearn.evaluation.scoring import exact_match

SPLITS = ("invariant", "updated", "new")
NOT_DEFINED = "n.d."

Counts = dict[str, dict[str, list[int]]]  # stage name -> split -> [correct, n]


def is_temporal(stage) -> bool:
    return (stage.metric in ("accuracy", "exact_match") and bool(stage.test)
            and all(r.meta.get("split") in SPLITS for r in stage.test))


def split_counts(records, predictions: list[str]) -> dict[str, list[int]]:
    """``{split: [correct, n]}`` of one stage's probes, from the chosen options (accuracy) or
    the generations (exact match)."""
    out = {s: [0, 0] for s in SPLITS}
    for rec, pred in zip(records, predictions):
        c = out[rec.meta["split"]]
        c[0] += int(bool(exact_match(pred, rec.answers)))
        c[1] += 1
    return out


def row_counts(stages, scores) -> Counts:
    """The split counts of every temporal stage in one row of R (``scores``: StageScores; None
    for a stage the evaluation schedule skipped in this row)."""
    return {st.name: split_counts(st.test, sc.predictions)
            for st, sc in zip(stages, scores) if sc is not None and is_temporal(st)}


def accuracy(counts: dict[str, list[int]]) -> dict[str, float | None]:
    """Percent correct per split; None for a split without probes."""
    return {s: (100.0 * c / n if n else None) for s, (c, n) in
            ((s, counts.get(s, [0, 0])) for s in SPLITS)}


def temporal_section(stage_names: list[str], phases: list[list[str]],
                     rows: list[Counts]) -> dict[str, Any]:
    """results.json ``temporal``.

    ``rows``: the raw split counts per row of R (kept so that a resumed run continues them);
    ``accuracy``: per row, per temporal stage, percent correct per split; ``steps``: per
    temporal stage whose phase has finished, the split accuracies before and after the phase
    that trained it, CKL's gaps (forgotten, updated, acquired) and that step's FUAR; ``fuar``:
    FUAR over all finished steps ("n.d." when nothing was gained).
    """
    names = [n for n in stage_names if rows and n in rows[0]]
    phase_of = {name: k for k, phase in enumerate(phases, 1) for name in phase}
    steps, pairs = [], []
    for name in names:
        after = phase_of.get(name)
        if after is None or after >= len(rows):
            continue
        before_acc = accuracy(rows[after - 1][name])
        after_acc = accuracy(rows[after][name])
        forgotten, updated, acquired = knowledge_gaps(before_acc, after_acc)
        step_fuar = fuar([(before_acc, after_acc)])
        pairs.append((before_acc, after_acc))
        steps.append({"stage": name, "rows": [after - 1, after], "before": before_acc,
                      "after": after_acc, "n": {s: rows[after][name][s][1] for s in SPLITS},
                      "forgotten": forgotten, "updated": updated, "acquired": acquired,
                      "fuar": NOT_DEFINED if step_fuar is None else step_fuar})
    total = fuar(pairs) if pairs else None
    return {
        "stages": names,
        "splits": list(SPLITS),
        "note": "accuracy in % per split on each stage's probes; FUAR = forgotten invariant / "
                "(gained updated + gained new), CKL gaps clipped at 0, summed over steps",
        "fuar": NOT_DEFINED if total is None else total,
        "steps": steps,
        "accuracy": [{n: accuracy(row[n]) for n in names if n in row} for row in rows],
        "rows": rows,
    }

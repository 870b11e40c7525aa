"""RUN_DIR/predictions/: what the model produced for every test record, per row of R and stage.

A score of 0.0 says nothing about why; the predictions say what the model generated, which
option it picked and how likely it found each, as lm-evaluation-harness's ``--log_samples``
does. One JSON Lines file per (row, stage) scored, ``predictions/row-TT/JJ-STAGE.jsonl`` (TT:
the row of R, 00 the base model; JJ: the stage's position, so names that clean up alike stay
apart), one line per test record in test-set order, written atomically when the row is scored.
A line holds ``row``, ``stage``, the record's ``index`` in the stage's test set, what the
scorer recorded (:class:`~everlearn.evaluation.evaluator_base.StageScore` ``samples``) and its
``score`` in the units of R: the cell R[t][j] is the mean of its file's scores. Perplexity,
pooled over packed blocks, has no per-record part and no file. ``eval.predictions: false``
writes none. results.json names each row's files under ``predictions``.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from everlearn.runs.run_dir import write_atomic

PREDICTIONS_DIR = "predictions"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def prediction_file(row: int, position: int, stage_name: str) -> str:
    """The file of stage ``position`` (1-based) in row ``row``, relative to the run directory."""
    safe = _UNSAFE.sub("_", stage_name).strip("._") or "stage"
    return f"{PREDICTIONS_DIR}/row-{row:02d}/{position:02d}-{safe}.jsonl"


def write_predictions(run_dir: str | Path, row: int, stages: list, scores: list
                      ) -> dict[str, str]:
    """Write the files of row ``row`` (``scores``: a StageScore or None per stage); returns
    {stage name: file relative to the run directory} for those written."""
    written = {}
    for position, (stage, score) in enumerate(zip(stages, scores), 1):
        if score is None or score.samples is None:
            continue
        rel = prediction_file(row, position, stage.name)
        lines = [json.dumps(finite(line(row, stage.name, sample)), ensure_ascii=False,
                            allow_nan=False) + "\n" for sample in score.samples]
        write_atomic(Path(run_dir) / rel, "".join(lines))
        written[stage.name] = rel
    return written


def line(row: int, stage_name: str, sample: dict[str, Any]) -> dict[str, Any]:
    """One line: row, stage, index, the sample's other fields by name, score last (one order
    whether the sample was just scored or read back from the base-row cache)."""
    rest = {k: sample[k] for k in sorted(sample) if k not in ("index", "score")}
    return {"row": row, "stage": stage_name, "index": sample.get("index"), **rest,
            "score": sample.get("score")}


def finite(value: Any) -> Any:
    """``value`` with every non-finite float (a log-likelihood of -inf) as None: valid JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def read_predictions(run_dir: str | Path, rel: str) -> list[dict[str, Any]]:
    """The lines of one predictions file (``rel``: as results.json names it)."""
    text = (Path(run_dir) / rel).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]

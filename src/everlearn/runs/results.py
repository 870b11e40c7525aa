"""``results.json``, the one record of a run: its typed schema, and the only place it is read
and written.

Every run mode (stream, text stream, recycle) fills a :class:`Results`; :meth:`Results.to_json`
gives the file's content with its keys always in the same order (the goldens compare it byte
for byte). Readers — ``--resume``, ``report``, ``compare``, ``sweep`` — go through the readers
here, each with the checks and the one-line error it needs. Torch-free (``report`` and
``compare`` import it); the writer imports the run directory's atomic write only when called.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from everlearn import __version__
from everlearn.errors import EverlearnError, ResumeError

RESULTS_FILE = "results.json"


@dataclass
class Row:
    """One row of R and what was measured with it: the scores (None where the evaluation
    schedule skipped a stage), the cost of the phase before it (None for the base row), side
    metrics per stage, preference log-ratios per align stage (resume state), temporal probe
    counts and general-probe values."""

    scores: list[float | None]
    cost: dict[str, Any] | None = None
    side: dict[str, dict[str, float]] = field(default_factory=dict)
    preference: dict[str, list[float]] = field(default_factory=dict)
    temporal: dict[str, Any] = field(default_factory=dict)
    general: dict[str, float | None] = field(default_factory=dict)


def restored_rows(prev: dict[str, Any], n: int,
                  general: list[dict[str, float | None]]) -> list[Row]:
    """The first ``n`` rows of a resumed run's results (``general``: their probe values)."""
    def padded(values):
        return (list(values or []) + [{}] * n)[:n]

    side, pref = padded(prev.get("side_metrics")), padded(prev.get("preference_logratios"))
    temporal = padded((prev.get("temporal") or {}).get("rows"))
    cost = [None, *prev["cost"]]
    return [Row(prev["R"][k], cost[k], side[k], pref[k], temporal[k], general[k])
            for k in range(n)]


@dataclass
class Results:
    """results.json. The fields up to ``strategy_metrics`` every run has; the others are
    sections a run has when it has what they describe (None: left out)."""

    status: str
    name: str
    scenario: Any
    strategies: list[str]
    model: str
    finetune: str
    stages: list[dict[str, Any]]
    phases: list[list[str]]
    rows: list[str]
    R: list[list[float | None]]
    base_eval_time_s: float
    cost: list[dict[str, Any]]
    strategy_metrics: dict[str, Any]
    config: dict[str, Any] | None = None  # what every row was computed with (resume checks)
    recycling: dict[str, Any] | None = None  # a recycle run (everlearn.runs.recycle)
    environment: dict[str, Any] | None = None  # everlearn.runs.environment
    environment_history: list[dict[str, Any] | None] = field(default_factory=list)
    eval_schedule: dict[str, Any] | None = None
    side_metrics: list[dict[str, Any]] | None = None
    preference_logratios: list[dict[str, list[float]]] | None = None
    text_stream: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    temporal: dict[str, Any] | None = None
    general: dict[str, Any] = field(default_factory=dict)  # general / general_kl sections
    editing: dict[str, Any] | None = None
    everlearn_version: str = __version__

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"everlearn_version": self.everlearn_version}
        for key in ("status", "name", "scenario", "strategies", "model", "finetune", "stages",
                    "phases", "rows", "R", "base_eval_time_s", "cost", "strategy_metrics"):
            out[key] = getattr(self, key)
        self._put(out, "config", "recycling", "environment")
        if self.environment_history:
            out["environment_history"] = self.environment_history
        self._put(out, "eval_schedule", "side_metrics", "preference_logratios", "text_stream",
                  "metrics", "temporal")
        out.update(self.general)
        self._put(out, "editing")
        return out

    def _put(self, out: dict[str, Any], *keys: str) -> None:
        for key in keys:
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"


def stage_entry(stage, truncated: dict[str, float] | None = None) -> dict[str, Any]:
    """results.json ``stages`` entry of a stage (``truncated``: the share of its examples the
    encoder cut, per split; None leaves the field out)."""
    entry = {"name": stage.name, "kind": stage.kind, "metric": stage.metric,
             "higher_is_better": stage.higher_is_better, "n_train": len(stage.train),
             "n_test": len(stage.test), "task_id": stage.task_id}
    if truncated is not None:
        entry["truncated_share"] = truncated
    return entry


def cost_entry(phase: int, names: list[str], pc, wall: float, eval_s: float,
               params: tuple[int, int], eval_peak: float, buffer_size: int) -> dict[str, Any]:
    """results.json ``cost`` entry of a phase: ``pc`` is the trainer's PhaseCost, ``params``
    (trainable, total), ``eval_peak`` the evaluation's peak memory in MB."""
    trainable, total = params
    return {"phase": phase, "stages": names, "steps": pc.steps, "examples": pc.examples,
            "wall_time_s": wall, "train_time_s": pc.train_time_s, "eval_time_s": eval_s,
            "strategy_time_s": pc.strategy_time_s, "tokens_trained": pc.tokens_trained,
            "tokens_per_s": pc.tokens_trained / max(pc.train_time_s, 1e-9),
            "padding_fraction": pc.padding_fraction, "final_loss": pc.final_loss,
            "trainable_params": trainable, "total_params": total,
            "peak_memory_mb": max(pc.peak_memory_mb, eval_peak), "buffer_size": buffer_size,
            "skipped_batches": pc.skipped_batches}


def results_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / RESULTS_FILE


def write_results(run_dir: str | Path, results: Results) -> dict[str, Any]:
    """Rewrite RUN_DIR/results.json atomically (rank 0 alone); the dict written."""
    from everlearn.runs.run_dir import write_atomic  # torch: only a writer needs it

    write_atomic(results_path(run_dir), results.to_json())
    return results.to_dict()


def read_for_resume(run_dir: str | Path) -> dict[str, Any]:
    """A run's results.json for ``--resume``: R and one cost entry per row after the base."""
    path = results_path(run_dir)
    try:
        data = json.loads(path.read_text())
        R, cost = data["R"], data["cost"]
        assert isinstance(R, list) and isinstance(cost, list) and len(cost) == max(0, len(R) - 1)
    except (json.JSONDecodeError, KeyError, TypeError, AssertionError):
        raise ResumeError(f"{path}: expected everlearn results with R and cost") from None
    return data


def read_for_report(run_dir: str | Path,
                    error: type[EverlearnError] = EverlearnError) -> dict[str, Any]:
    """RUN_DIR/results.json checked for the fields every report needs; ``error`` is raised,
    one line, when the directory or the file is missing or malformed."""
    path = Path(run_dir)
    if not path.is_dir():
        raise error(f"{path}: no such run directory")
    res_path = results_path(path)
    if not res_path.is_file():
        raise error(f"{res_path}: missing; not an everlearn run directory "
                    "(or the run stopped before its base row)")
    try:
        data = json.loads(res_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{res_path}: not valid JSON ({exc})") from None
    ok = (isinstance(data, dict) and isinstance(data.get("R"), list)
          and isinstance(data.get("stages"), list) and data["R"]
          and all(isinstance(r, list) and len(r) == len(data["stages"]) for r in data["R"]))
    if not ok:
        raise error(f"{res_path}: expected everlearn results with R (one list per row, "
                    "one value per stage) and stages")
    return data


def run_state(run_dir: str | Path) -> str:
    """complete (results.json says so), partial (some results) or new."""
    try:
        status = json.loads(results_path(run_dir).read_text(encoding="utf-8"))["status"]
    except FileNotFoundError:
        return "new"
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
        return "partial"  # the run itself reports an unreadable results.json
    return "complete" if status == "complete" else "partial"

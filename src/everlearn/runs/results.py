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
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from everlearn import __version__
from everlearn.errors import EverlearnError, ResumeError
from everlearn.wording import plural

RESULTS_FILE = "results.json"
GENERAL_KEYS = ("general", "general_kl")  # the top-level keys Results.general holds


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
    predictions: dict[str, str] = field(default_factory=dict)  # stage -> its predictions file


def restored_rows(prev: dict[str, Any], n: int,
                  general: list[dict[str, float | None]]) -> list[Row]:
    """The first ``n`` rows of a resumed run's results (``general``: their probe values)."""
    def padded(values):
        return (list(values or []) + [{}] * n)[:n]

    side, pref = padded(prev.get("side_metrics")), padded(prev.get("preference_logratios"))
    temporal = padded((prev.get("temporal") or {}).get("rows"))
    predictions = padded(prev.get("predictions"))
    cost = [None, *prev["cost"]]
    return [Row(prev["R"][k], cost[k], side[k], pref[k], temporal[k], general[k],
                predictions[k]) for k in range(n)]


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
    predictions: list[dict[str, str]] | None = None  # per row: stage -> its predictions file
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
        self._put(out, "editing", "predictions")
        return out

    def _put(self, out: dict[str, Any], *keys: str) -> None:
        for key in keys:
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Results:
        """The inverse of :meth:`to_dict` (``general`` / ``general_kl`` back into
        ``general``); keys this version does not know are left out."""
        names = {f.name for f in fields(cls)} - {"general"}
        known = {k: v for k, v in data.items() if k in names}
        return cls(**known, general={k: data[k] for k in GENERAL_KEYS if k in data})


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
            "loss_curve": pc.loss_curve, "trainable_params": trainable, "total_params": total,
            "peak_memory_mb": max(pc.peak_memory_mb, eval_peak), "buffer_size": buffer_size,
            "skipped_batches": pc.skipped_batches}


def results_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / RESULTS_FILE


def write_results(run_dir: str | Path, results: Results) -> dict[str, Any]:
    """Rewrite RUN_DIR/results.json atomically (rank 0 alone); the dict written."""
    from everlearn.runs.run_dir import write_atomic  # torch: only a writer needs it

    write_atomic(results_path(run_dir), results.to_json())
    return results.to_dict()


def read_results(run_dir: str | Path) -> Results:
    """RUN_DIR/results.json as a typed :class:`Results` (the Python API's ``load_results``);
    a missing or malformed file is a one-line EverlearnError naming it."""
    data = read_for_report(run_dir)
    missing = [k for k in ("status", "name", "strategies", "model", "finetune", "phases",
                           "rows", "cost", "strategy_metrics") if k not in data]
    if missing:
        raise EverlearnError(f"{results_path(run_dir)}: {missing[0]}: missing; expected the "
                             "results.json of an everlearn run")
    data.setdefault("scenario", None)
    data.setdefault("base_eval_time_s", 0.0)
    return Results.from_dict(data)


def read_for_resume(run_dir: str | Path) -> dict[str, Any]:
    """A run's results.json for ``--resume``, every row sound: R and one cost entry per row
    after the base. A damaged file is a one-line ResumeError naming it and what is wrong (a
    recycle run has no other record of its adapters' scores; a stream falls back to its
    checkpoints through :func:`salvage_for_resume`)."""
    data, problem = salvage_for_resume(run_dir)
    if problem is not None:
        raise ResumeError(f"{results_path(run_dir)}: {problem}; restore the file or start a "
                          "new run")
    return data


def salvage_for_resume(run_dir: str | Path) -> tuple[dict[str, Any] | None, str | None]:
    """(what a resume may keep of RUN_DIR/results.json, what is wrong with it or None).

    A sound file comes back whole. A damaged one comes back with R and cost cut to the rows
    before the first damaged one (the phase checkpoints redo the others), or None when nothing
    in it can be trusted (unreadable or truncated JSON, a damaged section every row depends
    on): the run then starts again from its base row."""
    path = results_path(run_dir)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        return None, f"not valid JSON ({exc.msg} at line {exc.lineno}; truncated?)"
    except UnicodeDecodeError:
        return None, "not UTF-8 text"
    problem = section_problem(data)
    if problem is not None:
        return None, problem
    n, problem = sound_rows(data)
    if problem is None:
        return data, None
    if n == 0:
        return None, problem
    data["R"], data["cost"] = data["R"][:n], data["cost"][:n - 1]
    return data, problem


# the sections a resume reads (besides R and cost) and the type each must have when present
RESUME_SECTIONS = {"stages": list, "phases": list, "config": dict, "environment": dict,
                   "environment_history": list, "side_metrics": list, "predictions": list,
                   "preference_logratios": list, "temporal": dict, "text_stream": dict,
                   "general": dict, "general_kl": dict, "base_eval_time_s": (int, float)}


def section_problem(data: Any) -> str | None:
    """What is wrong with a results.json's shape as a whole (None: nothing)."""
    if not isinstance(data, dict):
        return f"expected a JSON object, got {type(data).__name__}"
    for key in ("R", "cost", "stages"):
        if not isinstance(data.get(key), list):
            return f"{key}: expected a list, got {type(data.get(key)).__name__}"
    for key, kind in RESUME_SECTIONS.items():
        if data.get(key) is not None and not isinstance(data[key], kind):
            return f"{key}: expected {getattr(kind, '__name__', 'a number')}, got " \
                   f"{type(data[key]).__name__}"
    if not all(isinstance(st, dict) and isinstance(st.get("name"), str)
               for st in data["stages"]):
        return "stages: expected one entry with a name per stage"
    if not all(isinstance(p, list) and all(isinstance(s, str) for s in p)
               for p in data.get("phases") or []):
        return "phases: expected lists of stage names"
    return None


def sound_rows(data: dict[str, Any]) -> tuple[int, str | None]:
    """(how many leading rows of R are sound, what is wrong with the first that is not)."""
    width = len(data["stages"])
    for k, row in enumerate(data["R"]):
        problem = row_problem(data, k, row, width)
        if problem is not None:
            return k, problem
    return len(data["R"]), None


def row_problem(data: dict[str, Any], k: int, row: Any, width: int) -> str | None:
    """What is wrong with row ``k`` of R and what is recorded with it (None: nothing)."""
    if not isinstance(row, list) or len(row) != width:
        return f"R[{k}]: expected a list of {plural(width, 'score')}, got {short(row)}"
    for j, cell in enumerate(row):
        if cell is not None and (isinstance(cell, bool) or not isinstance(cell, (int, float))
                                 or not math.isfinite(cell)):
            return f"R[{k}][{j}]: expected a number or null, got {short(cell)}"
    if k and (k > len(data["cost"]) or not isinstance(data["cost"][k - 1], dict)):
        return f"cost[{k - 1}]: expected the cost of phase {k}, got " \
               f"{short(data['cost'][k - 1]) if k <= len(data['cost']) else 'nothing'}"
    if k and not isinstance(data["cost"][k - 1].get("steps") or 0, int):
        return f"cost[{k - 1}].steps: expected an integer"
    per_row = {"side_metrics": (data.get("side_metrics"), k),
               "preference_logratios": (data.get("preference_logratios"), k),
               "predictions": (data.get("predictions"), k),
               "temporal.rows": ((data.get("temporal") or {}).get("rows"), k),
               "text_stream.segments": ((data.get("text_stream") or {}).get("segments"), k - 1)}
    for key, (values, at) in per_row.items():
        if values is None or at < 0:
            continue
        if not isinstance(values, list):
            return f"{key}: expected a list, got {type(values).__name__}"
        if at < len(values) and not isinstance(values[at], dict):
            return f"{key}[{at}]: expected an object, got {short(values[at])}"
    return None


def short(value: Any) -> str:
    """A value as a message shows it: its repr, cut to 40 characters."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


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


def report_problem(run_dir: str | Path) -> str:
    """Why :func:`read_for_report` refuses RUN_DIR, in a few words for a list of skipped runs
    (``compare``): "no such directory", "no results.json", "damaged (...)" or "incomplete
    (...)"; "readable" when it does not."""
    path = Path(run_dir)
    if not path.is_dir():
        return "no such directory"
    if not results_path(path).is_file():
        return "no results.json"
    try:
        data = json.loads(results_path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return "damaged (results.json is not valid JSON; truncated?)"
    if isinstance(data, dict) and data.get("R") == [] and isinstance(data.get("stages"), list):
        return "incomplete (no row of R yet: the run stopped before its base evaluation)"
    try:
        read_for_report(path)
    except EverlearnError as exc:
        return "damaged (" + str(exc).removeprefix(f"{results_path(path)}: ") + ")"
    return "readable"


def run_state(run_dir: str | Path) -> str:
    """complete (results.json says so), partial (some results) or new."""
    try:
        status = json.loads(results_path(run_dir).read_text(encoding="utf-8"))["status"]
    except FileNotFoundError:
        return "new"
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
        return "partial"  # the run itself reports an unreadable results.json
    return "complete" if status == "complete" else "partial"

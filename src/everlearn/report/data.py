"""Reading a run directory for the report and ``compare``: pure JSON/YAML, no torch, no plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from everlearn.errors import EverlearnError
from everlearn.runs.environment import FIELDS as ENV_FIELDS
from everlearn.runs.results import read_for_report, report_problem  # noqa: F401 (compare)

# Keys the page renders in their own sections; any other key is shown generically, so results
# added later (by a new stage kind or evaluator) appear without a report change.
KNOWN_TOP = {"everlearn_version", "status", "name", "scenario", "strategies", "model",
             "finetune", "stages", "phases", "rows", "R", "base_eval_time_s", "cost",
             "strategy_metrics", "metrics", "general", "general_ability", "eval_schedule"}
KNOWN_TOP |= {"recycling"}  # recycle runs (page._recycling)
KNOWN_TOP |= {"text_stream"}  # boundary-free text streams (page._text_stream)
KNOWN_TOP |= {"environment", "environment_history"}  # page._environment, compare
KNOWN_TOP |= {"predictions"}  # report.predictions
CL_KEYS = ("ap", "final_ap", "la", "bwt", "bwt_trace", "forgetting", "fwt")
KNOWN_METRIC = {*CL_KEYS, "stages", "note", "main", "perplexity", "general_delta",
                "ap_estimated", "forgetting_lower_bound"}


class ReportError(EverlearnError):
    """A run directory cannot be reported on (missing or malformed results.json)."""


def load_results(run_dir: str | Path) -> dict[str, Any]:
    """``RUN_DIR/results.json`` checked for the fields every report needs (everlearn.runs.
    results reads it)."""
    return read_for_report(run_dir, ReportError)


def phases_total(results: dict[str, Any]) -> int:
    return len(results.get("phases") or results["stages"])


def phases_done(results: dict[str, Any]) -> int:
    return len(results["R"]) - 1


def is_partial(results: dict[str, Any]) -> bool:
    return results.get("status") != "complete" or phases_done(results) < phases_total(results)


def main_metrics(results: dict[str, Any]) -> dict[str, Any]:
    """The higher-is-better metric group (``metrics`` itself, or its ``main`` part)."""
    m = results.get("metrics") or {}
    if "main" in m or "perplexity" in m:
        return m.get("main") or {}
    return m


def _series(value: Any) -> list[float] | None:
    if isinstance(value, list) and value and all(isinstance(v, (int, float)) or v is None
                                                 for v in value):
        return [None if v is None else float(v) for v in value]
    return None


def general_ability(results: dict[str, Any]) -> dict[str, dict[str, list[float | None]]]:
    """General-probe scores per R row and their delta against the base row, by probe name.

    Accepted shapes under ``general_ability`` (or ``general``): a list of scores (one per row);
    ``{"scores": [...]}`` or ``{"delta": [...]}``; or ``{probe: <either of those>}``.
    """
    raw = results.get("general_ability", results.get("general"))
    if raw is None:
        return {}
    probes = {"general": raw} if _series(raw) or (
        isinstance(raw, dict) and ("scores" in raw or "delta" in raw)) else raw
    out = {}
    for name, val in (probes.items() if isinstance(probes, dict) else []):
        scores = _series(val) or (_series(val.get("scores")) if isinstance(val, dict) else None)
        delta = _series(val.get("delta")) if isinstance(val, dict) else None
        if scores and delta is None and scores[0] is not None:
            delta = [None if s is None else s - scores[0] for s in scores]
        if scores or delta:
            out[str(name)] = {"scores": scores or [], "delta": delta or []}
    return out


def final_general_delta(results: dict[str, Any]) -> float | None:
    """The general-ability change after the last stage (mean over probes), if reported."""
    m = results.get("metrics") or {}
    if isinstance(m.get("general_delta"), (int, float)):
        return float(m["general_delta"])
    finals = [p["delta"][-1] for p in general_ability(results).values()
              if p["delta"] and p["delta"][-1] is not None]
    return sum(finals) / len(finals) if finals else None


def extra_metrics(results: dict[str, Any]) -> dict[str, Any]:
    """Metric keys beyond the CL set (FUAR, editing, preference accuracy...), to show as-is."""
    m = results.get("metrics") or {}
    out = {k: v for k, v in m.items() if k not in KNOWN_METRIC}
    for group in ("main", "perplexity"):
        if isinstance(m.get(group), dict):
            out.update({f"{group}.{k}": v for k, v in m[group].items() if k not in KNOWN_METRIC})
    return out


def extra_results(results: dict[str, Any]) -> dict[str, Any]:
    """Top-level results.json keys the page has no dedicated section for."""
    return {k: v for k, v in results.items() if k not in KNOWN_TOP}


UNKNOWN = "unknown"  # an environment results.json does not record (written by an older everlearn)


def environments(results: dict[str, Any]) -> list[dict[str, Any] | None]:
    """The environment of every process that wrote the run, oldest first (a resumed run may
    have several; see everlearn.runs.environment); None for one not recorded."""
    history = results.get("environment_history")
    out = [e if isinstance(e, dict) else None for e in history] if isinstance(history, list) else []
    env = results.get("environment")
    return out + [env if isinstance(env, dict) else None]


def environment_fields(envs: list[dict[str, Any] | None]) -> list[str]:
    """The fields recorded in any of ``envs``, in everlearn.runs.environment's order."""
    seen = dict.fromkeys(k for e in envs if e for k in e)
    return [k for k in ENV_FIELDS if k in seen] + [k for k in seen if k not in ENV_FIELDS]


def environment_cell(env: dict[str, Any] | None, field: str) -> str:
    """One recorded value as text: ``unknown`` when the environment is not recorded, ``-``
    when it lacks the field (no GPU on a CPU run, a package not installed)."""
    if env is None:
        return UNKNOWN
    value = env.get(field)
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def environment_value(results: dict[str, Any], field: str) -> str:
    """A run's value of ``field``; ``a → b`` when a resume changed it."""
    cells = [environment_cell(e, field) for e in environments(results)]
    return " → ".join(c for i, c in enumerate(cells) if i == 0 or c != cells[i - 1])

"""The registry of metrics: what a stage is scored by, each declared once.

Every module of this package that defines ``METRIC = Metric(...)`` declares one metric: its
name, whether higher is better, the short label tables print, a one-line description and the
function the :class:`~everlearn.evaluation.matrix.Evaluator` calls to score a stage with it.
Code that would branch on a metric's name asks the registry instead, so a new metric is one new
module here (plus the kinds that may use it, which is each kind's business: ``Kind.metrics``).
One module per metric, like the stage kinds and strategies, rather than one list: a metric's
scoring entry point sits beside its declaration, and nothing else names every metric.

Torch-free at import, discovery included: config validation, ``Stage.higher_is_better`` and
``report/`` (which must not import torch) ask the registry. A metric's modules therefore do not
import the evaluator; its ``score`` is handed the evaluator and calls what that offers (the
scoring code stays in :mod:`everlearn.evaluation.matrix` and the scorer classes beside it).
Modules are discovered on the first lookup, not on import.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from everlearn.errors import ConfigError
from everlearn.registry import declarations


@dataclass(frozen=True)
class Metric:
    """What one metric says about itself.

    ``score(evaluator, model, stage, router)`` scores ``stage``'s test set with the current
    model (``router``: a test record -> the adapter to score it with, or None) and returns a
    ``StageScore``; the evaluator calls it under ``torch.no_grad`` with the model in eval mode.
    """

    name: str
    order: int  # position in metric_names()
    higher_is_better: bool
    short: str  # the column label plain-text tables print
    description: str
    score: Callable[[Any, Any, Any, Any], Any]


_METRICS: dict[str, Metric] = {}


def _discover() -> dict[str, Metric]:
    if not _METRICS:
        _METRICS.update(declarations(__path__, __name__, "METRIC", Metric))
    return _METRICS


def metric_names() -> list[str]:
    """The names of every metric, in order (accuracy, exact_match, ..., reliability)."""
    return list(_discover())


def get_metric(name: str) -> Metric:
    """The metric called ``name``; a one-line ConfigError naming the metrics otherwise."""
    found = _discover()
    if name not in found:
        raise ConfigError(f"unknown metric {name!r}; expected one of {', '.join(found)}")
    return found[name]


def generated_text_score(match: Callable[[str, list[str]], float],
                         alive: Callable[[str, list[str]], bool] | None = None,
                         single_line: bool | None = None) -> Callable[[Any, Any, Any, Any], Any]:
    """The ``score`` of a metric that compares each record's greedy generation with its
    answers: ``match(generation, answers)`` in [0, 1] per record, the stage's mean in %.
    ``alive`` and ``single_line``: as :meth:`Evaluator.generated_scores` takes them."""

    def score(evaluator, model, stage, router):
        def generated(model, stage, records):
            return evaluator.generated_scores(model, stage, records, match, alive=alive,
                                              single_line=single_line)

        return evaluator.mean_of_records(model, stage, router, generated)

    return score


__all__ = ["Metric", "generated_text_score", "get_metric", "metric_names"]

"""``accuracy``: each record's label options ranked by log-likelihood, the top one checked
against the answers (no decoding; :mod:`everlearn.evaluation.option_accuracy`)."""

from __future__ import annotations

from everlearn.evaluation.scorers import Metric


def score(evaluator, model, stage, router):
    return evaluator.mean_of_records(model, stage, router, evaluator.option_accuracy)


METRIC = Metric(
    name="accuracy", order=1, higher_is_better=True, short="acc",
    description="the most likely label option (by log-likelihood) matches the answer, in %",
    score=score,
)

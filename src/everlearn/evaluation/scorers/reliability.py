"""``reliability``: an edit stage's edits scored teacher-forced by top-1 predictions, with
generalisation and locality beside it (:mod:`everlearn.evaluation.edit_scoring`)."""

from __future__ import annotations

from everlearn.evaluation.scorers import Metric


def score(evaluator, model, stage, router):
    return evaluator.score_edits(model, stage, router)


METRIC = Metric(
    name="reliability", order=11, higher_is_better=True, short="rel",
    description="edits whose target the edited model predicts teacher-forced, in %",
    score=score,
)

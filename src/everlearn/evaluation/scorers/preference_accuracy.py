"""``preference_accuracy``: held-out preference pairs scored by their implicit reward margin
against the stage's reference model (:mod:`everlearn.evaluation.preference_scoring`)."""

from __future__ import annotations

from everlearn.evaluation.scorers import Metric


def score(evaluator, model, stage, router):
    def logratios(model, stage, records):
        return [(d, "", {}) for d in evaluator.pair_logratios(model, stage, records)]

    results = evaluator.record_scores(model, stage, router, logratios)
    return evaluator.preference_score(stage, [r[0] for r in results])


METRIC = Metric(
    name="preference_accuracy", order=10, higher_is_better=True, short="pref",
    description="pairs whose implicit reward margin prefers the chosen answer, in %",
    score=score,
)

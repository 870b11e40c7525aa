"""``exact_match``: batched greedy generations, SQuAD-normalised exact match with an answer
(:func:`everlearn.evaluation.scoring.exact_match`); a generation stops once it cannot match."""

from __future__ import annotations

from everlearn.evaluation.scorers import Metric
from everlearn.evaluation.scoring import can_still_match, exact_match


def score(evaluator, model, stage, router):
    def generated(model, stage, records):
        return evaluator.generated_scores(model, stage, records, exact_match,
                                          alive=can_still_match)

    return evaluator.mean_of_records(model, stage, router, generated)


METRIC = Metric(
    name="exact_match", order=2, higher_is_better=True, short="em",
    description="a greedy generation equals an answer (SQuAD-normalised), in %",
    score=score,
)

"""``rouge_l``: batched greedy generations, ROUGE-L F1 against the best answer, as the
``rouge-score`` package computes it with Super-NaturalInstructions' settings
(:func:`everlearn.evaluation.scoring.rouge_l`)."""

from __future__ import annotations

from everlearn.evaluation.scorers import Metric
from everlearn.evaluation.scoring import rouge_l


def score(evaluator, model, stage, router):
    def generated(model, stage, records):
        return evaluator.generated_scores(model, stage, records, rouge_l)

    return evaluator.mean_of_records(model, stage, router, generated)


METRIC = Metric(
    name="rouge_l", order=3, higher_is_better=True, short="rouge",
    description="ROUGE-L F1 of a greedy generation against the best answer, in %",
    score=score,
)

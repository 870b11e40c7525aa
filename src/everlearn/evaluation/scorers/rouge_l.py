"""``rouge_l``: batched greedy generations, ROUGE-L F1 against the best answer, as the
``rouge-score`` package computes it with Super-NaturalInstructions' settings
(:func:`everlearn.evaluation.scoring.rouge_l`)."""

from __future__ import annotations

from everlearn.evaluation.scorers import Metric, generated_text_score
from everlearn.evaluation.scoring import rouge_l

METRIC = Metric(
    name="rouge_l", order=3, higher_is_better=True, short="rouge",
    description="ROUGE-L F1 of a greedy generation against the best answer, in %",
    score=generated_text_score(rouge_l),
)

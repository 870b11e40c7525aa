"""``exact_match``: batched greedy generations, SQuAD-normalised exact match with an answer
(:func:`everlearn.evaluation.scoring.exact_match`); a generation stops once it cannot match."""

from __future__ import annotations

from everlearn.evaluation.scorers import Metric, generated_text_score
from everlearn.evaluation.scoring import can_still_match, exact_match

METRIC = Metric(
    name="exact_match", order=2, higher_is_better=True, short="em",
    description="a greedy generation equals an answer (SQuAD-normalised), in %",
    score=generated_text_score(exact_match, alive=can_still_match),
)

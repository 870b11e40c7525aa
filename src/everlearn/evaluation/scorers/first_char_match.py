"""``first_char_match``: batched greedy generations scored by their first character against the
answer's (:func:`everlearn.evaluation.scoring.first_char_match`), TRACE's ScienceQA accuracy
(the option letter of ``"B\\nBecause ..."``). A row stops as soon as its first character is
written: the rest cannot change the score."""

from __future__ import annotations

from everlearn.evaluation.scorers import Metric
from everlearn.evaluation.scoring import first_char_match, first_char_open


def score(evaluator, model, stage, router):
    def generated(model, stage, records):
        return evaluator.generated_scores(model, stage, records, first_char_match,
                                          alive=first_char_open, single_line=False)

    return evaluator.mean_of_records(model, stage, router, generated)


METRIC = Metric(
    name="first_char_match", order=5, higher_is_better=True, short="letter",
    description="the first character of a greedy generation equals the answer's (an option "
                "letter; TRACE's ScienceQA accuracy), in %",
    score=score,
)

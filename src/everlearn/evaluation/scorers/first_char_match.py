"""``first_char_match``: batched greedy generations scored by their first character against the
answer's (:func:`everlearn.evaluation.scoring.first_char_match`), TRACE's ScienceQA accuracy
(the option letter of ``"B\\nBecause ..."``). A row stops as soon as its first character is
written: the rest cannot change the score."""

from __future__ import annotations

from everlearn.evaluation.scorers import Metric, generated_text_score
from everlearn.evaluation.scoring import first_char_match, first_char_open

METRIC = Metric(
    name="first_char_match", order=5, higher_is_better=True, short="letter",
    description="the first character of a greedy generation equals the answer's (an option "
                "letter; TRACE's ScienceQA accuracy), in %",
    score=generated_text_score(first_char_match, alive=first_char_open, single_line=False),
)

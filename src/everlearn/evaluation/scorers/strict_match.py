"""``strict_match``: batched greedy generations, equal to an answer character for character
(ends stripped; :func:`everlearn.evaluation.scoring.strict_match`), TRACE's accuracy for
C-STANCE, FOMC and NumGLUE. The whole generation counts, not only its first line (TRACE scores
what the model wrote up to its end); a row stops once it can no longer equal an answer."""

from __future__ import annotations

from everlearn.evaluation.scorers import Metric, generated_text_score
from everlearn.evaluation.scoring import can_still_equal, strict_match

METRIC = Metric(
    name="strict_match", order=4, higher_is_better=True, short="eq",
    description="a greedy generation equals an answer character for character (ends "
                "stripped, no other normalisation; TRACE's accuracy), in %",
    score=generated_text_score(strict_match, alive=can_still_equal, single_line=False),
)

"""``edit_similarity``: batched greedy generations scored by fuzzywuzzy's ``fuzz.ratio``
against the best answer, after Py150's literal placeholders are rewritten
(:func:`everlearn.evaluation.scoring.edit_similarity`), TRACE's Py150 score (CodeXGLUE's edit
similarity). The whole generation counts, not only its first line."""

from __future__ import annotations

from everlearn.evaluation.scorers import Metric, generated_text_score
from everlearn.evaluation.scoring import edit_similarity

METRIC = Metric(
    name="edit_similarity", order=6, higher_is_better=True, short="edit",
    description="edit similarity (fuzz.ratio: Indel-distance ratio, a whole number per "
                "record) of a greedy generation against the best answer (TRACE's Py150), in %",
    score=generated_text_score(edit_similarity, single_line=False),
)

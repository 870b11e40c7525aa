"""``rouge_l_summary``: batched greedy generations scored by the ``rouge`` package's
summary-level ROUGE-L F (union LCS over sentences split at ``.``; case-sensitive tokens;
:func:`everlearn.evaluation.scoring.rouge_l_summary`), TRACE's MeetingBank score. The whole
generation counts, not only its first line."""

from __future__ import annotations

from everlearn.evaluation.scorers import Metric, generated_text_score
from everlearn.evaluation.scoring import rouge_l_summary

METRIC = Metric(
    name="rouge_l_summary", order=8, higher_is_better=True, short="rougeLsum",
    description="summary-level ROUGE-L F (union LCS over '.'-split sentences, case-sensitive "
                "tokens; the rouge package's, TRACE's MeetingBank) of a greedy generation "
                "against the best answer, in %",
    score=generated_text_score(rouge_l_summary, single_line=False),
)

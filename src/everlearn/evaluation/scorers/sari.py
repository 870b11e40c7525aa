"""``sari``: batched greedy generations scored by SARI (:mod:`everlearn.evaluation.sari`) with
the test record's prompt as the source and its answers as the references, TRACE's 20Minuten
score. The whole generation counts, not only its first line."""

from __future__ import annotations

from everlearn.evaluation.sari import sari
from everlearn.evaluation.scorers import Metric


def score(evaluator, model, stage, router):
    def generated(model, stage, records):
        preds = evaluator.generations(model, stage, records, single_line=False)
        return [(sari(r.prompt, p, r.answers), p,
                 {"prompt": r.prompt, "generation": p, "answers": r.answers})
                for p, r in zip(preds, records)]

    return evaluator.mean_of_records(model, stage, router, generated)


METRIC = Metric(
    name="sari", order=7, higher_is_better=True, short="sari",
    description="SARI of a greedy generation, the prompt as the source and the answers as "
                "the references (Xu et al. 2016, as TRACE computes it for 20Minuten), in %",
    score=score,
)

"""``perplexity``: exp of the mean token loss over the packed test text, pooled over every
adapter group routing makes (the one metric where lower is better and scores exceed 100)."""

from __future__ import annotations

from everlearn.evaluation.scorers import Metric


def score(evaluator, model, stage, router):
    return evaluator.perplexity(model, stage, router)


METRIC = Metric(
    name="perplexity", order=9, higher_is_better=False, short="ppl",
    description="exp of the mean token loss on the packed test text (lower is better)",
    score=score,
)

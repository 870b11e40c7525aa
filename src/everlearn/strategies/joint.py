"""Joint (multitask) training on the union of every stage: the usual upper bound.

It is not continual: all stages train in one phase, reported as one row after the base row.
Its training budget is the sum of the stages' budgets, so it sees as many examples in total.
"""

from everlearn.strategies.base import Strategy


class Joint(Strategy):
    name = "joint"
    summary = "multitask training on all stages at once (upper bound; one row)"
    # FSDP: its hooks only choose data or add forward passes every rank makes alike
    unsupported_parallel = {}
    paper = "multitask upper bound (e.g. Lopez-Paz & Ranzato 2017, GEM)"

    def plan(self, stages):
        return [list(stages)]

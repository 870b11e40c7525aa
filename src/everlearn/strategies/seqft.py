"""Sequential fine-tuning: train each stage in turn with no protection against forgetting.

The lower reference every continual-learning method is compared against.
"""

from everlearn.strategies.base import Strategy


class SeqFT(Strategy):
    name = "seqft"
    summary = "sequential fine-tuning, the no-protection baseline"
    # FSDP: its hooks only choose data or add forward passes every rank makes alike
    unsupported_parallel = {}
    paper = "baseline (e.g. TRACE, Wang et al. 2023)"

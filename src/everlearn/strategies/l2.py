"""L2 to the previous stage's weights: an unweighted pull back to where the last stage ended.

The uniform-importance baseline of the regularisation family (the "L2" curve of Kirkpatrick
et al. 2017, fig. 2; the same penalty towards a starting point is L2-SP, Li et al. 2018):

    l2_lambda / 2 * ||theta - theta_prev||^2

``theta_prev`` are the trainable weights at the end of the previous stage, refreshed after every
stage; stage 1 trains freely (there is no previous stage). Only trainable weights (LoRA
adapters under LoRA). Memory: one fp32 copy of them; no extra forward passes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from everlearn.strategies.base import Strategy
from everlearn.strategies.common import penalty as P


@dataclass
class L2Options:
    l2_lambda: float = field(
        default=1.0, metadata={"help": "Penalty strength (lambda in lambda/2 * ||d||^2)."})

    def check(self) -> tuple[str, str] | None:
        """(field, message) for the first invalid option, else None."""
        if self.l2_lambda < 0:
            return "l2_lambda", f"expected a number >= 0, got {self.l2_lambda}"
        return None


class L2(Strategy):
    name = "l2"
    summary = "L2 pull to the previous stage's weights (uniform importance)"
    unsupported_parallel = {"fsdp": "it keeps a copy of every previous weight"}
    paper = ("L2 baseline of Kirkpatrick et al. 2017 (PNAS); L2-SP: Li, Grandvalet & Davoine "
             "2018, Explicit inductive bias for transfer learning (ICML)")
    Options = L2Options

    def __init__(self, options=None):
        super().__init__(options)
        self.anchor: P.Tensors | None = None

    def after_stage(self, stage):
        self.anchor = P.snapshot(P.trainable(self.ctx.model))

    def extra_loss(self, model, batch, outputs):
        if self.anchor is None or self.options.l2_lambda == 0:
            return None
        return 0.5 * self.options.l2_lambda * P.quadratic_penalty(P.trainable(model), self.anchor)

    def state_dict(self):
        tensors = P.to_cpu(self.anchor, "anchor/") if self.anchor is not None else {}
        return {"meta": {}, "tensors": tensors}

    def load_state_dict(self, state):
        self.anchor = P.from_prefixed(state.get("tensors", {}), "anchor/") or None

"""Memory Aware Synapses: penalise changes to weights the model's output is sensitive to.

Aljundi et al. 2018. Importance (eq. 2-3 of the global version) is the mean over examples of
``|d ||F(x)||^2 / d theta_i|``, where F is the learned function's output; it needs no labels.
While training later stages the loss gets (eq. 4)

    mas_lambda * sum_i Omega_i (theta_i - theta*_i)^2

with ``theta*`` the weights at the end of the previous stage (one anchor, refreshed after each
stage) - note the paper has no 1/2 in front, unlike EWC.

Choices:
- F(x) for a language model: the logits at the answer positions (those that predict a
  supervised token; every position of a packed cpt block), the squared L2 norm averaged over
  positions so importance does not grow with answer length. Labels choose the positions only.
- Per-example gradients over ``mas_samples`` of the stage's own training examples, as in
  eq. 3 (the authors' code uses mini-batch gradients; per-example is the equation), after each
  stage but the last. Computed as EWC's Fisher is: one batched pass per chunk of examples
  (``strategies.common.per_example``, exact), else one forward and backward per example.
- Across stages importance is summed (``accumulate: sum``, what the authors' code does in
  ``accumelate_reg_params``) or kept as the running mean over stages (``average``).
- Only trainable weights (LoRA adapters under LoRA). Memory: two fp32 copies of them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from everlearn.strategies.base import Strategy
from everlearn.strategies.common import penalty as P


@dataclass
class MASOptions:
    mas_lambda: float = field(
        default=1.0, metadata={"help": "Penalty strength (lambda in lambda * Omega * d^2)."})
    mas_samples: int = field(
        default=64, metadata={"help": "Training examples per stage importance is averaged over."})
    accumulate: str = field(
        default="sum", metadata={"help": "Importance across stages: 'sum' or 'average'."})

    def check(self) -> tuple[str, str] | None:
        """(field, message) for the first invalid option, else None."""
        if self.mas_lambda < 0:
            return "mas_lambda", f"expected a number >= 0, got {self.mas_lambda}"
        if self.mas_samples < 1:
            return "mas_samples", f"expected an integer >= 1, got {self.mas_samples}"
        if self.accumulate not in ("sum", "average"):
            return "accumulate", f"expected 'sum' or 'average', got {self.accumulate!r}"
        return None


class MAS(Strategy):
    name = "mas"
    summary = "memory aware synapses: pull to earlier weights, weighted by output sensitivity"
    unsupported_parallel = {
        "fsdp": "its importance and anchors are per-weight tensors of the whole model",
    }
    paper = ("Aljundi et al. 2018, Memory Aware Synapses: Learning what (not) to forget "
             "(ECCV)")
    Options = MASOptions

    def __init__(self, options=None):
        super().__init__(options)
        self.omega: P.Tensors | None = None
        self.anchor: P.Tensors | None = None
        self.stages_seen = 0

    def importance_of(self, stage) -> P.Tensors:
        """Omega of the current weights on ``stage``'s training inputs."""
        ctx = self.ctx
        params = P.trainable(ctx.model)
        rng = random.Random(f"{ctx.seed}:{stage.index}:{self.name}:examples")
        examples = P.sample_examples(ctx.encoder, stage, self.options.mas_samples, rng)
        device = next(iter(params.values())).device
        batches = P.single_batches(examples, ctx.encoder.pad_id, device)
        return P.mas_importance(ctx.model, params, batches, autocast=ctx.autocast)

    def after_stage(self, stage):
        if self.is_last_stage(stage):
            return  # no later stage would use this importance: skip its passes
        new = self.importance_of(stage)
        self.stages_seen += 1
        self.omega = P.accumulate(self.omega, new, self.options.accumulate, self.stages_seen)
        self.anchor = P.snapshot(P.trainable(self.ctx.model))

    def extra_loss(self, model, batch, outputs):
        if self.anchor is None or self.options.mas_lambda == 0:
            return None
        return self.options.mas_lambda * P.quadratic_penalty(
            P.trainable(model), self.anchor, self.omega)

    def state_dict(self):
        tensors: P.Tensors = {}
        if self.anchor is not None:
            tensors.update(P.to_cpu(self.omega, "omega/"))
            tensors.update(P.to_cpu(self.anchor, "anchor/"))
        return {"meta": {"stages_seen": self.stages_seen}, "tensors": tensors}

    def load_state_dict(self, state):
        tensors = state.get("tensors", {})
        self.stages_seen = int(state.get("meta", {}).get("stages_seen", 0))
        anchor = P.from_prefixed(tensors, "anchor/")
        self.anchor = anchor or None
        self.omega = P.from_prefixed(tensors, "omega/") if anchor else None

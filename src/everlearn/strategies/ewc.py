"""Elastic Weight Consolidation: a Fisher-weighted pull towards each earlier stage's weights.

Kirkpatrick et al. 2017, eq. 3: after stage k, keep its weights ``theta*_k`` and a diagonal
Fisher ``F_k``; while training later stages add

    ewc_lambda / 2 * sum_k sum_i F_k,i (theta_i - theta*_k,i)^2      (one term per earlier stage)

The paper notes that the sum of the per-stage penalties is itself one quadratic; the terms are
kept apart here so that each stays inspectable. With ``online: true`` (online EWC, Schwarz et
al. 2018, Progress & Compress) one running Fisher
``F = gamma * F_old + F_new`` and one anchor (the latest weights) replace the list of terms, so
memory stays constant over a long stream. Schwarz et al. scale the penalty by one more gamma;
that factor is folded into ``ewc_lambda`` here.

Choices:
- Fisher: the *true* Fisher by default (``fisher: sampled``): every answer token is sampled
  from the model's own predictive distribution given the data's prefix (seeded by the run
  seed and the stage index), as the paper prescribes; ``fisher: empirical`` uses the data's
  labels instead - common in implementations, but it nearly vanishes on examples the model
  already fits (on the tiny test stream, at the lambda where the sampled Fisher halves
  forgetting, it barely reduces it), hence not the default. ``log p`` is the mean token
  log-likelihood of an example's answer (or of a packed text block for cpt stages), so the
  Fisher has the scale of the training loss, whatever the answer length.
- Per-example gradients, eval mode, over ``fisher_samples`` of the stage's own training
  examples, after each stage but the last (whose Fisher no later stage would use). They come
  from one batched pass per chunk of examples (``strategies.common.per_example``: torch.func
  vmap over the per-example loss, exact to float rounding; the LM head at the answer positions
  only), or one forward and backward per example where that cannot run (images, a model vmap
  cannot trace, a per-example gradient too large to batch).
- Scale: with this Fisher, ``1/2 * sum_i F_i d_i^2`` is the quadratic estimate of how much the
  earlier stage's mean token loss rises, so ``ewc_lambda = 1`` would weigh it like the new loss.
  That estimate is optimistic far from the anchor (a confident model has a small Fisher), and
  useful values are much larger: forgetting on the tiny test stream falls from 4.5 to about 3
  nats at 1e3 and to about 2 at 1e4 (tests/e2e/test_regularizers.py). Tune it per model.
- Only trainable weights are anchored (LoRA adapters under LoRA). Memory: two fp32 copies of
  the trainable weights per earlier stage (one pair in online mode) - small under LoRA, large
  under full fine-tuning of a big model, where ``online: true`` is the affordable choice.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch

from everlearn.strategies.base import Strategy
from everlearn.strategies.common import penalty as P


@dataclass
class EWCOptions:
    ewc_lambda: float = field(
        default=1000.0, metadata={"help": "Penalty strength (lambda in lambda/2 * F * d^2)."})
    fisher_samples: int = field(
        default=64, metadata={"help": "Training examples per stage the Fisher is averaged over."})
    fisher: str = field(
        default="sampled", metadata={"help": "'sampled' (true Fisher: labels drawn from the "
                                             "model) or 'empirical' (the data's labels)."})
    online: bool = field(
        default=False, metadata={"help": "Online EWC: one running Fisher and anchor."})
    gamma: float = field(
        default=0.9, metadata={"help": "Online EWC decay of the old Fisher (F = gamma*F + F_new)."})

    def check(self) -> tuple[str, str] | None:
        """(field, message) for the first invalid option, else None."""
        if self.ewc_lambda < 0:
            return "ewc_lambda", f"expected a number >= 0, got {self.ewc_lambda}"
        if self.fisher_samples < 1:
            return "fisher_samples", f"expected an integer >= 1, got {self.fisher_samples}"
        if self.fisher not in ("sampled", "empirical"):
            return "fisher", f"expected 'sampled' or 'empirical', got {self.fisher!r}"
        if not 0 <= self.gamma <= 1:
            return "gamma", f"expected 0 <= x <= 1, got {self.gamma}"
        return None


class EWC(Strategy):
    name = "ewc"
    summary = "elastic weight consolidation: Fisher-weighted pull to earlier weights (online opt.)"
    unsupported_parallel = {
        "fsdp": "its Fisher and anchors are per-weight tensors of the whole model",
    }
    paper = ("Kirkpatrick et al. 2017, Overcoming catastrophic forgetting in neural networks "
             "(PNAS); online EWC: Schwarz et al. 2018, Progress & Compress (ICML)")
    Options = EWCOptions

    def __init__(self, options=None):
        super().__init__(options)
        # One (stage index, Fisher, anchor) per earlier stage; a single entry in online mode.
        self.terms: list[tuple[int, P.Tensors, P.Tensors]] = []

    def fisher_of(self, stage) -> P.Tensors:
        """The diagonal Fisher of the current weights on ``stage``'s training data."""
        ctx = self.ctx
        model = ctx.model
        params = P.trainable(model)
        rng = random.Random(f"{ctx.seed}:{stage.index}:{self.name}:examples")
        examples = P.sample_examples(ctx.encoder, stage, self.options.fisher_samples, rng)
        device = next(iter(params.values())).device
        batches = P.single_batches(examples, ctx.encoder.pad_id, device)
        gen = torch.Generator(device=device)
        gen.manual_seed(P.torch_seed(ctx.seed, stage.index, self.name))
        return P.diag_fisher(model, params, batches, sample=self.options.fisher == "sampled",
                             generator=gen, autocast=ctx.autocast)

    def after_stage(self, stage):
        if self.is_last_stage(stage):
            return  # no later stage would be pulled towards it: skip the Fisher passes
        fisher = self.fisher_of(stage)
        anchor = P.snapshot(P.trainable(self.ctx.model))
        if self.options.online:
            old = self.terms[0][1] if self.terms else None
            self.terms = [(stage.index, P.decay_and_add(old, fisher, self.options.gamma),
                           anchor)]
        else:
            self.terms.append((stage.index, fisher, anchor))

    def extra_loss(self, model, batch, outputs):
        if not self.terms or self.options.ewc_lambda == 0:
            return None
        params = P.trainable(model)
        total = sum(P.quadratic_penalty(params, anchor, fisher) for _, fisher, anchor in
                    self.terms)
        return 0.5 * self.options.ewc_lambda * total

    def state_dict(self):
        tensors: P.Tensors = {}
        for k, (_, fisher, anchor) in enumerate(self.terms):
            tensors.update(P.to_cpu(fisher, f"{k}/fisher/"))
            tensors.update(P.to_cpu(anchor, f"{k}/anchor/"))
        return {"meta": {"stages": [idx for idx, _, _ in self.terms]}, "tensors": tensors}

    def load_state_dict(self, state):
        tensors = state.get("tensors", {})
        self.terms = [(int(idx), P.from_prefixed(tensors, f"{k}/fisher/"),
                       P.from_prefixed(tensors, f"{k}/anchor/"))
                      for k, idx in enumerate(state.get("meta", {}).get("stages", []))]


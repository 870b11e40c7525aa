"""A-GEM (Chaudhry et al. 2019): never let an update increase the loss on an episodic memory.

After each backward pass the gradient ``g`` of the stream batch is compared with a reference
gradient ``g_ref`` of the loss on a batch sampled from the memory of earlier stages, both
flattened over every trainable weight (LoRA factors under LoRA, all weights under full
fine-tuning). If they conflict, ``g`` is projected (the paper's update rule):

    g <- g - (g . g_ref / g_ref . g_ref) g_ref     if g . g_ref < 0,   else g unchanged.

The memory keeps earlier stages' examples under one budget (``memory_size``) with replay's
selection rules (``balanced``: equal slots per stage, like the paper's per-task episodic
memory; or ``reservoir``). ``sample_size`` examples are drawn per step, from an RNG seeded by
the run seed and the stage (the paper draws a larger batch from the memory; a language-model
default is one micro-batch). The reference gradient is computed in training mode at the
current weights: the stream gradient is saved, the gradients cleared, the memory batch
forwarded and backwarded, and the projected stream gradient written back.

Note: the paper's guarantee (first-order: the memory loss does not increase) holds for the
gradient handed to the optimizer; AdamW rescales it per weight, so for the step itself it is
approximate (as for any A-GEM run with Adam).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from everlearn.strategies.common.gradient_memory import GradientMemoryStrategy, take_grads


@dataclass
class AGEMOptions:
    memory_size: int = field(
        default=200, metadata={"help": "Examples of earlier stages kept in the episodic memory."})
    sample_size: int | None = field(
        default=None, metadata={"help": "Memory examples per reference gradient "
                                        "(default: train.batch_size)."})
    selection: str = field(
        default="balanced", metadata={"help": "'balanced' (equal per stage) or 'reservoir'."})

    def check(self) -> tuple[str, str] | None:
        if self.memory_size < 1:
            return "memory_size", f"expected an integer >= 1, got {self.memory_size}"
        if self.sample_size is not None and self.sample_size < 1:
            return "sample_size", f"expected an integer >= 1 or null, got {self.sample_size}"
        if self.selection not in ("reservoir", "balanced"):
            return "selection", f"expected 'reservoir' or 'balanced', got {self.selection!r}"
        return None


# --- the math -----------------------------------------------------------------------------
def projection_scale(dot: float, ref_sq: float) -> float:
    """The multiple of g_ref to subtract: g.g_ref / g_ref.g_ref when they conflict, else 0."""
    return dot / ref_sq if dot < 0 and ref_sq > 0 else 0.0


def project(g: torch.Tensor, g_ref: torch.Tensor) -> torch.Tensor:
    """A-GEM's projection of a flat gradient ``g`` against the reference ``g_ref``."""
    dot = float(torch.dot(g.double(), g_ref.double()))
    scale = projection_scale(dot, float(torch.dot(g_ref.double(), g_ref.double())))
    return g if scale == 0.0 else g - scale * g_ref


def project_grads(grads: list[torch.Tensor | None], refs: list[torch.Tensor | None]
                  ) -> tuple[list[torch.Tensor | None], bool]:
    """:func:`project` on the concatenation of per-parameter gradients, without concatenating.

    ``None`` stands for a zero gradient. Returns the new gradients and whether they changed.
    """
    dots, sqs = [], []
    for g, r in zip(grads, refs):
        if r is None:
            continue
        r64 = r.double()
        sqs.append((r64 * r64).sum())
        if g is not None:
            dots.append((g.double() * r64).sum())
    dot = float(torch.stack(dots).sum()) if dots else 0.0  # one device sync for all weights
    ref_sq = float(torch.stack(sqs).sum()) if sqs else 0.0
    scale = projection_scale(dot, ref_sq)
    if scale == 0.0:
        return list(grads), False
    out = []
    for g, r in zip(grads, refs):
        if r is None:
            out.append(g)
        elif g is None:
            out.append((-scale * r.double()).to(r.dtype))
        else:
            out.append((g.double() - scale * r.double()).to(g.dtype))
    return out, True


# --- the strategy -------------------------------------------------------------------------
class AGEM(GradientMemoryStrategy):
    name = "agem"
    summary = "A-GEM: project gradients that would raise the loss on an episodic memory"
    unsupported_parallel = {
        "fsdp": "it projects the flattened whole-model gradient",
        "zero": "it projects the whole-model gradient, which ZeRO keeps in flat partitions",
    }
    paper = "Chaudhry et al. 2019, Efficient Lifelong Learning with A-GEM (ICLR)"
    Options = AGEMOptions

    def reference_gradient(self, model, params) -> list[torch.Tensor | None]:
        """Gradients of the loss on a sampled memory batch (``params``' grads must be clear)."""
        size = self.options.sample_size or self.ctx.config.train.batch_size
        records = self.memory.records
        return self.memory_gradient(model, params,
                                    [records[i] for i in self.memory.sample(self._rng, size)])

    def after_backward(self, model):
        if not len(self.memory):
            return
        params = [p for p in model.parameters() if p.requires_grad]
        grads = take_grads(params)  # the stream gradient g, kept aside
        refs = self.reference_gradient(model, params)
        new, changed = project_grads(grads, refs)
        for p, g in zip(params, new):
            p.grad = g
        self.count_step(changed)


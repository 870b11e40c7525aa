"""The episodic memory A-GEM and GEM share: a memory filled at the end of each stage, a sampling
RNG per stage, and per-stage counters of steps and projected steps, all in the stage and step
checkpoints. The two differ only in how a step's gradient is projected (``after_backward``)."""

from __future__ import annotations

import torch

from everlearn.data.encode import image_inputs
from everlearn.strategies.base import Strategy
from everlearn.strategies.common.buffer import Memory, record_batch, stage_rng


class GradientMemoryStrategy(Strategy):
    """A strategy that projects gradients against an episodic memory (subclasses: A-GEM, GEM).
    Options need ``memory_size``; ``selection`` where they have one (else balanced)."""

    def __init__(self, options=None):
        super().__init__(options)
        self.memory = Memory(self.name, self.options.memory_size,
                             getattr(self.options, "selection", "balanced"))
        self.stats: dict[str, list[int]] = {}  # stage index -> [steps, projected steps]
        self._stage = 0
        self._rng = stage_rng(None, 0, self.name, "sample")

    def setup(self, ctx):
        super().setup(ctx)
        self.memory.setup(ctx)

    def before_stage(self, stage):
        self._stage = stage.index
        self._rng = stage_rng(self.ctx, stage.index, self.name, "sample")
        self.stats[str(stage.index)] = [0, 0]

    def after_stage(self, stage):
        self.memory.add(stage)

    def memory_gradient(self, model, params, records) -> list[torch.Tensor | None]:
        """Gradients of the loss on the memory ``records`` (``params``' grads must be clear;
        they are left cleared again)."""
        batch = record_batch(self.ctx, records)
        with self.ctx.autocast():
            loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         labels=batch["labels"], **image_inputs(batch)).loss
        acc = self.ctx.accelerator
        acc.backward(loss) if acc is not None else loss.backward()
        return take_grads(params)

    def count_step(self, projected: bool) -> None:
        counts = self.stats.setdefault(str(self._stage), [0, 0])
        counts[0] += 1
        counts[1] += int(projected)

    def buffer_size(self) -> int:
        return len(self.memory)

    def state_dict(self):
        return {"meta": {"memory": self.memory.state(), "stats": self.stats}, "tensors": {}}

    def load_state_dict(self, state):
        meta = state["meta"]
        self.memory.load(meta.get("memory", {}))
        self.stats = {k: list(v) for k, v in meta.get("stats", {}).items()}

    def step_state(self):
        """The sampling RNG (the default) and the projection counters, which every step moves."""
        state = super().step_state()
        state["meta"]["stats"] = self.stats
        return state

    def load_step_state(self, state):
        super().load_step_state(state)
        self.stats = {k: list(v) for k, v in state["meta"].get("stats", {}).items()}


def take_grads(params) -> list[torch.Tensor | None]:
    """The parameters' gradients, the parameters left with none (the stream gradient set aside
    while memory gradients are computed)."""
    grads = [p.grad for p in params]
    for p in params:
        p.grad = None
    return grads

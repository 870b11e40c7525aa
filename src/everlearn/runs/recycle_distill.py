"""Distillation from the old base + adapter, the ``distill`` policy of recyclable tuning
(everlearn.runs.recycle): ``lwf``'s compressed teacher and loss with a fixed teacher computed
before the base is swapped.
"""

from __future__ import annotations

import torch

from everlearn.data.encode import IGNORE, collate
from everlearn.strategies.base import RunContext
from everlearn.strategies.common import penalty as P
from everlearn.strategies.lwf import LwF, LwFOptions


class Distill(LwF):
    """``lwf``'s distillation with a fixed teacher: the old base + old adapter, its outputs
    computed before the swap (:meth:`set_teacher`), on the adapter's own training inputs."""

    name = "recycle_distill"

    def __init__(self, ctx: RunContext, temperature: float, top_k: int,
                 task_weight: float = 0.0):
        super().__init__(LwFOptions(alpha=1.0, temperature=temperature, top_k=top_k))
        self.ctx = ctx
        self.task_loss_weight = task_weight

    def set_teacher(self, records) -> None:
        """The teacher's compressed outputs at every answer position of ``records``, from the
        model as it is now."""
        self.cache = self.teacher_outputs("sft", records)

    def before_stage(self, stage) -> None:
        """The teacher stays (lwf would clear it)."""

    def train_data(self, stage, records):
        return records

    def after_stage(self, stage) -> None:
        """The teacher stays."""

    @torch.no_grad()
    def mean_kl(self, model, records) -> float:
        """Mean over the answer positions of ``records`` of the bucketed KL(teacher || model):
        >= 0, 0 when the model reproduces the teacher (at ``temperature``)."""
        ctx = self.ctx
        examples = [e for e in ctx.encoder.encode_stage("sft", records)
                    if any(lab != IGNORE for lab in e.labels)]
        device = next(model.parameters()).device
        size = ctx.config.train.batch_size
        total, count = 0.0, 0
        was_training = model.training
        model.eval()
        try:
            for s in range(0, len(examples), size):
                batch = {k: v.to(device) for k, v in
                         collate(examples[s:s + size], ctx.encoder.pad_id).items()}
                with ctx.autocast():
                    outputs = model(input_ids=batch["input_ids"],
                                    attention_mask=batch["attention_mask"])
                kl = self.extra_loss(model, batch, outputs)
                n = int(P.answer_mask(batch["labels"]).sum())
                if kl is not None:
                    T = self.options.temperature
                    total += float(kl) / (T * T) * n
                    count += n
        finally:
            model.train(was_training)
        return total / max(count, 1)

"""Learning without Forgetting: distil the previous model on the new stage's own inputs.

Li & Hoiem 2017, adapted to a language model: the "old task outputs" are the
previous model's next-token distributions at the new stage's answer positions, and the loss
gets

    alpha * T^2 * mean_positions KL(p_teacher^T || p_student^T)

over the positions that predict a supervised token (labels != -100; every position of a
packed cpt block), both distributions softened by the temperature T (the paper uses T = 2 and
weight 1). The T^2 factor (Hinton et al. 2015) keeps the gradient scale independent of T.
The paper's warm-up of a new classifier head does not apply: the vocabulary head is shared.

The teacher is the model as it is at the start of the stage (no teacher in stage 1: no-op).
Instead of a frozen copy, its outputs are computed ONCE per stage, in ``train_data`` (before
any weight moves), for every training example - forward passes only, about a third of the
cost of one epoch - and kept in compressed form: per answer position the top-``top_k`` token
ids and the log-probabilities of those tokens and of "everything else" as one bucket. The KL is
taken on those k + 1 buckets: still a proper KL (>= 0, exactly 0 when student == teacher, a
lower bound of the full KL). Memory: answer positions x (k + 1) x 12 bytes, no model copy, so
the same code serves LoRA and full fine-tuning. Entries are keyed by the example's token ids
(the teacher's output is a function of them alone), so batches find them in any order; records
added by strategies listed *after* lwf in a stack are not distilled.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from everlearn.data.encode import IGNORE, collate
from everlearn.errors import TrainingError
from everlearn.strategies.base import Strategy
from everlearn.strategies.common import penalty as P


@dataclass
class LwFOptions:
    alpha: float = field(
        default=1.0, metadata={"help": "Weight of the distillation term (lambda_o)."})
    temperature: float = field(
        default=2.0, metadata={"help": "Softmax temperature T of teacher and student."})
    top_k: int = field(
        default=50, metadata={"help": "Teacher tokens kept per position (the rest is one bucket)."})

    def check(self) -> tuple[str, str] | None:
        """(field, message) for the first invalid option, else None."""
        if self.alpha < 0:
            return "alpha", f"expected a number >= 0, got {self.alpha}"
        if self.temperature <= 0:
            return "temperature", f"expected a number > 0, got {self.temperature}"
        if self.top_k < 1:
            return "top_k", f"expected an integer >= 1, got {self.top_k}"
        return None


Key = tuple[int, ...]


class LwF(Strategy):
    name = "lwf"
    summary = "learning without forgetting: distil the previous model on the new stage's inputs"
    # FSDP: its hooks only choose data or add forward passes every rank makes alike
    unsupported_parallel = {}
    paper = "Li & Hoiem 2017, Learning without Forgetting (TPAMI)"
    Options = LwFOptions

    def __init__(self, options=None):
        super().__init__(options)
        self.has_teacher = False  # True once a stage has been trained
        self.cache: dict[Key, tuple[torch.Tensor, torch.Tensor]] = {}

    def before_stage(self, stage):
        self.cache = {}  # filled by train_data of this phase's stages

    def train_data(self, stage, records):
        if any(r.image for r in records):  # the teacher cache is keyed by token ids
            raise TrainingError(f"stage '{stage.name}': strategy 'lwf' does not support image "
                                "records (their prompts share token ids); use ewc or replay")
        if self.has_teacher and self.options.alpha > 0:
            self.cache.update(self.teacher_outputs(stage.kind, records))
        return records

    @torch.no_grad()
    def teacher_outputs(self, kind: str, records) -> dict[Key, tuple[torch.Tensor, torch.Tensor]]:
        """(top-k ids, k + 1 bucket log-probs) per answer position of every example, from the
        current weights, keyed by the example's token ids."""
        ctx = self.ctx
        model = ctx.model
        examples = [e for e in ctx.encoder.encode_stage(kind, records)
                    if any(lab != IGNORE for lab in e.labels)]
        unique = list({tuple(e.input_ids): e for e in examples}.values())
        unique.sort(key=lambda e: len(e.input_ids))  # little padding
        size = getattr(getattr(ctx.config, "train", None), "batch_size", 8) or 8
        device = next(model.parameters()).device
        out: dict[Key, tuple[torch.Tensor, torch.Tensor]] = {}
        was_training = model.training
        model.eval()
        try:
            for s in range(0, len(unique), size):
                chunk = unique[s:s + size]
                batch = {k: v.to(device) for k, v in collate(chunk, ctx.encoder.pad_id).items()}
                with ctx.autocast():
                    logits = model(input_ids=batch["input_ids"],
                                   attention_mask=batch["attention_mask"]).logits
                mask = P.answer_mask(batch["labels"])
                for i, e in enumerate(chunk):
                    idx, logp = P.teacher_buckets(logits[i, :-1][mask[i]], self.options.top_k,
                                                  self.options.temperature)
                    out[tuple(e.input_ids)] = (idx.cpu(), logp.cpu())
        finally:
            model.train(was_training)
        return out

    def extra_loss(self, model, batch, outputs):
        if not self.cache:
            return None
        mask = P.answer_mask(batch["labels"])
        kept = batch.get("logit_positions")  # the trainer computed logits at these only
        if kept is not None:
            mask = mask[:, kept]
        lengths = batch["attention_mask"].sum(-1).tolist()
        ids = batch["input_ids"]
        logits, idx, logp = [], [], []
        for i, n in enumerate(lengths):
            hit = self.cache.get(tuple(ids[i, :n].tolist()))
            if hit is None:
                continue
            student = (outputs.logits[i] if kept is not None else outputs.logits[i, :-1])[mask[i]]
            if student.shape[0] != hit[0].shape[0]:
                continue  # not the example the entry was made for (cannot happen unpadded)
            logits.append(student)
            idx.append(hit[0].to(student.device))
            logp.append(hit[1].to(student.device))
        if not logits:
            return None
        T = self.options.temperature
        kl = P.bucket_kl(torch.cat(logp), torch.cat(logits), torch.cat(idx), T)
        return self.options.alpha * T * T * kl

    def after_stage(self, stage):
        self.has_teacher = True
        self.cache = {}

    def state_dict(self):
        return {"meta": {"has_teacher": self.has_teacher}, "tensors": {}}

    def load_state_dict(self, state):
        self.has_teacher = bool(state.get("meta", {}).get("has_teacher", False))

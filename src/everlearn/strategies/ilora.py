"""I-LoRA: a fast LoRA learner trained with replay, and a slow learner that interpolates it.

Ren et al. (2024), "Analyzing and Reducing Catastrophic Forgetting in Parameter Efficient
Tuning" (arXiv 2402.18865; ICASSP 2025); the authors' code: which47/LLMCL ``method/ILORA.py``.
A dual-memory experience replay on LoRA (after CLS-ER): the *fast* (plastic) learner is the run's
LoRA adapter and trains on every step; the *slow* (stable) learner is a second copy of the same
LoRA weights that follows the fast one by parameter interpolation after every optimizer step,

    theta_s <- a * theta_s + (1 - a) * theta_f ,   a = min(1 - 1 / (j + 1), ema)

(j: the step within the stage, the authors' warm-up ``min(1 - 1/(step + 1), ema_alpha)`` on the
trainer's per-task global step; ``ema`` 0.25 as their code sets). From the second stage every
step also draws a batch of buffered earlier examples, as large as the training batch, and the
loss is the authors' (``ILoRAModel.forward``):

    L = (CE(batch; theta_f) + CE(buffer batch; theta_f)) / 2 + gamma * L_cons

    L_cons = mean over layers, positions, features of (h_f - max(h_f, h_s))^2
           = mean of relu(h_s - h_f)^2

where h_f, h_s are the hidden states (every layer's output and the embeddings, as the model's
``hidden_states``) of the buffer batch under the fast and the slow weights (the slow ones without
gradient); the code writes the target as ``where(h_f > h_s, h_f, h_s)``, whose value and gradient
are the relu form's. ``gamma`` (``consistency_weight``) 1.0 as the code's ``reg_weight``. The
slow learner is what is evaluated (the paper's inference model; ``evaluate_with: fast`` scores the
fast one instead): after each stage the model holds the slow weights (so R, the stage checkpoint
and an export are the slow learner's), and the fast weights, kept in the strategy state, are put
back before the next stage trains.

Deviations, and why:

* The buffer (reservoir, as the code's) is filled at the end of each stage with its training
  records, as ``replay`` and ``der`` do here; the code adds every training batch while it trains,
  so its replayed batches also hold examples of the current task. ``buffer_size`` defaults to 200
  (everlearn's replay budget, so methods compare at one budget); the code keeps 500.
* The slow learner starts as a copy of the fast one; the code adds a fresh adapter for it (its
  own random A, zero B) which the first interpolation mixes in at weight ``ema``.
* ``L_cons`` averages over real tokens only; the code includes padded positions.
* The slow learner is a dictionary of tensors run through ``torch.func.functional_call``, not a
  second PEFT adapter.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from everlearn.data.encode import image_inputs
from everlearn.strategies.base import Strategy
from everlearn.strategies.common.adapters import require_lora
from everlearn.strategies.common.buffer import Memory, record_batch, stage_rng
from everlearn.strategies.der import token_cross_entropy

SLOW, FAST = "slow/", "fast/"


def interpolation_factor(step: int, ema: float) -> float:
    """The weight ``a`` of the old slow weights at the ``step``-th update of a stage (1-based)."""
    return min(1.0 - 1.0 / (step + 1), ema)


def consistency_loss(fast: list[torch.Tensor], slow: list[torch.Tensor],
                     mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``relu(h_s - h_f)^2`` over layers, unmasked positions and features."""
    m = mask.to(fast[0].dtype).unsqueeze(-1)
    total = sum(((s.detach().float() - f.float()).clamp(min=0).pow(2) * m).sum()
                for f, s in zip(fast, slow))
    return total / (m.sum() * fast[0].shape[-1] * len(fast)).clamp(min=1)


@dataclass
class ILoRAOptions:
    buffer_size: int = field(default=200, metadata={
        "help": "Examples of earlier stages kept for replay (reservoir; the authors' code: 500)."})
    ema: float = field(default=0.25, metadata={
        "help": "Interpolation weight a of the old slow weights per step (the authors' "
                "ema_alpha 0.25)."})
    consistency_weight: float = field(default=1.0, metadata={
        "help": "gamma: weight of the consistency loss between fast and slow hidden states on "
                "replayed examples (the authors' reg_weight 1.0)."})
    evaluate_with: str = field(default="slow", metadata={
        "help": "The learner the matrix scores after each stage: 'slow' (the paper's) or "
                "'fast'."})

    def check(self) -> tuple[str, str] | None:
        if self.buffer_size < 1:
            return "buffer_size", f"expected an integer >= 1, got {self.buffer_size}"
        if not 0 <= self.ema < 1:
            return "ema", f"expected 0 <= x < 1, got {self.ema}"
        if self.consistency_weight < 0:
            return "consistency_weight", f"expected a number >= 0, got {self.consistency_weight}"
        if self.evaluate_with not in ("slow", "fast"):
            return "evaluate_with", f"expected 'slow' or 'fast', got {self.evaluate_with!r}"
        return None


class ILoRA(Strategy):
    name = "ilora"
    summary = ("Interpolation-based LoRA: a fast LoRA learner trained with replay and a "
               "consistency loss, a slow learner interpolated from it every step (evaluated)")
    paper = ("Ren et al. 2024, Analyzing and Reducing Catastrophic Forgetting in Parameter "
             "Efficient Tuning (arXiv 2402.18865, ICASSP 2025); code: github.com/which47/LLMCL")
    requires_finetune = "lora"
    unsupported_parallel = {"fsdp": "it keeps a second copy of the LoRA weights per rank",
                            "zero": "it swaps LoRA weights outside the optimizer"}
    Options = ILoRAOptions
    details = """
The fast learner is the run's LoRA adapter; the slow learner, a copy of its weights, is
interpolated after every optimizer step: theta_s <- a theta_s + (1 - a) theta_f with
a = min(1 - 1/(j + 1), `ema`) at step j of a stage (the authors' code, `ema_alpha` 0.25). From the
second stage each step replays a buffer batch as large as the training batch: loss =
(CE(batch) + CE(buffer batch)) / 2 + `consistency_weight` * mean relu(h_s - h_f)^2 over the hidden
states of the buffer batch (the code's MSE to `where(h_f > h_s, h_f, h_s)`). The slow learner is
evaluated, checkpointed and exported (`evaluate_with: fast` scores the fast one); the fast weights
return before the next stage trains. Deviations: the reservoir buffer is filled at the end of
each stage (the code adds every batch while training, current task included) and holds 200 by
default (the code 500); the slow learner starts as a copy of the fast one (the code: a fresh
adapter mixed in at the first step); the consistency loss skips padded positions.
"""

    def __init__(self, options=None):
        super().__init__(options)
        self.memory = Memory(self.name, self.options.buffer_size, "reservoir")
        self.slow: dict[str, torch.Tensor] = {}  # the slow learner, by parameter name
        self.fast: dict[str, torch.Tensor] = {}  # the fast learner while the model holds slow
        self.updates = 0  # interpolations in this stage (= optimizer steps taken)
        self._stepped = False  # an optimizer step happened since the last interpolation
        self._rng = stage_rng(None, 0, self.name, "batches")

    @property
    def task_loss_weight(self) -> float:
        return 0.5 if len(self.memory) else 1.0  # (CE + CE_buffer) / 2 once there is a buffer

    def setup(self, ctx) -> None:
        super().setup(ctx)
        require_lora(ctx.config, self.name)
        self.memory.setup(ctx)

    def trained(self) -> dict[str, torch.nn.Parameter]:
        """The fast learner: the model's trainable parameters."""
        return {n: p for n, p in self.ctx.model.named_parameters() if p.requires_grad}

    def before_stage(self, stage) -> None:
        params = self.trained()
        with torch.no_grad():
            for n, value in self.fast.items():
                params[n].copy_(value)
        self.fast = {}
        if not self.slow:
            self.slow = {n: p.detach().float().clone() for n, p in params.items()}
        self.updates = 0
        self._rng = stage_rng(self.ctx, stage.index, self.name, "batches")

    @torch.no_grad()
    def interpolate(self) -> None:
        """One step of the slow learner toward the fast weights as they are now."""
        self.updates += 1
        a = interpolation_factor(self.updates, self.options.ema)
        for n, p in self.trained().items():
            s = self.slow[n]
            s.mul_(a).add_(p.detach().float().to(s.device), alpha=1.0 - a)

    def after_backward(self, model) -> None:
        # Before optimizer step j the weights are those step j - 1 produced: interpolate them.
        # The first call of a stage sees the weights the previous stage ended with, which its
        # last interpolation already took (after_stage).
        if self._stepped:
            self.interpolate()
        self._stepped = True

    def extra_loss(self, model, batch, outputs):
        if not len(self.memory):
            return None
        picked = self.memory.sample(self._rng, batch["input_ids"].shape[0])
        replay = record_batch(self.ctx, [self.memory.records[i] for i in picked])
        inputs = dict(input_ids=replay["input_ids"], attention_mask=replay["attention_mask"],
                      output_hidden_states=True, **image_inputs(replay))
        params = self.trained()
        slow = {n: self.slow[n].to(p.device, p.dtype) for n, p in params.items()}
        with torch.no_grad(), self.ctx.autocast():
            slow_hidden = torch.func.functional_call(self.ctx.model, slow, (), inputs,
                                                     strict=False).hidden_states
        with self.ctx.autocast():
            out = model(**inputs)
        ce = token_cross_entropy(out.logits, replay["labels"])
        cons = consistency_loss(list(out.hidden_states), list(slow_hidden),
                                replay["attention_mask"])
        return 0.5 * ce + self.options.consistency_weight * cons

    def after_stage(self, stage) -> None:
        if self._stepped:
            self.interpolate()  # the last optimizer step's weights
        self._stepped = False
        self.memory.add(stage)
        if self.options.evaluate_with == "slow":
            params = self.trained()
            with torch.no_grad():
                self.fast = {n: p.detach().clone() for n, p in params.items()}
                for n, p in params.items():
                    p.copy_(self.slow[n])

    def buffer_size(self) -> int:
        return len(self.memory)

    # --- state ----------------------------------------------------------------------------
    def _tensors(self) -> dict[str, torch.Tensor]:
        out = {SLOW + n: t.detach().cpu().clone().contiguous() for n, t in self.slow.items()}
        out.update({FAST + n: t.detach().cpu().clone().contiguous()
                    for n, t in self.fast.items()})
        return out

    def _load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        device = next(iter(self.trained().values())).device if self.ctx is not None else "cpu"
        self.slow = {k[len(SLOW):]: v.float().to(device) for k, v in tensors.items()
                     if k.startswith(SLOW)}
        self.fast = {k[len(FAST):]: v.to(device) for k, v in tensors.items()
                     if k.startswith(FAST)}

    def state_dict(self):
        return {"meta": {"memory": self.memory.state()}, "tensors": self._tensors()}

    def load_state_dict(self, state) -> None:
        self.memory.load(state["meta"].get("memory", {}))
        self._load_tensors(state.get("tensors", {}))

    def step_state(self):
        base = super().step_state()
        meta = {**base["meta"], "updates": self.updates, "stepped": self._stepped}
        slow = {SLOW + n: t.detach().cpu().clone().contiguous() for n, t in self.slow.items()}
        return {"meta": meta, "tensors": {**base["tensors"], **slow}}

    def load_step_state(self, state) -> None:
        tensors = state.get("tensors", {})
        super().load_step_state({"meta": state.get("meta", {}),
                                 "tensors": {k: v for k, v in tensors.items()
                                             if not k.startswith(SLOW)}})
        meta = state.get("meta", {})
        self.updates = int(meta.get("updates", 0))
        self._stepped = bool(meta.get("stepped", False))
        fast = self.fast
        self._load_tensors({k: v for k, v in tensors.items() if k.startswith(SLOW)})
        self.fast = fast

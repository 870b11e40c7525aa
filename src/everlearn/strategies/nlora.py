"""N-LoRA: per-stage LoRA adapters whose updates are kept sparse, so tasks' updates collide less.

Yang et al. (2025), "Is Parameter Collision Hindering Continual Learning in LLMs?" (COLING). As
in ``inc_lora`` (and O-LoRA, whose code base N-LoRA extends), stage t adds a LoRA adapter, the
earlier adapters stay frozen and active (their deltas add up, no task id at test time), and only
the new one trains. The loss adds an L1 penalty on the new task's update (the paper's objective,
Sec. 4, "N-LoRA"; section numbers not checked against the paper's text):

    L = L_task + lambda * ||Delta W_t||_1 ,   Delta W_t = B_t A_t  (summed over adapted layers)

with PEFT's layout ``lora_B`` (out x r) times ``lora_A`` (r x in), i.e. the full out x in update
the adapter adds, without LoRA's ``alpha / r`` factor (as the authors' trainer,
PKU-YuanGroup/N-LoRA ``src/uie_trainer_lora.py``, penalises the product of the two factors
alone). Default ``lambda = 0.4``: the authors' scripts (``scripts/order_*.sh``, ``--lamda_1
0.4``); they set no orthogonality term.

Deviation: the authors' trainer multiplies the two factors as ``torch.mm(A, B)`` with PyTorch's
weight layouts (r x in times out x r), an r x r product that only exists for square layers; the
paper's penalty is on Delta W itself, which is what is computed here (and is defined for every
layer shape).

Collision (the paper's quantity, Sec. 3): two tasks collide at a parameter where both updates are
non-zero. Trained float updates are never exactly zero (Adam keeps every entry moving by about
its learning rate), so an entry counts as non-zero when ``|Delta W[j, k]| > collision_eps``, an
absolute threshold (the paper states none; a threshold relative to each matrix's largest entry
was tried and rejected: a strong penalty shrinks the whole update, its largest entry included,
so the relative count stays flat). The collision rate of stage t with an earlier stage i is the
share of a layer's entries where both are non-zero, averaged over adapted layers and earlier
stages; it is measured at the end of every stage from the second and reported in results.json
(``strategy_metrics.nlora.collision_rate``) with the new update's density (share of non-zero
entries) and its L1 norm (the penalised quantity, for the scale ``collision_eps`` is read on).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from everlearn.strategies.common.adapters import adapter_parameters
from everlearn.strategies.inc_lora import IncLoRA


def delta_weights(model, name: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Adapter ``name``'s ``(lora_B, lora_A)`` weights by adapted module."""
    a_marker, b_marker = f".lora_A.{name}.", f".lora_B.{name}."
    found: dict[str, dict[str, torch.Tensor]] = {}
    for pname, p in adapter_parameters(model, name).items():
        for marker, key in ((a_marker, "A"), (b_marker, "B")):
            if marker in pname:
                found.setdefault(pname.split(marker)[0], {})[key] = p
    return {m: (ab["B"], ab["A"]) for m, ab in found.items() if "A" in ab and "B" in ab}


def l1_penalty(pairs) -> torch.Tensor:
    """Sum over layers of ``||B A||_1`` (entry-wise), in fp32."""
    return sum((b.float() @ a.float()).abs().sum() for b, a in pairs)


def nonzero_mask(delta: torch.Tensor, eps: float) -> torch.Tensor:
    """Entries of ``delta`` whose magnitude exceeds ``eps`` (the ones that count as updated)."""
    return delta.abs() > eps


def collision_rate(first: torch.Tensor, second: torch.Tensor, eps: float) -> float:
    """Share of entries where both updates exceed ``eps`` in magnitude."""
    both = nonzero_mask(first, eps) & nonzero_mask(second, eps)
    return float(both.double().mean())


@dataclass
class NLoRAOptions:
    lambda_1: float = field(default=0.4, metadata={
        "help": "Weight of the L1 norm of the new adapter's update B A (the authors' scripts: "
                "0.4)."})
    collision_eps: float = field(default=1e-4, metadata={
        "help": "An update's entry counts as non-zero (for the reported collision rate and "
                "density) when its magnitude exceeds this (absolute)."})

    def check(self) -> tuple[str, str] | None:
        if self.lambda_1 < 0:
            return "lambda_1", f"expected a number >= 0, got {self.lambda_1}"
        if self.collision_eps < 0:
            return "collision_eps", f"expected a number >= 0, got {self.collision_eps}"
        return None


class NLoRA(IncLoRA):
    name = "nlora"
    summary = ("per-stage LoRA adapters with an L1 penalty on each new update B A, so stages' "
               "updates collide less (all active at test time)")
    unsupported_parallel = {"fsdp": "it adds a LoRA adapter per stage"}
    paper = ("Yang et al. 2025, Is Parameter Collision Hindering Continual Learning in LLMs? "
             "(COLING); code: github.com/PKU-YuanGroup/N-LoRA")
    Options = NLoRAOptions
    details = """
As `inc_lora`, plus the paper's L1 penalty on the new stage's update: loss = task loss +
`lambda_1` * sum over adapted layers of ||B_t A_t||_1 (PEFT layout, the full out x in update,
without LoRA's alpha/r; default 0.4, the authors' scripts). Deviation: the authors' trainer
multiplies the factors as `torch.mm(A, B)` in PyTorch's layouts, an r x r product defined only for
square layers; the paper penalises Delta W itself, as here. Reported per stage from the second
(`strategy_metrics.nlora.collision_rate`): the collision rate with the earlier updates (the share
of entries both updates touch; an entry counts as touched when its magnitude exceeds
`collision_eps`, an absolute threshold the paper does not state), the update's density and its L1
norm.
"""

    def __init__(self, options=None):
        super().__init__(options)
        self._pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
        # Per stage name (from the second): collision rate with the earlier stages, density.
        self.collisions: dict[str, dict[str, float]] = {}

    def before_stage(self, stage) -> None:
        super().before_stage(stage)
        self._pairs = list(delta_weights(self.model, self.names[-1]).values())

    def extra_loss(self, model, batch, outputs):
        if self.options.lambda_1 == 0 or not self._pairs:
            return None
        device = self._pairs[0][0].device
        with torch.autocast(device_type=device.type, enabled=False):  # a small fp32 term
            return self.options.lambda_1 * l1_penalty(self._pairs)

    def after_stage(self, stage) -> None:
        super().after_stage(stage)
        self._pairs = []
        if len(self.names) > 1:
            self.collisions[stage.name] = self.measure()

    @torch.no_grad()
    def measure(self) -> dict[str, float]:
        """The newest update's mean collision rate with each earlier one, its density and
        L1 norm."""
        eps = self.options.collision_eps
        deltas = {n: {m: (b.double() @ a.double()) for m, (b, a) in
                      delta_weights(self.model, n).items()} for n in self.names}
        new = deltas[self.names[-1]]
        rates = [collision_rate(deltas[n][m], d, eps)
                 for n in self.names[:-1] for m, d in new.items()]
        density = [float(nonzero_mask(d, eps).double().mean()) for d in new.values()]
        return {"collision_rate": sum(rates) / len(rates),
                "density": sum(density) / len(density),
                "l1": float(sum(d.abs().sum() for d in new.values()))}

    def metrics(self):
        """Per stage from the second: collision rate with the earlier updates, and density."""
        return {"collision_rate": {k: dict(v) for k, v in self.collisions.items()}} \
            if self.collisions else {}

    def extra_meta(self):
        return {"collisions": {k: dict(v) for k, v in self.collisions.items()}}

    def load_extra(self, meta, tensors):
        self.collisions = {k: dict(v) for k, v in meta.get("collisions", {}).items()}

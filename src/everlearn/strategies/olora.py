"""O-LoRA: per-stage LoRA adapters trained in subspaces orthogonal to the earlier stages'.

Wang et al. (2023), "Orthogonal Subspace Learning for Language Model Continual Learning". As in
``inc_lora``, stage t adds a LoRA adapter, earlier adapters stay frozen and active (their deltas
add up, so no task id is needed at test time), and only the new one trains. The loss adds

    lambda_1 * sum_{i<t} sum_{layers} L_orth(A_i, A_t)  +  lambda_2 * sum_{P in (A_t, B_t)} ||P||_F

Which matrix carries the subspace: in PEFT, ``lora_A`` (r x in_features) is the down-projection;
its rows span the input directions the adapter reads, and the paper (which writes A as the
in_features x r factor) constrains exactly this factor. With PEFT's row layout the overlap matrix
is ``O = A_i A_t^T`` (r x r) and ``L_orth = sum_{j,k} O[j,k]^2`` (the paper's L_orth, eq. 5), or
``sum_{j,k} |O[j,k]|`` with ``orth_norm: abs`` (what the official code computes:
``torch.abs(torch.mm(lora_A, loranew_A.T)).sum()`` in cmnfriend/O-LoRA src/uie_trainer_lora.py,
where lora_A stacks every earlier task's A by rows, as ``previous`` does here). The L2 term follows
that code too (the unsquared norm of each new matrix). Defaults are the authors' scripts
(scripts/order_*.sh): ``lambda_1 = 0.5``, ``lambda_2 = 0``.

Reported: the overlap between the new adapter's subspace and each earlier one's at the start and
the end of every stage, as the mean over (layer, earlier adapter) of ``||A_i A_t^T||_F^2`` (the
penalty's own quantity) and of the scale-free ``||Q_i^T Q_t||_F^2 / r`` (Q: orthonormal bases of
the row spaces; 0 = orthogonal subspaces, 1 = the same subspace), in the state's meta.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from everlearn.strategies.common.adapters import adapter_parameters, lora_A_matrices
from everlearn.strategies.inc_lora import IncLoRA

ORTH_NORMS = ("squared", "abs")


def orthogonality_loss(previous: torch.Tensor, new: torch.Tensor,
                       norm: str = "squared") -> torch.Tensor:
    """``L_orth`` between earlier adapters' ``lora_A`` rows (stacked: R x d) and the new one's
    (r x d): the squared (paper) or absolute (official code) entries of ``previous @ new.T``."""
    overlap = previous @ new.T
    return overlap.pow(2).sum() if norm == "squared" else overlap.abs().sum()


def l2_loss(params) -> torch.Tensor:
    """Sum of the Frobenius norms of the new adapter's matrices (the official code's term)."""
    return sum(torch.linalg.norm(p.float()) for p in params)


def subspace_overlap(a: torch.Tensor, b: torch.Tensor) -> float:
    """Scale-free overlap of the row spaces of ``a`` (r_a x d) and ``b`` (r_b x d):
    ``||Q_a^T Q_b||_F^2 / min(r_a, r_b)`` = the mean squared cosine of their principal angles."""
    qa = torch.linalg.qr(a.detach().double().T).Q
    qb = torch.linalg.qr(b.detach().double().T).Q
    return float((qa.T @ qb).pow(2).sum() / min(qa.shape[1], qb.shape[1]))


@dataclass
class OLoRAOptions:
    lambda_1: float = field(default=0.5, metadata={
        "help": "Weight of the orthogonality loss between the new adapter's lora_A and every "
                "earlier one's (the authors' scripts: 0.5)."})
    lambda_2: float = field(default=0.0, metadata={
        "help": "Weight of the L2 norm of the new adapter's weights (the authors' scripts: 0)."})
    orth_norm: str = field(default="squared", metadata={
        "help": "'squared': sum of squared entries of A_i A_t^T (the paper's L_orth); 'abs': "
                "sum of absolute entries (the official code)."})

    def check(self) -> tuple[str, str] | None:
        """(field, message) for the first invalid option, else None."""
        if self.lambda_1 < 0:
            return "lambda_1", f"expected a number >= 0, got {self.lambda_1}"
        if self.lambda_2 < 0:
            return "lambda_2", f"expected a number >= 0, got {self.lambda_2}"
        if self.orth_norm not in ORTH_NORMS:
            return "orth_norm", f"expected 'squared' or 'abs', got {self.orth_norm!r}"
        return None


class OLoRA(IncLoRA):
    name = "olora"
    summary = ("per-stage LoRA adapters, each new lora_A kept orthogonal to the earlier ones' "
               "(all active at test time)")
    unsupported_parallel = {"fsdp": "it adds a LoRA adapter per stage"}
    paper = ("Wang et al. 2023, Orthogonal Subspace Learning for Language Model Continual "
             "Learning (EMNLP Findings); code: github.com/cmnfriend/O-LoRA")
    Options = OLoRAOptions

    def __init__(self, options=None):
        super().__init__(options)
        # Per stage name: overlap with the earlier adapters at the start and end of its training.
        self.overlaps: dict[str, dict[str, float]] = {}
        self._pairs: list[tuple[torch.Tensor, torch.nn.Parameter]] = []
        self._new: list[torch.nn.Parameter] = []

    def before_stage(self, stage) -> None:
        super().before_stage(stage)
        new, earlier = self.names[-1], self.names[:-1]
        self._new = list(adapter_parameters(self.model, new).values())
        new_A = lora_A_matrices(self.model, new)
        earlier_A = [lora_A_matrices(self.model, n) for n in earlier]
        # Earlier adapters are frozen: stack their A rows once per module (as the official code's
        # lora_A holds every earlier task's rows), detached.
        self._pairs = [(torch.cat([e[key].detach() for e in earlier_A]), a)
                       for key, a in new_A.items()] if earlier else []
        if earlier:
            raw, normalized = self.overlap()
            self.overlaps[stage.name] = {"start": raw, "start_normalized": normalized}

    def extra_loss(self, model, batch, outputs):
        o = self.options
        use_orth = o.lambda_1 > 0 and bool(self._pairs)
        if not use_orth and o.lambda_2 == 0:
            return None
        device = self._new[0].device
        with torch.autocast(device_type=device.type, enabled=False):  # a small fp32 term
            total = torch.zeros((), device=device)
            if use_orth:
                total = total + o.lambda_1 * sum(
                    orthogonality_loss(prev.float(), new.float(), o.orth_norm)
                    for prev, new in self._pairs)
            if o.lambda_2 > 0:
                total = total + o.lambda_2 * l2_loss(self._new)
        return total

    def after_stage(self, stage) -> None:
        super().after_stage(stage)
        if stage.name in self.overlaps:
            raw, normalized = self.overlap()
            self.overlaps[stage.name].update(end=raw, end_normalized=normalized)
        self._pairs, self._new = [], []

    def metrics(self):
        """Subspace overlap of each stage's adapter with the earlier ones, at its start and
        end (raw ||A_i A_t^T||_F^2 and scale-free, 0 = orthogonal, 1 = same subspace)."""
        return {"subspace_overlap": {k: dict(v) for k, v in self.overlaps.items()}} \
            if self.overlaps else {}

    def overlap(self) -> tuple[float, float]:
        """(mean ||A_i A_t^T||_F^2, mean scale-free overlap) of the newest adapter against each
        earlier one, over adapted layers; (0, 0) with a single adapter."""
        names = self.names
        if len(names) < 2:
            return 0.0, 0.0
        new_A = lora_A_matrices(self.model, names[-1])
        raw, normalized, n = 0.0, 0.0, 0
        for earlier in names[:-1]:
            for key, a in lora_A_matrices(self.model, earlier).items():
                b = new_A[key].detach().double()
                raw += float((a.detach().double() @ b.T).pow(2).sum())
                normalized += subspace_overlap(a, b)
                n += 1
        return raw / n, normalized / n

    def extra_meta(self):
        return {"overlaps": {k: dict(v) for k, v in self.overlaps.items()}}

    def load_extra(self, meta, tensors):
        self.overlaps = {k: dict(v) for k, v in meta.get("overlaps", {}).items()}

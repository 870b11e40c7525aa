"""Pure weight-merging math on ``{name: tensor}`` dicts (no model, no hooks), for ``merge``.

A *task vector* is ``tau = theta_finetuned - theta_start`` (Ilharco et al. 2023). The functions
here work the same on full weights and on dense LoRA deltas: pass ``base=None`` to mean "all
zeros" (the LoRA case, where the merged quantity is itself a delta on the frozen base).

- ``interpolate``: ``(1 - ratio) * prev + ratio * new`` (weight averaging: model soups,
  Wortsman et al. 2022; model averaging against the alignment tax, Lin et al. 2024).
- ``task_arithmetic``: ``base + scale * sum_t tau_t``.
- TIES-Merging (Yadav et al. 2023), its three steps as three functions: ``trim_top_k`` keeps
  the top ``density`` share of each task vector by magnitude (the rest set to 0),
  ``elect_sign`` takes the sign of the summed trimmed values (total mass), ``disjoint_mean``
  averages, per parameter, only the non-zero values whose sign agrees with the elected one;
  ``ties`` returns ``base + scale * merged``.
"""

from __future__ import annotations

import torch

Tensors = dict[str, torch.Tensor]


def _get(d: Tensors | None, key: str, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(like) if d is None else d[key]


def interpolate(prev: Tensors | None, new: Tensors, ratio: float) -> Tensors:
    """``(1 - ratio) * prev + ratio * new``: ratio 0 keeps ``prev``, ratio 1 gives ``new``."""
    # torch.lerp is exact at both ends (it computes from the nearer endpoint).
    return {k: torch.lerp(_get(prev, k, v), v, float(ratio)) for k, v in new.items()}


def task_arithmetic(base: Tensors | None, taus: list[Tensors], scale: float) -> Tensors:
    """``base + scale * sum_t tau_t`` (Ilharco et al. 2023, eq. of task addition)."""
    if not taus:
        raise ValueError("task_arithmetic needs at least one task vector")
    out = {}
    for k in taus[0]:
        total = taus[0][k].clone()
        for tau in taus[1:]:
            total += tau[k]
        out[k] = _get(base, k, total) + scale * total
    return out


def keep_count(n: int, density: float) -> int:
    """How many of ``n`` values TIES keeps at ``density`` (round half up, at least one)."""
    return min(n, max(1, int(density * n + 0.5)))


def trim_top_k(tau: Tensors, density: float, scope: str = "model") -> Tensors:
    """Keep exactly the ``density`` share of largest-magnitude values, zero the rest.

    ``scope='model'`` ranks every value of the task vector together (the TIES authors' code
    flattens the whole model); ``'tensor'`` keeps the share within each tensor (less memory).
    Exactly ``keep_count(n, density)`` values survive even when magnitudes tie.
    """
    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], got {density}")
    if scope == "tensor":
        return {k: trim_top_k({k: v}, density, "model")[k] for k, v in tau.items()}
    if scope != "model":
        raise ValueError(f"scope must be 'model' or 'tensor', got {scope!r}")
    keys = list(tau)
    flat = torch.cat([tau[k].reshape(-1) for k in keys])
    k = keep_count(flat.numel(), density)
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    mask[torch.topk(flat.abs(), k, sorted=False).indices] = True
    out, start = {}, 0
    for key in keys:
        n = tau[key].numel()
        m = mask[start:start + n].view_as(tau[key])
        out[key] = torch.where(m, tau[key], torch.zeros_like(tau[key]))
        start += n
    return out


def elect_sign(trimmed: list[torch.Tensor]) -> torch.Tensor:
    """Per parameter, the sign (+1, -1, or 0 when the mass is exactly 0) of the summed values."""
    return torch.sign(torch.stack(trimmed).sum(dim=0))


def disjoint_mean(trimmed: list[torch.Tensor], sign: torch.Tensor) -> torch.Tensor:
    """Per parameter, the mean of the non-zero values whose sign equals ``sign`` (0 if none)."""
    stacked = torch.stack(trimmed)
    agree = (torch.sign(stacked) == sign.unsqueeze(0)) & (stacked != 0)
    total = torch.where(agree, stacked, torch.zeros_like(stacked)).sum(dim=0)
    return total / agree.sum(dim=0).clamp(min=1).to(stacked.dtype)


def ties_merge(trimmed: list[Tensors]) -> Tensors:
    """The merged task vector of already trimmed task vectors: elect, then disjoint mean."""
    if not trimmed:
        raise ValueError("ties_merge needs at least one task vector")
    out = {}
    for k in trimmed[0]:
        values = [t[k] for t in trimmed]
        out[k] = disjoint_mean(values, elect_sign(values))
    return out


def ties(base: Tensors | None, taus: list[Tensors], density: float, scale: float,
         scope: str = "model") -> Tensors:
    """TIES-Merging end to end: ``base + scale * disjoint_mean(elect(trim(tau_t)))``."""
    merged = ties_merge([trim_top_k(t, density, scope) for t in taus])
    return {k: _get(base, k, v) + scale * v for k, v in merged.items()}


def lora_delta(lora_a: torch.Tensor, lora_b: torch.Tensor, scaling: float,
               fan_in_fan_out: bool = False) -> torch.Tensor:
    """The dense weight delta of a LoRA pair, as PEFT's ``get_delta_weight``: ``scaling * B @ A``
    in the base weight's layout, so (in, out) when ``fan_in_fan_out`` (a ``Conv1D``)."""
    delta = (lora_b.float() @ lora_a.float()) * scaling
    return delta.T if fan_in_fan_out else delta


def to_sparse(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(flat indices, values) of the non-zero entries: how trimmed task vectors are stored."""
    flat = t.reshape(-1)
    idx = torch.nonzero(flat, as_tuple=True)[0]
    return idx, flat[idx].clone()


def from_sparse(idx: torch.Tensor, values: torch.Tensor, shape) -> torch.Tensor:
    out = torch.zeros(torch.Size(shape).numel(), dtype=values.dtype, device=values.device)
    out[idx.long()] = values
    return out.view(shape)

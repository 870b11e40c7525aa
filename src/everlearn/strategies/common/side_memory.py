"""WISE's side-memory math as pure functions on tensors (no model, no hooks), for ``wise``.

Wang et al. 2024, "WISE: Rethinking the Knowledge Memory for Lifelong Model Editing". A side
memory is a copy W_v' of one MLP's value matrix (down_proj), held here as its difference from
the main memory, delta = W_v' - W_v, so its output is ``a W_v^T + a delta^T`` for the
activation ``a`` entering the down-projection.

- ``activation_scores``: the routing activation score of each input,
  Delta_act(x) = ||A(x) (W_v' - W_v)||_2, per token, averaged over the input's tokens;
- ``margin_loss``: the routing loss L_a = ReLU(Delta_act(x_i) - alpha) +
  ReLU(beta - Delta_act(x_e)) + ReLU(gamma - (Delta_act(x_e) - Delta_act(x_i))), edits x_e
  above beta, irrelevant inputs x_i below alpha, and a gap of at least gamma between them;
- ``choose_memory``: per input, the side memory with the highest score above its threshold
  epsilon, or -1 (the main memory) when no score exceeds its threshold;
- ``subspace_mask``: a shard's random gradient mask of density rho;
- ``merge_shards``: TIES-Merging of the shards' deltas (everlearn's TIES,
  strategies/common/merging.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from everlearn.strategies.common.merging import ties


def activation_scores(act: torch.Tensor, delta: torch.Tensor, mask: torch.Tensor
                      ) -> torch.Tensor:
    """Delta_act of each input of a batch: ``act`` (batch, tokens, d_in) enters the
    down-projection, ``delta`` (d_out, d_in) is W_v' - W_v, ``mask`` (batch, tokens) marks the
    real tokens (0 = padding). The mean over the real tokens of ||a_t delta^T||_2."""
    norms = F.linear(act.to(delta.dtype), delta).norm(dim=-1)
    weight = mask.to(norms.dtype)
    return (norms * weight).sum(-1) / weight.sum(-1).clamp(min=1.0)


def margin_loss(edit_scores: torch.Tensor, irrelevant_scores: torch.Tensor, alpha: float,
                beta: float, gamma: float) -> torch.Tensor:
    """L_a: irrelevant inputs' scores below ``alpha``, edits' above ``beta``, and every edit at
    least ``gamma`` above every irrelevant input (each hinge averaged over its pairs)."""
    loss = F.relu(beta - edit_scores).mean()
    if irrelevant_scores.numel():
        gap = edit_scores.unsqueeze(1) - irrelevant_scores.unsqueeze(0)
        loss = loss + F.relu(irrelevant_scores - alpha).mean() + F.relu(gamma - gap).mean()
    return loss


def choose_memory(scores: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """Per input (column of ``scores``, shape (memories, batch)), the index of the memory
    whose score is highest among those above their threshold; -1 when none is above."""
    above = scores > thresholds.unsqueeze(1)
    best = torch.where(above, scores, torch.full_like(scores, float("-inf"))).argmax(dim=0)
    return torch.where(above.any(dim=0), best, torch.full_like(best, -1))


def subspace_mask(shape: torch.Size | tuple[int, ...], density: float, seed: int
                  ) -> torch.Tensor:
    """A random 0/1 mask (bool) in which each entry is 1 with probability ``density``, the
    same for the same ``seed`` on every machine (drawn on the CPU)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(tuple(shape), generator=gen) < density


def merge_shards(deltas: list[torch.Tensor], density: float, scale: float) -> torch.Tensor:
    """One side memory from several shards: TIES (trim each delta to its top ``density`` by
    magnitude, elect the sign, disjoint mean) times ``scale``, on the zero base (the deltas
    are differences from the main memory)."""
    taus = [{"delta": d.float()} for d in deltas]
    return ties(None, taus, density, scale)["delta"]

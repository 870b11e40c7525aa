"""The closed-form weight updates of the locate-then-edit editors (ROME, MEMIT, AlphaEdit), as
pure functions on tensors, apart from the hooks that gather keys and values from a model.

Notation (the papers'): an MLP down-projection ``W`` (d_out x d_in) maps a key k (its input, the
MLP's hidden activation at a token) to a value v = W k (the MLP's output). ``C`` is the
uncentred second moment E[k k^T] of keys on a general text corpus (the "preserved knowledge").
Keys are columns: ``K`` is d_in x n, residuals ``R`` are d_out x n. Everything is float32 (or
float64 where the caller passes it); the caller casts the update to the weight's dtype.
"""

from __future__ import annotations

import math

import torch


def regularised(cov: torch.Tensor, ridge: float) -> torch.Tensor:
    """``cov + ridge * (tr(cov) / d) * I``: a covariance estimated on fewer tokens than its
    dimension is singular, and ROME's and MEMIT's formulas invert it (a deviation from the
    papers, which estimate it on 100,000 Wikipedia samples; ``ridge = 0`` turns it off)."""
    if ridge <= 0:
        return cov
    d = cov.shape[0]
    scale = float(torch.trace(cov)) / d if d else 0.0
    return cov + (ridge * (scale if scale > 0 else 1.0)) * torch.eye(d, dtype=cov.dtype,
                                                                      device=cov.device)


def rome_update(weight: torch.Tensor, cov: torch.Tensor, key: torch.Tensor,
                value: torch.Tensor) -> torch.Tensor:
    """ROME's rank-one update (Meng et al. 2022, Eq. 2): minimise ||W' K - V|| subject to
    W' k* = v*, whose solution is W' = W + Lambda (C^-1 k*)^T with
    Lambda = (v* - W k*) / ((C^-1 k*)^T k*). Returns the update W' - W (d_out x d_in)."""
    key = key.reshape(-1).to(cov.dtype)
    left = torch.linalg.solve(cov, key)          # C^-1 k*
    denom = torch.dot(left, key)
    residual = value.reshape(-1).to(cov.dtype) - weight.to(cov.dtype) @ key
    return torch.outer(residual / denom, left)


def memit_update(keys: torch.Tensor, residuals: torch.Tensor, cov: torch.Tensor,
                 mom2_weight: float) -> torch.Tensor:
    """MEMIT's batched update of one layer (Meng et al. 2023, Eq. 14):
    Delta = R K^T (lambda C0 + K K^T)^-1, with C0 the keys' second moment and lambda
    (``mom2_weight``) the weight of the preserved keys against the edits' (the authors' code's
    ``mom2_update_weight``; the paper folds it into its C0 = lambda E[k k^T], Eq. 15).
    ``keys`` d_in x n, ``residuals`` d_out x n (this layer's share of the residual, Eq. 20).
    Returns Delta (d_out x d_in)."""
    keys = keys.to(cov.dtype)
    system = mom2_weight * cov + keys @ keys.T
    adjusted = torch.linalg.solve(system, keys)  # (lambda C0 + K K^T)^-1 K, d_in x n
    return residuals.to(cov.dtype) @ adjusted.T


def null_space_projector(cov: torch.Tensor, threshold: float) -> tuple[torch.Tensor, int]:
    """AlphaEdit's projection onto the null space of the preserved keys K0 (Fang et al. 2025,
    Sec. 3.2, Eq. 8-9): the eigenvectors U of K0 K0^T (here its mean E[k k^T], the same
    matrix up to a factor) whose eigenvalues are below ``threshold`` span the (approximate)
    null space, and P = U_hat U_hat^T. Returns (P, dimension of the null space)."""
    sym = (cov + cov.T) / 2
    eigvals, eigvecs = torch.linalg.eigh(sym)
    small = eigvecs[:, eigvals < threshold]
    return small @ small.T, int(small.shape[1])


def alphaedit_update(keys: torch.Tensor, residuals: torch.Tensor, projector: torch.Tensor,
                     previous: torch.Tensor, l2: float) -> torch.Tensor:
    """AlphaEdit's update of one layer: Delta = R K1^T P (K_p K_p^T P + K1 K1^T P + alpha I)^-1
    (Fang et al. 2025, Sec. 3.3, Eq. 14; alpha = ``l2``, 1 in the paper's Eq. 14,
    ``L2`` in its code), where ``previous`` = K_p K_p^T accumulates the keys of earlier edits
    so later edits keep them. Since P K0 = 0 for a preserved key, Delta K0 = 0: the update
    leaves the preserved keys' outputs unchanged. Solved as the paper's code does:
    Delta^T = (P (K1 K1^T + K_p K_p^T) + alpha I)^-1 P K1 R^T."""
    keys = keys.to(projector.dtype)
    d = projector.shape[0]
    system = projector @ (keys @ keys.T + previous.to(projector.dtype)) + l2 * torch.eye(
        d, dtype=projector.dtype, device=projector.device)
    rhs = projector @ keys @ residuals.to(projector.dtype).T
    return torch.linalg.solve(system, rhs).T


# --- which layers ---------------------------------------------------------------------------


def rome_layer(depth: int) -> int:
    """ROME's layer from the depth: round(depth / 6), the share of the papers' choices for
    Llama-7B (5 of 32) and GPT-J (5 of 28); SmolLM2-135M (30 layers): 5."""
    return max(0, min(depth - 1, math.floor(depth / 6 + 0.5)))


def memit_layers(depth: int) -> list[int]:
    """MEMIT's (and AlphaEdit's) layer range from the depth: round(depth / 8) ..
    round(depth / 4), the shares of AlphaEdit's Llama3-8B choice (4..8 of 32), near MEMIT's
    GPT-J one (3..8 of 28); SmolLM2-135M (30 layers): 4..8."""
    first = max(0, min(depth - 1, math.floor(depth / 8 + 0.5)))
    last = max(first, min(depth - 1, math.floor(depth / 4 + 0.5)))
    return list(range(first, last + 1))

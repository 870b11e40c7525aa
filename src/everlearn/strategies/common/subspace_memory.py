"""A DualGPM-style memory of the input subspace earlier stages used, one per adapted layer.

GPM (Saha et al. 2021, "Gradient Projection Memory for Continual Learning", ICLR) keeps, per
layer, an orthonormal basis M of the space the earlier tasks' inputs span (a linear layer's
weight gradient lies in the span of its inputs, so this is also their gradient space). DualGPM
(Liang & Li 2023, "Adaptive Plasticity Improvement for Continual Learning", CVPR) stores whichever
is smaller: M itself (``remove``: the earlier space is M) or a basis of its orthogonal complement
(``retain``: the earlier space is the complement of M). InfLoRA (``strategies.inflora``) designs
each new adapter inside the space this memory leaves free.

The rules follow the InfLoRA authors' ``update_DualGPM`` (liangyanshuo/InfLoRA
``methods/inflora.py``), on a layer's uncentred input covariance ``C`` (in x in, the mean of
x x^T over tokens) as that code does: after the first stage the k leading singular vectors of C
whose cumulative share of the energy sum(S^2) stays below ``threshold`` (at least one; GPM's
criterion, its Eq. 5, counted as that code counts, without GPM's +1); after
later stages, the directions of C's part outside the earlier space that are needed to reach that
share of C's total energy (GPM's Eq. 8-9), added to M (``remove``) or taken out of the complement
(``retain``). A ``remove`` basis with more than half the dimensions becomes ``retain``. Deviation:
on the first stage a basis of k >= in/2 directions is stored as its complement, which is what the
authors' final conversion does; their first-stage branch labels ``U[:, :k]`` itself ``retain`` (and
their own later assertion rejects that).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LayerSpace:
    """One layer's memory: ``basis`` (in x k, orthonormal columns) and its ``kind``."""

    basis: torch.Tensor
    kind: str  # "remove": the earlier space is span(basis); "retain": its orthogonal complement

    def earlier_projection(self) -> torch.Tensor:
        """The orthogonal projection onto the earlier stages' space (in x in)."""
        inside = self.basis @ self.basis.T
        if self.kind == "remove":
            return inside
        return torch.eye(inside.shape[0], dtype=inside.dtype, device=inside.device) - inside

    def free_part(self, cov: torch.Tensor) -> torch.Tensor:
        """``cov`` projected onto the space the earlier stages left free (the code's
        ``cur_matrix - M M^T cur_matrix`` for ``remove``, ``M M^T cur_matrix`` for ``retain``)."""
        mm = self.basis @ self.basis.T @ cov
        return cov - mm if self.kind == "remove" else mm


def _energy_count(s: torch.Tensor, threshold: float) -> int:
    ratio = s.pow(2) / s.pow(2).sum()
    return int((torch.cumsum(ratio, 0) < threshold).sum())


def first_space(cov: torch.Tensor, threshold: float) -> LayerSpace:
    """The memory after the first stage (GPM Eq. 5 on the covariance)."""
    u, s, _ = torch.linalg.svd(cov, full_matrices=False)
    k = max(_energy_count(s, threshold), 1)
    return normalised(LayerSpace(u[:, :k], "remove"))


def grown_space(space: LayerSpace, cov: torch.Tensor, threshold: float) -> LayerSpace:
    """The memory after a later stage: the directions of ``cov`` outside the earlier space
    needed to bring the captured energy share to ``threshold`` join it (GPM Eq. 8-9)."""
    total = torch.linalg.svdvals(cov).pow(2).sum()
    u, s, _ = torch.linalg.svd(space.free_part(cov), full_matrices=False)
    ratio = s.pow(2) / total
    if space.kind == "remove":
        captured = float((total - s.pow(2).sum()) / total)
        r = 0
        while r < len(ratio) and captured < threshold:
            captured += float(ratio[r])
            r += 1
        if r == 0:
            return space
        basis = torch.cat([space.basis, u[:, :r]], dim=1)[:, : cov.shape[0]]
        return normalised(LayerSpace(basis, "remove"))
    free = float(s.pow(2).sum() / total)  # energy still outside the earlier space
    r = 0
    while r < len(ratio) and free >= 1 - threshold:
        free -= float(ratio[r])
        r += 1
    if r == 0:
        return space
    taken = space.basis - u[:, :r] @ (u[:, :r].T @ space.basis)
    keep = space.basis.shape[1] - r
    return LayerSpace(torch.linalg.svd(taken, full_matrices=True)[0][:, :keep], "retain")


def normalised(space: LayerSpace) -> LayerSpace:
    """A ``remove`` basis over half the dimensions is stored as its complement (``retain``)."""
    n, k = space.basis.shape
    if space.kind == "remove" and k > n / 2:
        u = torch.linalg.svd(space.basis, full_matrices=True)[0]
        return LayerSpace(u[:, k:], "retain")
    return space


def update(space: LayerSpace | None, cov: torch.Tensor, threshold: float) -> LayerSpace:
    """The memory after a stage whose inputs have covariance ``cov`` (float64)."""
    return first_space(cov, threshold) if space is None else grown_space(space, cov, threshold)

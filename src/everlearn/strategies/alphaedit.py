"""AlphaEdit: MEMIT's update projected onto the null space of the preserved knowledge.

Fang et al. 2025, "AlphaEdit: Null-Space Constrained Knowledge Editing for Language Models"
(ICLR). The layers, keys, target values z_i and the residual divided over the remaining
layers are MEMIT's (:mod:`everlearn.strategies.memit`); the update of each layer differs:

* P, the projection onto the null space of the preserved keys K0 (Sec. 3.2, Eq. 8-9): the
  eigenvectors of K0 K0^T (here the corpus keys' second moment E[k k^T], cached in the run
  directory like MEMIT's C) whose eigenvalues are below ``null_space_threshold``,
  P = U_hat U_hat^T, so that Delta P K0 = 0 (Eq. 10);
* the update (Sec. 3.3: the objective of Eq. 12, its closed form Eq. 14):
  Delta = R K1^T P (K_p K_p^T P + K1 K1^T P + alpha I)^-1
  with K1 this batch's keys, alpha = ``l2`` and K_p K_p^T the sum of the keys of every earlier
  batch (after it was written), so that later edits keep earlier ones. Because P K0 = 0,
  Delta K0 = 0: the outputs for preserved keys do not change, which is what keeps long
  sequences of edits from degrading the model. The preserved-knowledge term of MEMIT
  (lambda C0; the paper's Eq. 15 writes MEMIT's solution for comparison) is gone: the
  projection replaces it.

K_p K_p^T of every edited layer is in the strategy state (stage checkpoints), P is recomputed
from the cached covariance, so a resumed run edits as an uninterrupted one.

Deviations: K0 is the built-in general corpus unless ``corpus`` names a larger one (the paper:
100,000 Wikipedia triplets, Sec. 2.2), so the preserved set is that corpus's keys; the threshold
applies to the mean second moment as in the paper's code (``nullspace_threshold``; the text
drops the eigenvectors of non-zero eigenvalues), and ``l2`` is its code's ``L2`` (Eq. 14 writes
I, alpha = 1; the invertibility proof of Appendix B.5 takes any alpha > 0). Section and
equation numbers are those of the ICLR 2025 version.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from everlearn.schema import field
from everlearn.strategies.common.edit_targets import average_keys
from everlearn.strategies.common.locate_edit import alphaedit_update, null_space_projector
from everlearn.strategies.memit import LayerRangeOptions, Memit


@dataclass
class AlphaEditOptions(LayerRangeOptions):
    null_space_threshold: float = field(
        2e-2, "Eigenvalues of the corpus keys' second moment below this span the null space "
        "the update is projected onto (the paper's code: 2e-2).")
    l2: float = field(10.0, "alpha: the weight of the squared norm of Delta P in the objective "
                    "(the paper's code's L2).")

    def check(self) -> tuple[str, str] | None:
        if problem := self.layers_problem():
            return problem
        if self.null_space_threshold <= 0:
            return "null_space_threshold", ("expected a positive number, got "
                                            f"{self.null_space_threshold}")
        if self.l2 <= 0:
            return "l2", f"expected a positive number, got {self.l2}"
        return super().check()


class AlphaEdit(Memit):
    name = "alphaedit"
    summary = ("AlphaEdit model editor: MEMIT's update projected onto the null space of the "
               "preserved keys, with earlier edits' keys kept; acts on edit stages")
    paper = ("Fang et al. 2025, AlphaEdit: Null-Space Constrained Knowledge Editing for "
             "Language Models (ICLR)")
    Options = AlphaEditOptions

    def __init__(self, options=None):
        super().__init__(options)
        self.previous: dict[int, torch.Tensor] = {}  # K_p K_p^T per layer
        self.projectors: dict[int, torch.Tensor] = {}
        self.null_dims: dict[int, int] = {}

    def projector(self, layer: int, cov: torch.Tensor) -> torch.Tensor:
        if layer not in self.projectors:
            p, dim = null_space_projector(cov.double(), self.options.null_space_threshold)
            self.projectors[layer], self.null_dims[layer] = p, dim
        return self.projectors[layer]

    def layer_update(self, layer: int, keys, residuals, cov) -> torch.Tensor:
        p = self.projector(layer, cov)
        prev = self.previous.get(layer)
        if prev is None:
            prev = torch.zeros_like(p)
        return alphaedit_update(keys.double(), residuals.double(), p, prev.double(),
                                self.options.l2)

    def after_batch(self, reqs) -> int:
        """K_p K_p^T += K1 K1^T of every layer, the keys read from the edited model (as the
        paper's code does once the batch is written)."""
        modules = {layer: self.down(layer) for layer in self.layers}
        keys, read = average_keys(self.ctx.model, self.ctx.encoder, modules, reqs,
                                  self.prefixes, self.autocast)
        for layer, k in keys.items():
            k = k.double()
            add = k @ k.T
            self.previous[layer] = self.previous[layer] + add if layer in self.previous else add
        return read

    def metrics(self) -> dict[str, Any]:
        out = super().metrics()
        if out and self.null_dims:
            out["null_space_dim"] = {str(k): v for k, v in sorted(self.null_dims.items())}
        return out

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["meta"]["null_space_dim"] = {str(k): v for k, v in sorted(self.null_dims.items())}
        state["tensors"] = {f"previous.{k}": v.cpu().contiguous()  # float64, as accumulated
                            for k, v in sorted(self.previous.items())}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        dims = state.get("meta", {}).get("null_space_dim") or {}
        self.null_dims = {int(k): int(v) for k, v in dims.items()}
        self.previous = {int(k.split(".", 1)[1]): v.double()
                         for k, v in state.get("tensors", {}).items()
                         if k.startswith("previous.")}

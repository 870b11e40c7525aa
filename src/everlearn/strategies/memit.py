"""MEMIT: a batch of edits written into the MLPs of a range of layers at once.

Meng et al. 2023, "Mass-Editing Memory in a Transformer" (ICLR). For the edits of one stage
(the batch) and the layers R = {l_1 < ... < l_L}:

* z_i (Eq. 16): the hidden state after the last layer l_L at edit i's subject token, plus a
  delta optimised so that the model writes target_new after every prefixed prompt (the same
  loss as ROME's value: NLL, KL essence term, weight decay, norm clamp;
  :mod:`everlearn.strategies.common.edit_targets`);
* then layer by layer, lowest first (Algorithm 1): the keys K_l at the subject token (averaged
  over the prefixes, Eq. 19) and the residual r_i = (z_i - h_i^{l_L}) / (L - position of l)
  (Eq. 20), with h^{l_L} read from the model as edited so far, so the residual is divided over
  the layers that remain; Delta_l = R K_l^T (lambda C_l + K_l K_l^T)^-1 (Eq. 14, with the
  paper's C0 = lambda E[k k^T] of Eq. 15), C_l the keys' second moment on the corpus (cached
  in the run directory), lambda = ``mom2_weight``.

Deviations: as for ROME, C_l comes from the built-in general pairs unless ``corpus`` names a
larger text and gets a ridge; the layers are round(depth/8)..round(depth/4) unless ``layers``
is set (the paper: 3..8 of GPT-J's 28; the authors' code sets 13..17 of GPT-2 XL's 48); the
value takes at most ``value_steps`` 20 Adam steps (the authors' GPT-J setting: 25). The
equation numbers were checked against secondary texts that quote the paper (two agree on
Eq. 14), not against the paper's own text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from everlearn.schema import field
from everlearn.strategies.common.edit_targets import (
    average_keys,
    optimise_value,
    outputs_at_subject,
)
from everlearn.strategies.common.locate_edit import memit_layers, memit_update, regularised
from everlearn.strategies.common.locate_editor import LocateEditor, LocateOptions
from everlearn.strategies.common.mlp_access import add_update, resolve_layer
from everlearn.strategies.grace import decoder_layers


@dataclass
class LayerRangeOptions(LocateOptions):
    """The layer range MEMIT and AlphaEdit spread an update over."""

    layers: list[int] | None = field(
        None, "Decoder layers whose MLP down-projections are edited (negative counts from the "
        "end). Null: round(depth/8)..round(depth/4) (4..8 of SmolLM2-135M's 30).")

    def layers_problem(self) -> tuple[str, str] | None:
        if self.layers is not None and not self.layers:
            return "layers", "expected a non-empty list of layers or null"
        return None


@dataclass
class MemitOptions(LayerRangeOptions):
    mom2_weight: float = field(15000.0, "lambda: the weight of the preserved keys' covariance "
                             "against the edits' keys (the paper's mom2_update_weight).")
    clamp_norm: float = field(0.75, "The norm of delta is clamped to this times that of h after "
                             "every step.")

    def check(self) -> tuple[str, str] | None:
        if problem := self.layers_problem():
            return problem
        if self.mom2_weight < 0:
            return "mom2_weight", f"expected a number >= 0, got {self.mom2_weight}"
        return super().check()


class Memit(LocateEditor):
    name = "memit"
    summary = ("MEMIT model editor: a stage's edits at once, spread over the MLPs of a range of "
               "layers (closed form with the keys' covariance); acts on edit stages")
    paper = "Meng et al. 2023, Mass-Editing Memory in a Transformer (ICLR)"
    Options = MemitOptions

    def __init__(self, options=None):
        super().__init__(options)
        self.targets: torch.Tensor | None = None  # the last batch's z (hidden x n), for tests

    def choose_layers(self, depth: int) -> list[int]:
        if self.options.layers is None:
            return memit_layers(depth)
        where = f"{self.name}.layers"
        return sorted({resolve_layer(k, depth, where) for k in self.options.layers})

    def layer_update(self, layer: int, keys, residuals, cov) -> torch.Tensor:
        """Delta of one layer (MEMIT's Eq. 14; AlphaEdit overrides it)."""
        return memit_update(keys.double(), residuals.double(),
                            regularised(cov.double(), self.options.ridge),
                            self.options.mom2_weight)

    def after_batch(self, reqs) -> int:
        """Called once the batch is written; returns tokens read (AlphaEdit keeps its keys)."""
        return 0

    def edit_requests(self, reqs) -> dict[str, Any]:
        ctx = self.ctx
        covs = self.covariances()
        top = decoder_layers(ctx.model)[self.layers[-1]]
        zs, steps, tokens, losses = [], 0, 0, []
        for req in reqs:
            z, nll, n, t = optimise_value(ctx.model, ctx.encoder, top, req, self.prefixes,
                                          self.options.value_settings(), self.autocast)
            zs.append(z)
            steps, tokens = steps + n, tokens + t
            losses.append(nll)
        self.targets = torch.stack(zs, 1)
        for i, layer in enumerate(self.layers):
            module = self.down(layer)
            keys, read = average_keys(ctx.model, ctx.encoder, {layer: module}, reqs,
                                      self.prefixes, self.autocast)
            current = outputs_at_subject(ctx.model, ctx.encoder, top, reqs, self.autocast)
            residuals = (self.targets - current) / (len(self.layers) - i)
            delta = self.layer_update(layer, keys[layer], residuals, covs[layer])
            add_update(module, delta)
            self.update_norms.append(float(delta.norm()))
            tokens += 2 * read
        tokens += self.after_batch(reqs)
        return {"steps": steps, "tokens": tokens, "loss": sum(losses) / len(losses)}

"""ROME: one fact per rank-one update of one MLP down-projection.

Meng et al. 2022, "Locating and Editing Factual Associations in GPT" (NeurIPS). The MLP of a
middle layer is read as a key-value memory: its down-projection W maps the key k (its input
at the subject's last token) to a value. An edit (s, r, o -> o*) is written as:

* k* (Eq. 3): the key at the subject's last token, averaged over the empty prefix and
  ``prefixes`` texts the model writes itself;
* v* (Eq. 4): the MLP output there plus a delta optimised so that the model writes o* after
  every prefixed prompt, with the KL "essence" term on "<subject> is a" and weight decay
  (:mod:`everlearn.strategies.common.edit_targets`);
* the closed form of Eq. 2, W' = W + Lambda (C^-1 k*)^T with
  Lambda = (v* - W k*) / ((C^-1 k*)^T k*), C = K K^T the keys' second moment on a text corpus
  (:mod:`everlearn.strategies.common.key_covariance`, cached in the run directory).

So W' k* = v* exactly, and the update has rank one. An edit stage's edits are applied one
after another (ROME edits one fact at a time), each on the model the previous one left.

Deviations from the paper: C comes from the built-in general pairs (a few thousand tokens)
unless ``corpus`` names a larger one (the paper: 100,000 Wikipedia samples), and a ridge
(``ridge`` x its mean eigenvalue) keeps it invertible; the same averaged k* is used in the
numerator and the constraint (the paper's code takes W k at the unprefixed prompt), so that
W' k* = v* holds exactly; the layer is round(depth / 6) unless ``layer`` is set (the paper
chose 17 of GPT-2 XL's 48, 0-based, by causal tracing); the subject is the record's
``subject`` (the prompt's last token when a record has none); k* and the NLL of v* are averaged over
``prefixes`` 5 texts of 10 tokens (MEMIT's code; the paper samples 50 texts of 2 to 10 tokens,
Sec. 3.1, and its code 10 of 5 and 10 of 10 tokens); the weight decay and norm clamp of the
value are the authors' code's (Eq. 4 has the NLL and KL terms only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from everlearn.schema import field
from everlearn.strategies.common.edit_targets import average_keys, optimise_value
from everlearn.strategies.common.locate_edit import regularised, rome_layer, rome_update
from everlearn.strategies.common.locate_editor import LocateEditor, LocateOptions
from everlearn.strategies.common.mlp_access import add_update, resolve_layer, weight_matrix


@dataclass
class RomeOptions(LocateOptions):
    layer: int | None = field(
        None, "Decoder layer whose MLP down-projection is edited (negative counts from the "
        "end). Null: round(depth / 6) (5 of SmolLM2-135M's 30).")


@dataclass
class RomeTrace:
    """One edit as applied: the key k*, the value v* and the update (for tests and probes)."""

    key: torch.Tensor
    value: torch.Tensor
    update: torch.Tensor


class Rome(LocateEditor):
    name = "rome"
    summary = ("ROME model editor: a rank-one update of one MLP down-projection per edit, "
               "closed form with the keys' covariance; acts on edit stages")
    paper = ("Meng et al. 2022, Locating and Editing Factual Associations in GPT (NeurIPS)")
    Options = RomeOptions

    def __init__(self, options=None):
        super().__init__(options)
        self.traces: list[RomeTrace] = []  # the last stage's edits

    def choose_layers(self, depth: int) -> list[int]:
        k = self.options.layer
        return [rome_layer(depth) if k is None else resolve_layer(k, depth, "rome.layer")]

    def edit_requests(self, reqs) -> dict[str, Any]:
        layer = self.layers[0]
        cov = regularised(self.covariances()[layer].double(), self.options.ridge)
        module = self.down(layer)
        ctx, steps, tokens, losses = self.ctx, 0, 0, []
        self.traces = []
        for req in reqs:
            keys, read = average_keys(ctx.model, ctx.encoder, {layer: module}, [req],
                                      self.prefixes, self.autocast)
            value, nll, n, t = optimise_value(ctx.model, ctx.encoder, module, req,
                                              self.prefixes, self.options.value_settings(),
                                              self.autocast)
            key = keys[layer][:, 0]
            delta = rome_update(weight_matrix(module).double(), cov, key.double(),
                                value.double())
            add_update(module, delta)
            self.update_norms.append(float(delta.norm()))
            self.traces.append(RomeTrace(key, value, delta.float()))
            steps, tokens = steps + n, tokens + t + read
            losses.append(nll)
        return {"steps": steps, "tokens": tokens, "loss": sum(losses) / len(losses)}

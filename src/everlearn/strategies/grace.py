"""GRACE: edits kept in a codebook at one layer, the model's weights never change.

Hartvigsen et al. 2023, "Aging with GRACE: Lifelong Model Editing with Discrete Key-Value
Adaptors" (NeurIPS). A codebook sits at the output of one decoder layer (a forward hook):

* **keys**: the hidden state *entering* the layer at the last token of an edit's prompt;
* **values**: replacement vectors for the layer's output, trained (Adam, the model frozen) until
  the model writes the edit's target_new after the prompt;
* **deferral radii**: at every position of every forward pass (training, scoring, generation
  with a KV cache alike) the hidden state entering the layer is compared with the keys; if the
  nearest key is within its radius (Euclidean distance), the layer's output at that position is
  replaced by that key's value, else the layer runs as if GRACE were not there.

New edits update the codebook as in the paper's Algorithm 1, with ``epsilon`` the initial radius
and d the distance from the new key h to its nearest key k_i (radius r_i, label y_i, the
label being target_new):

* d > r_i + epsilon (no overlap): **add** h with radius epsilon and a value initialised to the
  layer's own output at that position;
* overlap and the same label: **expand** r_i to cover h, r_i = max(r_i, d) (the paper sets
  r_i = d; max keeps earlier edits inside), then train k_i's value on the new edit;
* overlap and another label: **split**: r_i = min(r_i, d / 2) and h is added with radius
  min(epsilon, d / 2), so neither ball holds the other key;
* the very same input (d = 0) edited again to another target: **overwrite** k_i's label and
  retrain its value (the newer edit wins; a split could not separate identical keys).

The strategy acts on ``edit`` stages only (``apply_edits``: the stage is not fine-tuned); its
codebook (keys, values, radii as tensors, labels in JSON) is saved in every stage checkpoint,
so a resumed run continues exactly. Other stages train as usual with the codebook applied.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from everlearn.data.encode import IGNORE
from everlearn.errors import TrainingError
from everlearn.schema import field
from everlearn.stages import get_kind
from everlearn.strategies.base import Strategy
from everlearn.wording import plural

log = logging.getLogger("everlearn")

_LAYER_LISTS = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)$")
DEFAULT_DEPTH = 0.8  # layer: null -> the layer at 80% of the depth


@dataclass
class GraceOptions:
    layer: int | None = field(
        None, "Decoder layer whose output the codebook rewrites (0-based; negative counts from "
        "the end). Null: the layer at 80% of the depth (24 of SmolLM2-135M's 30).")
    epsilon: float = field(
        20.0, "Initial deferral radius of a new key: the Euclidean distance between hidden "
        "states entering the layer within which an input takes the key's value. Its scale is "
        "the model's and the layer's (hidden states at layer 24 of SmolLM2-135M have norms "
        "near 350; `strategy_metrics.grace.mean_key_norm` reports it for a run).")
    iterations: int = field(100, "Most optimisation steps of a value per edit.")
    lr: float = field(1.0, "Adam learning rate of the values (the paper's 1.0).")
    stop_loss: float = field(
        0.05, "A value's training stops once every token of target_new is the top-1 prediction "
        "and their mean loss is below this.")

    def check(self) -> tuple[str, str] | None:
        if self.epsilon <= 0:
            return "epsilon", f"expected a positive number, got {self.epsilon}"
        if self.iterations < 1:
            return "iterations", f"expected an integer >= 1, got {self.iterations}"
        if self.lr <= 0:
            return "lr", f"expected a positive number, got {self.lr}"
        if self.stop_loss < 0:
            return "stop_loss", f"expected a number >= 0, got {self.stop_loss}"
        return None


class Codebook:
    """Keys, values, radii and labels of GRACE, with the paper's add / expand / split rule."""

    def __init__(self, dim: int, device: torch.device | str = "cpu"):
        self.dim = dim
        self.keys = torch.zeros(0, dim, device=device)
        self.values = torch.zeros(0, dim, device=device)
        self.radii = torch.zeros(0, device=device)
        self.labels: list[str] = []
        self.actions = {"add": 0, "expand": 0, "split": 0, "overwrite": 0}

    def __len__(self) -> int:
        return len(self.labels)

    def nearest(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Distance to, and index of, the nearest key of each query (shape (..., dim))."""
        flat = queries.reshape(-1, self.dim).float()
        dist = torch.cdist(flat, self.keys)
        d, i = dist.min(dim=-1)
        return d.reshape(queries.shape[:-1]), i.reshape(queries.shape[:-1])

    def _add(self, key: torch.Tensor, value: torch.Tensor, radius: float, label: str) -> int:
        self.keys = torch.cat([self.keys, key.reshape(1, -1).float()])
        self.values = torch.cat([self.values, value.reshape(1, -1).float()])
        self.radii = torch.cat([self.radii, self.radii.new_tensor([radius])])
        self.labels.append(label)
        return len(self) - 1

    def update(self, key: torch.Tensor, label: str, epsilon: float,
               value_init: torch.Tensor) -> tuple[str, int]:
        """Take a new edit's key: (action, index of the entry whose value to train)."""
        if not len(self):
            self.actions["add"] += 1
            return "add", self._add(key, value_init, epsilon, label)
        dist, idx = self.nearest(key.reshape(1, -1))
        d, i = float(dist[0]), int(idx[0])
        if d > float(self.radii[i]) + epsilon:
            action, index = "add", self._add(key, value_init, epsilon, label)
        elif d <= 1e-6 * (1.0 + float(self.keys[i].norm())) and self.labels[i] != label:
            self.labels[i] = label  # the same input edited again: the newer edit wins
            action, index = "overwrite", i
        elif self.labels[i] == label:
            self.radii[i] = max(float(self.radii[i]), d)
            action, index = "expand", i
        else:
            half = d / 2
            self.radii[i] = min(float(self.radii[i]), half)
            action, index = "split", self._add(key, value_init, min(epsilon, half), label)
        self.actions[action] += 1
        return action, index

    def apply(self, queries: torch.Tensor, output: torch.Tensor,
              override: tuple[int, torch.Tensor] | None = None) -> torch.Tensor:
        """``output`` with every position whose query lies within its nearest key's radius
        replaced by that key's value; ``override`` = (index, tensor) stands in for one value
        (the one being trained, so gradients reach it)."""
        d, i = self.nearest(queries)
        hit = d <= self.radii[i]
        if not bool(hit.any()):
            return output
        values = self.values
        if override is not None:
            k, v = override
            values = torch.cat([values[:k], v.reshape(1, -1), values[k + 1:]])
        return torch.where(hit.unsqueeze(-1), values[i].to(output.dtype), output)

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = ({"keys": self.keys.cpu(), "values": self.values.cpu(),
                    "radii": self.radii.cpu()} if len(self) else {})
        return tensors, {"labels": list(self.labels), "actions": dict(self.actions)}

    def load(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        device = self.keys.device
        self.labels = list(meta.get("labels", []))
        self.actions = dict(meta.get("actions", self.actions))
        if self.labels:
            self.keys = tensors["keys"].to(device).float()
            self.values = tensors["values"].to(device).float()
            self.radii = tensors["radii"].to(device).float()
        else:
            self.keys = torch.zeros(0, self.dim, device=device)
            self.values = torch.zeros(0, self.dim, device=device)
            self.radii = torch.zeros(0, device=device)


def decoder_layers(model) -> torch.nn.ModuleList:
    """The model's list of decoder layers (the longest ModuleList named layers/h/blocks)."""
    found = [m for n, m in model.named_modules()
             if isinstance(m, torch.nn.ModuleList) and _LAYER_LISTS.search(n)]
    if not found:
        raise TrainingError("grace: cannot find the model's decoder layers (a ModuleList named "
                            "layers, h or blocks)")
    return max(found, key=len)


class Grace(Strategy):
    name = "grace"
    summary = ("GRACE model editor: edits as a codebook of keys, values and deferral radii at "
               "one layer's output; acts on edit stages, weights unchanged")
    unsupported_parallel = {
        "fsdp": "it edits layers with a codebook",
        "zero": "it edits layers with a codebook outside the training loop",
    }
    paper = ("Hartvigsen et al. 2023, Aging with GRACE: Lifelong Model Editing with Discrete "
             "Key-Value Adaptors (NeurIPS)")
    Options = GraceOptions

    def __init__(self, options=None):
        super().__init__(options)
        self.codebook: Codebook | None = None
        self.layer = -1
        self._handle = None
        self._capture: list | None = None
        self._override: tuple[int, torch.Tensor] | None = None
        self._pending: dict[str, Any] | None = None  # state loaded before setup

    def setup(self, ctx) -> None:
        super().setup(ctx)
        layers = decoder_layers(ctx.model)
        n = len(layers)
        k = self.options.layer
        if k is None:
            k = min(n - 1, int(DEFAULT_DEPTH * n))
        j = k + n if k < 0 else k
        if not 0 <= j < n:
            raise TrainingError(f"strategies: grace.layer: layer {k} does not exist (the model "
                                f"has {plural(n, 'layer')}: 0..{n - 1} or -{n}..-1)")
        self.layer = j
        dim = ctx.model.config.hidden_size if hasattr(ctx.model, "config") else None
        device = ctx.accelerator.device if ctx.accelerator is not None else "cpu"
        self.codebook = Codebook(int(dim), device)
        if self._handle is not None:
            self._handle.remove()
        self._handle = layers[j].register_forward_hook(self._hook, with_kwargs=True)
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self.load_state_dict(pending)

    # --- the layer hook ---------------------------------------------------------------------
    def _hook(self, module, args, kwargs, output):
        hidden_in = args[0] if args else kwargs["hidden_states"]
        out = output[0] if isinstance(output, tuple) else output
        if self._capture is not None:
            self._capture.append((hidden_in.detach(), out.detach()))
        if self.codebook is None or not len(self.codebook):
            return None
        new = self.codebook.apply(hidden_in, out, self._override)
        if new is out:
            return None
        return (new, *output[1:]) if isinstance(output, tuple) else new

    # --- editing ---------------------------------------------------------------------------
    def apply_edits(self, stage, records):
        if not get_kind(stage.kind).edits:
            return None
        ctx, opt = self.ctx, self.options
        model, device = ctx.model, self.codebook.keys.device
        was_training = model.training
        model.eval()
        steps = tokens = edits = 0
        losses = []
        try:
            for rec in records:
                if not rec.answers:
                    continue  # raw text mixed in by another strategy: nothing to edit
                ex = ctx.encoder.encode_edit(rec, rec.prompt, rec.response)
                ids = torch.tensor([ex.input_ids], device=device)
                labels = torch.tensor(ex.labels[1:], device=device)
                mask = labels != IGNORE
                target = labels[mask]
                pos = int(mask.nonzero()[0]) if bool(mask.any()) else -1
                if pos < 0:
                    continue
                self._capture = []
                with torch.no_grad(), ctx.autocast():
                    model(input_ids=ids)
                (h_in, h_out), self._capture = self._capture[0], None
                _, index = self.codebook.update(h_in[0, pos], rec.response, opt.epsilon,
                                                h_out[0, pos].float())
                value = self.codebook.values[index].clone().requires_grad_(True)
                adam = torch.optim.Adam([value], lr=opt.lr)
                loss_value = float("nan")
                for _ in range(opt.iterations):
                    self._override = (index, value)
                    with torch.enable_grad(), ctx.autocast():
                        logits = model(input_ids=ids).logits[0, :-1][mask].float()
                    self._override = None
                    loss = F.cross_entropy(logits, target)
                    loss_value = loss.item()
                    steps, tokens = steps + 1, tokens + len(ex.input_ids)
                    if loss_value < opt.stop_loss and bool((logits.argmax(-1) == target).all()):
                        break
                    (grad,) = torch.autograd.grad(loss, value)
                    value.grad = grad
                    adam.step()
                    adam.zero_grad(set_to_none=True)
                with torch.no_grad():
                    self.codebook.values[index] = value.detach()
                losses.append(loss_value)
                edits += 1
        finally:
            self._capture, self._override = None, None
            model.train(was_training)
        return {"steps": steps, "tokens": tokens, "edits": edits,
                "loss": sum(losses) / len(losses) if losses else 0.0,
                "trainable_params": edits * self.codebook.dim}  # one value vector per edit

    # --- results and checkpoints -----------------------------------------------------------
    def buffer_size(self) -> int:
        return len(self.codebook) if self.codebook is not None else 0

    def metrics(self) -> dict[str, Any]:
        cb = self.codebook
        if cb is None or not len(cb):
            return {}
        return {"layer": self.layer, "codebook_size": len(cb), **cb.actions,
                "mean_radius": float(cb.radii.mean()),
                "mean_key_norm": float(cb.keys.norm(dim=-1).mean())}

    def state_dict(self) -> dict[str, Any]:
        if self.codebook is None and self._pending is not None:
            return self._pending
        tensors, meta = self.codebook.state() if self.codebook is not None else ({}, {})
        return {"meta": {**meta, "layer": self.layer}, "tensors": tensors}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.codebook is None:  # before setup: kept until setup has placed the codebook
            self._pending = state
            return
        meta = state.get("meta", {})
        if meta.get("layer", self.layer) != self.layer:
            raise TrainingError(f"grace: the checkpoint's codebook sits at layer {meta['layer']}"
                                f", the run's at {self.layer}")
        self.codebook.load(state.get("tensors", {}), meta)

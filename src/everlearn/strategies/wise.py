"""WISE: edits in side memories of one MLP's value matrix, routed per input; the main memory
stays fixed.

Wang et al. 2024, "WISE: Rethinking the Knowledge Memory for Lifelong Model Editing"
(NeurIPS). At one mid-to-late decoder layer the MLP's value matrix W_v (``down_proj``) is the
*main memory*; edits go into *side memories* W_v', copies of it (held as delta = W_v' - W_v):

* **editing** (paper Sec. 2.3.2, the loss with Eq. 7, on Sec. 2.3.1's router): a side memory is
  trained, the model frozen, on the cross-entropy of target_new after the edit's prompt through
  the side memory plus L_a (the paper calls the sum L_edit), L_a the routing margin loss of
  Eq. 5 on the activation score of Eq. 3,
  Delta_act(x) = ||A(x) (W_v' - W_v)||_2 (A(x): the activation entering ``down_proj``, the
  norm per token, averaged over the input's tokens): ReLU(Delta_act(x_i) - alpha) +
  ReLU(beta - Delta_act(x_e)) + ReLU(gamma - (Delta_act(x_e) - Delta_act(x_i))) for the edits
  x_e and irrelevant inputs x_i (see :mod:`everlearn.strategies.common.side_memory`);
* **routing** (Sec. 2.3.1, Eq. 6): each side memory's threshold epsilon is ``act_ratio`` x the
  smallest Delta_act over the edits it holds (the paper's epsilon is that smallest value; the
  factor is EasyEdit's); an input whose Delta_act exceeds a memory's threshold is computed with
  that memory (with several, the one of highest Delta_act, as WISE-Retrieve, Sec. 2.3.2), any
  other input with the main memory, bit for bit the unedited layer;
* **knowledge sharding and merging** (paper Sec. 2.3.2): edits fill shards of ``shard_size``
  edits; each shard is its own side memory, trained only inside a random subspace (a gradient
  mask of density ``mask_ratio``, drawn once per shard, Eq. 7); every ``merge_shards`` shards are
  merged into one side memory by TIES (Eq. 8; ``merge_density``, ``merge_scale``).

Deviations, all documented in docs/editing.md: the irrelevant inputs x_i come from the built-in
general instruction set (the paper draws them from a separate corpus; the stage's locality
prompts are never trained on, they are the test of locality); each merged memory's threshold is
recomputed on the edits it holds (EasyEdit keeps the smallest of the shards' minima); the
hinges of L_a are averaged over all pairs (EasyEdit averages over the violated ones);
optimisation is SGD at ``lr`` with EasyEdit's weight decay 1e-5 and its element-wise bound
``norm_constraint`` on delta; the edit prompts are not augmented with the model's own random
token prefixes (the paper adds 10 of 10 tokens to every x_e, Sec. 3.1). A batch of edits
(``edit.batch_size``) is trained jointly.

The side memories, the open shard's mask and the edits' token ids are in every stage
checkpoint, so a resumed run continues exactly.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from everlearn.data.encode import IGNORE, Encoded, collate
from everlearn.errors import TrainingError
from everlearn.schema import field
from everlearn.stages import get_kind
from everlearn.strategies.base import Strategy
from everlearn.strategies.common.general_data import general_records
from everlearn.strategies.common.side_memory import (
    activation_scores,
    choose_memory,
    margin_loss,
    merge_shards,
    subspace_mask,
)
from everlearn.strategies.grace import decoder_layers
from everlearn.wording import plural

log = logging.getLogger("everlearn")

DEFAULT_DEPTH = 27 / 32  # the paper's layer 27 of LLaMA-2-7B's 32 (25 of SmolLM2-135M's 30)
VALUE_MODULES = ("mlp.down_proj", "mlp.c_proj", "mlp.fc2", "mlp.dense_4h_to_h",
                 "feed_forward.w2")


@dataclass
class WiseOptions:
    layer: int | None = field(
        None, "Decoder layer whose MLP value matrix (down_proj) gets the side memories "
        "(0-based; negative counts from the end). Null: 27/32 of the depth, the paper's layer "
        "27 of 32 (25 of SmolLM2-135M's 30).")
    mask_ratio: float = field(0.2, "rho: density of each shard's random gradient mask.",
                              gt=0, le=1)
    shard_size: int = field(
        16, "Edits per shard (EasyEdit's save_freq; a side memory of its own, with its own "
        "mask). The paper's streams have 1000-3000 edits; scaled for streams of tens to "
        "hundreds.", ge=1)
    merge_shards: int = field(
        2, "Shards merged by TIES into one side memory once this many are full (EasyEdit's "
        "merge_freq / save_freq).", ge=1)
    merge_density: float = field(0.53, "TIES density of the merge (EasyEdit's 0.53).",
                                 gt=0, le=1)
    merge_scale: float = field(1.0, "Factor on the merged delta (EasyEdit's weights 1.0).",
                               gt=0)
    act_ratio: float = field(
        0.88, "A side memory's threshold epsilon = act_ratio x the smallest activation score of "
        "its edits (EasyEdit's 0.88).", gt=0)
    alpha: float = field(5.0, "Margin: irrelevant inputs' activation score at most this.",
                         ge=0)
    beta: float = field(20.0, "Margin: edits' activation score at least this.", ge=0)
    gamma: float = field(10.0, "Margin: edits' score at least this above irrelevant inputs'.",
                         ge=0)
    lr: float = field(1.0, "SGD learning rate of the side memory (EasyEdit's edit_lr 1.0).",
                      gt=0)
    iterations: int = field(70, "Most optimisation steps per edit (batch); EasyEdit's n_iter.",
                            ge=1)
    norm_constraint: float = field(
        1.0, "Element-wise bound abs(W_v' - W_v) <= norm_constraint after every step (EasyEdit's "
        "1.0).", gt=0)
    stop_loss: float = field(
        0.05, "Training of an edit stops once every target token is the top-1 prediction, its "
        "mean loss is below this and the margins hold.", ge=0)
    irrelevant: int = field(
        2, "Irrelevant inputs x_i per optimisation step, drawn from the built-in general "
        "instruction set.", ge=0)


@dataclass
class Memory:
    """One side memory: delta = W_v' - W_v, the token ids of its edits (its threshold is set
    from them), the smallest activation score among them, and what it is."""

    delta: torch.Tensor
    kind: str  # "merged", "shard" (full, not merged yet) or "open" (being filled)
    edits: list[list[int]]
    act_min: float = math.inf
    mask: torch.Tensor | None = None  # an open shard's gradient mask


class Wise(Strategy):
    name = "wise"
    summary = ("WISE model editor: edits in side memories of one MLP value matrix, a router "
               "on activation scores, knowledge sharding merged by TIES; acts on edit stages")
    unsupported_parallel = {
        "fsdp": "it edits a layer's side memory",
        "zero": "it edits a layer's side memory outside the training loop",
    }
    paper = ("Wang et al. 2024, WISE: Rethinking the Knowledge Memory for Lifelong Model "
             "Editing (NeurIPS)")
    Options = WiseOptions

    def __init__(self, options=None):
        super().__init__(options)
        self.memories: list[Memory] = []
        self.layer = -1
        self.shape: tuple[int, int] | None = None  # (d_out, d_in) of the value matrix
        self.device: torch.device | str = "cpu"
        self.shards_opened = 0
        self.merges = 0
        self._handles: list = []
        self._mask: torch.Tensor | None = None  # the batch's token mask, from the pre-hook
        self._cached_step = False  # a generation step with a KV cache: reuse the choice
        self._choice: torch.Tensor | None = None
        self._training: torch.Tensor | None = None  # the delta being trained
        self._scores: torch.Tensor | None = None  # its activation scores, per input
        self._pending: dict[str, Any] | None = None  # state loaded before setup

    # --- placing the side memory ------------------------------------------------------------
    def setup(self, ctx) -> None:
        super().setup(ctx)
        layers = decoder_layers(ctx.model)
        n = len(layers)
        k = self.options.layer if self.options.layer is not None else min(
            n - 1, int(DEFAULT_DEPTH * n))
        j = k + n if k < 0 else k
        if not 0 <= j < n:
            raise TrainingError(f"strategies: wise.layer: layer {k} does not exist (the model "
                                f"has {plural(n, 'layer')}: 0..{n - 1} or -{n}..-1)")
        self.layer = j
        module = value_module(layers[j])
        self.shape = value_shape(module)
        self.device = ctx.accelerator.device if ctx.accelerator is not None else "cpu"
        for h in self._handles:
            h.remove()
        owner = next(m for m in ctx.model.modules() if any(c is layers for c in m.children()))
        self._handles = [owner.register_forward_pre_hook(self._see_mask, with_kwargs=True),
                         module.register_forward_hook(self._hook)]
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self.load_state_dict(pending)

    def _see_mask(self, module, args, kwargs):
        """The decoder's inputs: which tokens are real (attention_mask), and whether this pass
        continues a KV cache (the mask is longer than the new tokens)."""
        ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        new = (ids if ids is not None else embeds).shape[1]
        mask = kwargs.get("attention_mask")
        self._mask = None if mask is None or mask.dim() != 2 else mask[:, -new:]
        self._cached_step = mask is not None and mask.dim() == 2 and mask.shape[1] > new
        return None

    # --- the value-matrix hook ------------------------------------------------------------
    def _hook(self, module, args, output):
        act = args[0]
        mask = self._mask if self._mask is not None and self._mask.shape == act.shape[:2] \
            else torch.ones(act.shape[:2], device=act.device)
        if self._training is not None:  # editing: the side memory computes every input
            self._scores = activation_scores(act, self._training, mask)
            return output + F.linear(act.to(self._training.dtype), self._training).to(
                output.dtype)
        if not self.memories:
            return None
        choice = self._route(act, mask)
        if not bool((choice >= 0).any()):
            return None  # every input: the main memory, exactly the unedited layer
        out = output.clone()
        for m in choice.unique().tolist():
            if m < 0:
                continue
            rows = choice == m
            delta = self.memories[m].delta
            out[rows] = output[rows] + F.linear(act[rows].to(delta.dtype), delta).to(
                output.dtype)
        return out

    def _route(self, act: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per input, the side memory it goes to (-1: the main memory); a generation step
        with a KV cache keeps the choice its prompt got."""
        if self._cached_step and self._choice is not None and \
                self._choice.shape[0] == act.shape[0]:
            return self._choice
        with torch.no_grad():
            scores = torch.stack([activation_scores(act, m.delta, mask)
                                  for m in self.memories])
        self._choice = choose_memory(scores, self.thresholds().to(scores.device))
        return self._choice

    def thresholds(self) -> torch.Tensor:
        """epsilon of each side memory: act_ratio x its edits' smallest activation score."""
        return torch.tensor([self.options.act_ratio * m.act_min for m in self.memories])

    # --- editing ----------------------------------------------------------------------------
    def apply_edits(self, stage, records):
        if not get_kind(stage.kind).edits:
            return None
        enc = self.ctx.encoder
        edits = [enc.encode_edit(r, r.prompt, r.response) for r in records if r.answers]
        edits = [e for e in edits if any(t != IGNORE for t in e.labels)]
        model = self.ctx.model
        was_training = model.training
        model.eval()
        cost = {"steps": 0, "tokens": 0, "edits": 0, "losses": [], "trainable_params": 0}
        try:
            start = 0
            while start < len(edits):
                shard = self._open_shard()
                part = edits[start:start + self.options.shard_size - len(shard.edits)]
                self._train(shard, part, cost)
                start += len(part)
                if len(shard.edits) >= self.options.shard_size:
                    self._close_shard(shard)
        finally:
            self._training, self._scores = None, None
            model.train(was_training)
        losses = cost.pop("losses")
        return {**cost, "loss": sum(losses) / len(losses) if losses else 0.0}

    def _open_shard(self) -> Memory:
        """The shard being filled, or a new one (zero delta, its own random mask)."""
        if self.memories and self.memories[-1].kind == "open":
            return self.memories[-1]
        seed = (self.ctx.seed if self.ctx is not None else 0) * 1_000_003 + self.shards_opened
        mask = subspace_mask(self.shape, self.options.mask_ratio, seed).to(self.device)
        self.shards_opened += 1
        shard = Memory(torch.zeros(self.shape, device=self.device), "open", [], mask=mask)
        self.memories.append(shard)
        return shard

    def _close_shard(self, shard: Memory) -> None:
        """A full shard waits for its merge; ``merge_shards`` full ones become one memory."""
        shard.kind, shard.mask = "shard", None
        waiting = [m for m in self.memories if m.kind == "shard"]
        if len(waiting) < self.options.merge_shards:
            return
        opt = self.options
        delta = merge_shards([m.delta for m in waiting], opt.merge_density, opt.merge_scale)
        merged = Memory(delta.to(self.device), "merged", [e for m in waiting for e in m.edits])
        merged.act_min = self._smallest_score(merged.delta, merged.edits)
        self.memories = [m for m in self.memories if m.kind != "shard"] + [merged]
        self.merges += 1

    def _irrelevant(self) -> list[Encoded]:
        """x_i for the next optimisation: general instructions, seeded by the edit count."""
        if not self.options.irrelevant:
            return []
        seen = sum(len(m.edits) for m in self.memories)
        rng = random.Random(f"{self.ctx.seed}:wise:irrelevant:{seen}")
        pool = general_records()
        picked = rng.sample(pool, min(self.options.irrelevant, len(pool)))
        return [self.ctx.encoder.encode_edit(r, r.prompt, r.response) for r in picked]

    def _train(self, shard: Memory, edits: list[Encoded], cost: dict) -> None:
        """Train ``shard`` on a batch of edits (L_edit + L_a), inside its mask."""
        opt, n = self.options, len(edits)
        batch = collate(edits + self._irrelevant(), self.ctx.encoder.pad_id)
        batch = {k: v.to(self.device) for k, v in batch.items()}
        labels = batch["labels"][:n, 1:]
        target = labels != IGNORE
        delta = shard.delta.clone().requires_grad_(True)
        sgd = torch.optim.SGD([delta], lr=opt.lr, weight_decay=1e-5)
        loss_value = float("nan")
        for _ in range(opt.iterations):
            self._training = delta
            with torch.enable_grad(), self.ctx.autocast():
                logits = self.ctx.model(input_ids=batch["input_ids"],
                                        attention_mask=batch["attention_mask"]).logits
            scores, self._training = self._scores, None
            logits = logits[:n, :-1][target].float()
            edit_loss = F.cross_entropy(logits, labels[target])
            act_loss = margin_loss(scores[:n], scores[n:], opt.alpha, opt.beta, opt.gamma)
            loss = edit_loss + act_loss
            loss_value = float(loss.detach())
            cost["steps"] += 1
            cost["tokens"] += int(batch["attention_mask"].sum())
            if (float(edit_loss.detach()) < opt.stop_loss and float(act_loss.detach()) == 0.0
                    and bool((logits.argmax(-1) == labels[target]).all())):
                break
            (grad,) = torch.autograd.grad(loss, delta)
            delta.grad = grad * shard.mask
            sgd.step()
            sgd.zero_grad(set_to_none=True)
            with torch.no_grad():
                delta.clamp_(-opt.norm_constraint, opt.norm_constraint)
        shard.delta = delta.detach()
        shard.edits += [list(e.input_ids) for e in edits]
        shard.act_min = self._smallest_score(shard.delta, shard.edits)
        cost["edits"] += n
        cost["losses"].append(loss_value)
        cost["trainable_params"] += int(shard.mask.sum())

    @torch.no_grad()
    def _smallest_score(self, delta: torch.Tensor, edits: list[list[int]]) -> float:
        """The smallest activation score of ``delta`` over ``edits`` (their inputs as trained)."""
        batch = collate([Encoded(e, e) for e in edits], self.ctx.encoder.pad_id)
        self._training = delta
        try:
            with self.ctx.autocast():
                self.ctx.model(input_ids=batch["input_ids"].to(self.device),
                               attention_mask=batch["attention_mask"].to(self.device))
        finally:
            self._training = None
        return float(self._scores.min())

    # --- results and checkpoints -------------------------------------------------------------
    def buffer_size(self) -> int:
        return sum(len(m.edits) for m in self.memories)  # the edits' token ids are kept

    def metrics(self) -> dict[str, Any]:
        if not self.memories:
            return {}
        return {"layer": self.layer, "side_memories": len(self.memories),
                "edits": self.buffer_size(), "merges": self.merges,
                "kinds": [m.kind for m in self.memories],
                "thresholds": [round(float(t), 4) for t in self.thresholds()]}

    def state_dict(self) -> dict[str, Any]:
        if self.shape is None and self._pending is not None:
            return self._pending
        tensors = {f"memory.{i}": m.delta.cpu() for i, m in enumerate(self.memories)}
        tensors.update({f"mask.{i}": m.mask.cpu() for i, m in enumerate(self.memories)
                        if m.mask is not None})
        meta = {"layer": self.layer, "shards_opened": self.shards_opened,
                "merges": self.merges,
                "memories": [{"kind": m.kind, "edits": m.edits, "act_min": m.act_min}
                             for m in self.memories]}
        return {"meta": meta, "tensors": tensors}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.shape is None:  # before setup: kept until setup has found the layer
            self._pending = state
            return
        meta, tensors = state.get("meta", {}), state.get("tensors", {})
        if meta.get("layer", self.layer) != self.layer:
            raise TrainingError(f"wise: the checkpoint's side memories sit at layer "
                                f"{meta['layer']}, the run's at {self.layer}")
        self.shards_opened = int(meta.get("shards_opened", 0))
        self.merges = int(meta.get("merges", 0))
        self.memories = [
            Memory(tensors[f"memory.{i}"].to(self.device).float(), m["kind"],
                   [list(e) for e in m["edits"]], float(m["act_min"]),
                   tensors[f"mask.{i}"].to(self.device) if f"mask.{i}" in tensors else None)
            for i, m in enumerate(meta.get("memories", []))]
        self._choice = None


def value_module(layer: torch.nn.Module) -> torch.nn.Module:
    """The MLP value matrix (down-projection) of a decoder layer."""
    for name in VALUE_MODULES:
        found = layer.get_submodule(name) if _has(layer, name) else None
        if found is not None:
            return found
    raise TrainingError("strategies: wise: cannot find the layer's MLP down-projection (one "
                        f"of {', '.join(VALUE_MODULES)})")


def _has(module: torch.nn.Module, name: str) -> bool:
    try:
        module.get_submodule(name)
        return True
    except AttributeError:
        return False


def value_shape(module: torch.nn.Module) -> tuple[int, int]:
    """(d_out, d_in) of the value matrix (a Linear, a PEFT LoRA Linear, or GPT-2's Conv1D)."""
    if hasattr(module, "in_features") and hasattr(module, "out_features"):
        return int(module.out_features), int(module.in_features)
    if hasattr(module, "nf") and hasattr(module, "weight"):  # Conv1D: weight is (in, out)
        return int(module.weight.shape[1]), int(module.weight.shape[0])
    raise TrainingError(f"strategies: wise: the down-projection {type(module).__name__} is "
                        "neither a Linear nor a Conv1D")

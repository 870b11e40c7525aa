"""Block expansion (LLaMA-Pro, Wu et al. 2024): grow the decoder with identity blocks, train them.

The L original decoder blocks are split into P groups; after the last block of each group an
identity-initialised copy of that block is inserted: a deep copy whose attention output
projection ``o_proj`` and MLP ``down_proj`` (weights and any biases) are zero, so both residual
branches add exactly 0 and the expanded model computes the same function as the original
(bit-for-bit in fp32: the new block returns its input unchanged). Only the inserted blocks train;
every original weight (blocks, embeddings, final norm, head) is frozen, which is what protects
the old knowledge. Placement: ``every: e`` inserts after original blocks e-1, 2e-1, ...;
``n_blocks: P`` spreads P blocks evenly, after original blocks ceil(k L / P) - 1 for k = 1..P
(LLaMA-2-7B: 32 blocks, P = 8, every 4th, as in the paper); by default P = ceil(L / 4).

As in the paper, the model is expanded once, before the first stage trains, and the same new
blocks train through every stage. With ``per_stage: true`` each stage inserts a fresh identity
block at the end of every group (a copy of the block now ending it, so group k grows
orig, new_1, new_2, ...), and the blocks of earlier stages are frozen with the original ones.

Requires ``model.finetune: full``: the method trains whole blocks, and a LoRA-wrapped model would
both train the wrong weights and keep adapters on the frozen ones (a ConfigError names the field
instead of silently unwrapping). Works on Llama-family Hugging Face models (``model.model.layers``
with ``self_attn.o_proj`` and ``mlp.down_proj``): after insertion ``config.num_hidden_layers``,
``config.layer_types`` (when the model has it) and every block's ``self_attn.layer_idx`` are
renumbered, so the KV cache and generation see the new depth. The model is expanded in
``before_stage``, so the base row of R is the original model (the expanded one scores the same).

Resume: the stage checkpoint holds the trainable (current) new blocks by parameter name; the
strategy state records which stages expanded the model and holds the weights of new blocks that
are already frozen (``per_stage``), and ``load_state_dict`` rebuilds the expanded structure
before the engine loads the weights into it.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from everlearn.errors import ConfigError, ModelError, TrainingError
from everlearn.strategies.base import Strategy

Tag = tuple  # ("orig", i) for original block i; ("new", stage, group) for an inserted block


@dataclass
class BlockExpansionOptions:
    n_blocks: int | None = field(default=None, metadata={
        "help": "Identity blocks inserted per expansion, spread evenly (default: a quarter of "
                "the original depth, rounded up; LLaMA-Pro's 32 -> 40)."})
    every: int | None = field(default=None, metadata={
        "help": "Insert one identity block after every `every` original blocks (instead of "
                "n_blocks)."})
    per_stage: bool = field(default=False, metadata={
        "help": "Insert new blocks at every stage and freeze earlier ones (the paper expands "
                "once, before the first stage)."})

    def check(self) -> tuple[str, str] | None:
        """(field, message) for the first invalid option, else None."""
        if self.n_blocks is not None and self.every is not None:
            return "n_blocks", "expected at most one of n_blocks or every"
        if self.n_blocks is not None and self.n_blocks < 1:
            return "n_blocks", f"expected an integer >= 1, got {self.n_blocks}"
        if self.every is not None and self.every < 1:
            return "every", f"expected an integer >= 1, got {self.every}"
        return None


def insertion_points(n_layers: int, n_blocks: int | None = None,
                     every: int | None = None) -> list[int]:
    """Original block indices after which an identity block goes (one per group)."""
    if every is not None:
        points = list(range(every - 1, n_layers, every))
        if not points:
            raise ConfigError(f"config: strategies: block_expansion.options.every: expected "
                              f"at most {n_layers} (the model's depth), got {every}")
        return points
    p = n_blocks if n_blocks is not None else math.ceil(n_layers / 4)
    if p > n_layers:
        raise ConfigError(f"config: strategies: block_expansion.options.n_blocks: expected "
                          f"at most {n_layers} (one per original block), got {p}")
    return [math.ceil((k + 1) * n_layers / p) - 1 for k in range(p)]


def identity_copy(block: nn.Module) -> nn.Module:
    """A deep copy of a decoder block whose residual branches output 0 (o_proj, down_proj = 0)."""
    new = copy.deepcopy(block)
    for proj in (_submodule(new, "self_attn.o_proj"), _submodule(new, "mlp.down_proj")):
        with torch.no_grad():
            proj.weight.zero_()
            if getattr(proj, "bias", None) is not None:
                proj.bias.zero_()
    return new


def _submodule(block: nn.Module, path: str) -> nn.Module:
    try:
        module = block.get_submodule(path)
    except AttributeError:
        module = None
    if not isinstance(module, nn.Linear):
        raise ModelError(f"model.name: block_expansion needs Llama-style decoder blocks with a "
                         f"Linear '{path}'; {type(block).__name__} has none")
    return module


def decoder_layers(model) -> tuple[nn.Module, nn.ModuleList]:
    """(the decoder holding ``layers``, the ModuleList of blocks) of a Llama-family model."""
    decoder = getattr(model, "model", None)
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ModelError(f"model.name: block_expansion needs a Llama-family model with "
                         f"model.layers; {type(model).__name__} has none")
    return decoder, layers


def install_layers(model, blocks: list[nn.Module], layer_types: list[str] | None) -> None:
    """Make ``blocks`` the model's decoder stack and renumber what the KV cache relies on."""
    decoder, _ = decoder_layers(model)
    decoder.layers = nn.ModuleList(blocks)
    config = model.config
    if layer_types is not None:
        config.layer_types = list(layer_types)
    config.num_hidden_layers = len(blocks)
    if getattr(decoder, "config", config) is not config:
        decoder.config.num_hidden_layers = len(blocks)
        if layer_types is not None:
            decoder.config.layer_types = list(layer_types)
    for i, block in enumerate(blocks):
        block.self_attn.layer_idx = i
        if hasattr(block, "layer_idx"):
            block.layer_idx = i


def expansion_positions(layout: list[Tag], points: list[int]) -> list[int]:
    """Current positions after which group k's next block goes: the end of group k, i.e. its
    original block ``points[k]`` followed by the blocks already inserted for that group."""
    out = []
    for k, point in enumerate(points):
        pos = layout.index(("orig", point))
        while pos + 1 < len(layout) and layout[pos + 1][0] == "new" and layout[pos + 1][2] == k:
            pos += 1
        out.append(pos)
    return out


class BlockExpansion(Strategy):
    requires_finetune = "full"
    name = "block_expansion"
    summary = "insert identity-initialised decoder blocks and train only them (LLaMA-Pro)"
    unsupported_parallel = {"fsdp": "it inserts decoder blocks"}
    paper = "Wu et al. 2024, LLaMA Pro: Progressive LLaMA with Block Expansion (ACL)"
    Options = BlockExpansionOptions

    def __init__(self, options=None):
        super().__init__(options)
        self.expanded_at: list[int] = []  # stage indices that inserted blocks
        self.n_layers: int | None = None  # original depth
        self.tensors: dict[str, torch.Tensor] = {}  # frozen inserted blocks, "s{stage}.g{k}/..."
        self.layout: list[Tag] = []

    def setup(self, ctx):
        super().setup(ctx)
        model = ctx.model
        finetune = getattr(getattr(ctx.config, "model", None), "finetune", "full")
        if finetune != "full" or hasattr(model, "peft_config"):
            raise ConfigError("config: model.finetune: block_expansion trains the inserted "
                              f"blocks in full (LLaMA-Pro); expected 'full', got {finetune!r}")
        if getattr(model.config, "is_heterogeneous", False):
            raise ModelError("model.name: block_expansion does not support per-layer configs")
        _, layers = decoder_layers(model)
        for block in layers:
            _submodule(block, "self_attn.o_proj")
            _submodule(block, "mlp.down_proj")
        depth = len(layers)
        if self.n_layers is not None and self.n_layers != depth:
            raise TrainingError(f"block_expansion: the saved state is for a {self.n_layers}-block "
                                f"model, this one has {depth}")
        self.n_layers = depth
        self.points = insertion_points(depth, self.options.n_blocks, self.options.every)
        types = getattr(model.config, "layer_types", None)
        self._orig_types = list(types) if isinstance(types, list) else None
        self.layout = [("orig", i) for i in range(depth)]
        if self.expanded_at:  # state loaded before setup
            self._rebuild()

    # --- expansion -----------------------------------------------------------------------------
    def _expand(self, stage_index: int) -> None:
        _, layers = decoder_layers(self.ctx.model)
        blocks, layout = list(layers), list(self.layout)
        for k, pos in sorted(enumerate(expansion_positions(layout, self.points)),
                             key=lambda kp: -kp[1]):  # from the back: positions stay valid
            blocks.insert(pos + 1, identity_copy(blocks[pos]))
            layout.insert(pos + 1, ("new", stage_index, k))
        types = None
        if self._orig_types is not None:
            types = [self._orig_types[t[1] if t[0] == "orig" else self.points[t[2]]]
                     for t in layout]
        install_layers(self.ctx.model, blocks, types)
        self.layout = layout

    def _blocks(self) -> list[tuple[Tag, nn.Module]]:
        _, layers = decoder_layers(self.ctx.model)
        return list(zip(self.layout, layers))

    def _freeze_all_but(self, stage_index: int | None) -> None:
        """Train the inserted blocks (of ``stage_index`` only, when given); freeze the rest."""
        for p in self.ctx.model.parameters():
            p.requires_grad_(False)
        for tag, block in self._blocks():
            if tag[0] == "new" and (stage_index is None or tag[1] == stage_index):
                for p in block.parameters():
                    p.requires_grad_(True)

    @staticmethod
    def _key(tag: Tag) -> str:
        return f"s{tag[1]}.g{tag[2]}"

    def before_stage(self, stage):
        if self.options.per_stage:
            for tag, block in self._blocks():  # the blocks of earlier stages are final now
                if tag[0] == "new":
                    for n, p in block.named_parameters():
                        self.tensors[f"{self._key(tag)}/{n}"] = p.detach().to("cpu", copy=True)
            self._expand(stage.index)
            self.expanded_at.append(stage.index)
            self._freeze_all_but(stage.index)
            return
        if not self.expanded_at:
            self._expand(stage.index)
            self.expanded_at.append(stage.index)
        self._freeze_all_but(None)

    # --- state ---------------------------------------------------------------------------------
    def state_dict(self):
        return {"meta": {"n_layers": self.n_layers, "expanded_at": list(self.expanded_at)},
                "tensors": dict(self.tensors)}

    def load_state_dict(self, state):
        meta = state.get("meta", {})
        n_layers = meta.get("n_layers")
        self.expanded_at = [int(i) for i in meta.get("expanded_at", [])]
        self.tensors = dict(state.get("tensors", {}))
        if self.ctx is None:
            self.n_layers = n_layers
            return
        if n_layers is not None and n_layers != self.n_layers:
            raise TrainingError(f"block_expansion: the saved state is for a {n_layers}-block "
                                f"model, this one has {self.n_layers}")
        self._rebuild()

    def _rebuild(self) -> None:
        """Re-insert the blocks of every recorded expansion, then restore the frozen ones; the
        engine loads the trainable blocks' weights afterwards, by name."""
        _, layers = decoder_layers(self.ctx.model)
        if len(layers) != self.n_layers:
            raise TrainingError("block_expansion: the model is already expanded")
        for index in self.expanded_at:
            self._expand(index)
        with torch.no_grad():
            for tag, block in self._blocks():
                if tag[0] != "new":
                    continue
                for n, p in block.named_parameters():
                    saved = self.tensors.get(f"{self._key(tag)}/{n}")
                    if saved is not None:
                        p.copy_(saved)
        last = self.expanded_at[-1] if self.expanded_at else None
        self._freeze_all_but(last if self.options.per_stage else None)

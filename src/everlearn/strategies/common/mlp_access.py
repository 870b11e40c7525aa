"""Where locate-then-edit editors read keys and write values: a decoder layer's MLP
down-projection (Llama's ``mlp.down_proj``, GPT-2's ``mlp.c_proj``, ``fc2`` elsewhere), its
weight seen as d_out x d_in whatever the module stores, and hooks that capture its input
(the key) or add a vector to an output at chosen positions."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from everlearn.errors import TrainingError
from everlearn.strategies.grace import decoder_layers

_DOWN = ("down_proj", "c_proj", "fc2", "dense_4h_to_h", "w2")
_MLP = ("mlp", "feed_forward", "ffn")


def down_projection(model, layer: int, who: str) -> torch.nn.Module:
    """The MLP down-projection of decoder layer ``layer`` (0-based, in range)."""
    block = decoder_layers(model)[layer]
    for mlp_name in _MLP:
        mlp = getattr(block, mlp_name, None)
        if mlp is None:
            continue
        for name in _DOWN:
            module = getattr(mlp, name, None)
            if module is not None and hasattr(module, "weight"):
                return module
    raise TrainingError(f"{who}: decoder layer {layer} has no MLP down-projection (looked for "
                        f"{'/'.join(_MLP)}.{'/'.join(_DOWN)})")


def resolve_layer(k: int, depth: int, who: str) -> int:
    j = k + depth if k < 0 else k
    if not 0 <= j < depth:
        raise TrainingError(f"strategies: {who}: layer {k} does not exist (the model has "
                            f"{depth} layers: 0..{depth - 1} or -{depth}..-1)")
    return j


def is_transposed(module: torch.nn.Module) -> bool:
    """GPT-2's Conv1D stores its weight d_in x d_out (``x @ W``); Linear stores d_out x d_in."""
    return type(module).__name__ == "Conv1D"


def weight_matrix(module: torch.nn.Module) -> torch.Tensor:
    """The weight as d_out x d_in, float32 (a copy)."""
    w = module.weight.detach().float()
    return w.T.clone() if is_transposed(module) else w.clone()


@torch.no_grad()
def add_update(module: torch.nn.Module, delta: torch.Tensor) -> None:
    """W += delta (d_out x d_in), in the weight's dtype and layout."""
    d = delta.T if is_transposed(module) else delta
    module.weight.add_(d.to(module.weight.dtype, copy=False).to(module.weight.device))


@contextlib.contextmanager
def capture_inputs(modules: dict[int, torch.nn.Module]) -> Iterator[dict[int, list]]:
    """Inside the block, every forward of ``modules[l]`` appends its input (batch x seq x d_in,
    detached, float32) to ``found[l]``."""
    found: dict[int, list] = {layer: [] for layer in modules}
    handles = []
    for layer, module in modules.items():
        def hook(_module, args, layer=layer):
            found[layer].append(args[0].detach().float())
        handles.append(module.register_forward_pre_hook(hook))
    try:
        yield found
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def add_at_positions(module: torch.nn.Module, delta: torch.Tensor,
                     positions: list[int]) -> Iterator[None]:
    """Inside the block, ``module``'s output (a tensor, or a tuple whose first item is the
    hidden states) gets ``delta`` added at row b's position ``positions[b]``; the gradient
    reaches ``delta``."""
    rows = torch.arange(len(positions))
    cols = torch.tensor(positions)

    def hook(_module, _args, output):
        out = output[0] if isinstance(output, tuple) else output
        add = torch.zeros_like(out)
        add[rows, cols] = delta.to(out.dtype)
        new = out + add
        return (new, *output[1:]) if isinstance(output, tuple) else new

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()

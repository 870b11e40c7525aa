"""The base weights inside a PEFT model, for recyclable tuning (everlearn.runs.recycle): read
them as a plain model's, swap in another base in place, and check a new base can carry the old
adapters.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch

from everlearn.errors import ModelError


def plain_state(model) -> dict[str, torch.Tensor]:
    """Every weight of a plain (unwrapped) model by name, tied names included, as CPU copies."""
    return {n: p.detach().cpu().clone().contiguous()
            for n, p in model.named_parameters(remove_duplicate=False)}


def base_parameters(model) -> dict[str, torch.nn.Parameter]:
    """The base weights inside a PEFT-wrapped model, by their plain-model names (PEFT moves an
    adapted ``q_proj.weight`` to ``q_proj.base_layer.weight``); LoRA weights are left out."""
    inner = model.get_base_model()
    return {n.replace(".base_layer", ""): p
            for n, p in inner.named_parameters(remove_duplicate=False) if "lora_" not in n}


@torch.no_grad()
def load_base_weights(model, state: dict[str, torch.Tensor], where: str) -> None:
    """Copy a base checkpoint (plain names) into the PEFT model's base weights, in place (each
    weight keeps its dtype, e.g. bf16 storage); the adapters are left as they are."""
    params = base_parameters(model)
    missing = sorted(set(params) - set(state))
    if missing:
        raise ModelError(f"{where}: weight '{missing[0]}' is missing")
    for name, p in params.items():
        p.copy_(state[name])


def architecture_problem(old: dict[str, torch.Tensor], new: dict[str, torch.Tensor]) -> str | None:
    """Why ``new`` cannot replace ``old`` under the same adapters (None when it can)."""
    for name in old:
        if name not in new:
            return f"it has no weight '{name}'"
        if new[name].shape != old[name].shape:
            return (f"weight '{name}' has shape {tuple(new[name].shape)}, expected "
                    f"{tuple(old[name].shape)}")
    extra = sorted(set(new) - set(old))
    return f"it has an extra weight '{extra[0]}'" if extra else None


def relative_change(old: dict[str, torch.Tensor], new: dict[str, torch.Tensor]) -> float:
    """||new - old|| / ||old|| over every base weight (how far the update moved the base)."""
    diff = norm = 0.0
    for name, t in old.items():
        diff += float((new[name].float() - t.float()).pow(2).sum())
        norm += float(t.float().pow(2).sum())
    return math.sqrt(diff / max(norm, 1e-30))


def load_new_base(cfg, source: str, old_base: dict[str, torch.Tensor], old_model,
                  old_tok) -> dict[str, torch.Tensor]:
    """``recycle.new_base`` of run config ``cfg`` loaded and checked against the old base: same
    weights, shapes, model type and tokenizer (adapters and data encodings carry over only
    then)."""
    from everlearn.models.loading import load_base_model

    where = "recycle.new_base"
    mcfg = dataclasses.replace(cfg.model, name=cfg.recycle.new_base, gguf_file=None)
    name = cfg.recycle.new_base
    if name.startswith((".", "/", "~")) and not Path(name).expanduser().exists():
        raise ModelError(f"{source}: {where}: path '{name}' not found")
    try:
        new_model, new_tok = load_base_model(mcfg)
    except ModelError as exc:
        raise ModelError(f"{source}: {where}: "
                         f"{str(exc).removeprefix('model.name: ')}") from None
    old_type = getattr(old_model.config, "model_type", None)
    new_type = getattr(new_model.config, "model_type", None)
    state = plain_state(new_model)
    problem = (f"model type {new_type!r}, expected {old_type!r}" if new_type != old_type
               else architecture_problem(old_base, state))
    if problem is None and new_tok.get_vocab() != old_tok.get_vocab():
        problem = "its tokenizer's vocabulary differs"
    if problem:
        raise ModelError(f"{source}: {where}: '{name}' is not the architecture of "
                         f"model.name '{cfg.model.name}': {problem}")
    del new_model
    return state

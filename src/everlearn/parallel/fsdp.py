"""Sharded data parallelism with PyTorch FSDP2 (``fully_shard``) under an accelerate FSDP config.

``accelerate launch --config_file examples/accelerate/fsdp.yaml`` (or torchrun with the same
``ACCELERATE_USE_FSDP`` / ``FSDP_*`` environment variables) shards the model: each decoder layer
(the wrap policy's modules) and then the model itself become FSDP units, so every process keeps 1/N
of the weights, gradients and AdamW state and gathers a unit's weights only while it runs.
Everything else stays as in the hand-written data parallelism of everlearn.parallel.data_parallel:
the same batch plan, each process training on its rows of every batch with its share of the loss.
FSDP reduce-scatters the gradients instead of the hand all-reduce, set to sum (not average) so the
step is the one-process step; evaluation is replicated (every process scores every record with the
same calls, since each forward pass gathers weights collectively) and rank 0's scores are kept;
checkpoints gather full tensors, so they are the one-process files.

Only strategies that work on data (and forward passes every rank makes alike) are supported (each
strategy says so in ``Strategy.unsupported_parallel``); the others read or rewrite whole weights or
gradients, or change the parameter set, and a run with them stops at once with a one-line error.
See docs/distributed.md.

Step checkpoints hold optimizer state, which is sharded like the weights: the trainer gathers
each AdamW moment with :func:`full` and lays it out again with :func:`like` on resume (see
everlearn.training.step_checkpoint.PhaseParts), so they too are the one-process files.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

from everlearn.errors import ConfigError
from everlearn.models.wrapped import hf_model
from everlearn.parallel.data_parallel import DataParallel
from everlearn.stages import get_kind


def requested() -> bool:
    """Whether the launcher asked for FSDP (``accelerate launch`` with an FSDP config sets
    ``ACCELERATE_USE_FSDP=true``) in a multi-process run."""
    return (os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
            and int(os.environ.get("WORLD_SIZE", "1") or 1) > 1)


@dataclass
class Settings:
    """What everlearn takes from the accelerate FSDP config."""

    reshard_after_forward: bool  # True: FULL_SHARD; False: SHARD_GRAD_OP (weights kept gathered
    #                              between forward and backward)
    plugin: object  # accelerate's FullyShardedDataParallelPlugin (wrap policy)


def settings() -> Settings:
    """The FSDP settings of the launcher's environment; a one-line error for those everlearn
    does not honour (FSDP1, CPU offload, activation checkpointing, ignored modules)."""
    where = "accelerate config: fsdp_config"
    version = os.environ.get("FSDP_VERSION", "1")
    if version != "2":
        raise ConfigError(f"{where}.fsdp_version: {version} is not supported: everlearn shards "
                          "with FSDP2 (fully_shard); set fsdp_version: 2 "
                          "(examples/accelerate/fsdp.yaml)")
    for var, key in (("FSDP_OFFLOAD_PARAMS", "fsdp_offload_params"),
                     ("FSDP_ACTIVATION_CHECKPOINTING", "fsdp_activation_checkpointing")):
        if os.environ.get(var, "false").lower() == "true":
            raise ConfigError(f"{where}.{key}: true is not supported by everlearn; set it to "
                              "false")
    if os.environ.get("FSDP_IGNORED_MODULES"):
        raise ConfigError(f"{where}.fsdp_ignored_modules: not supported by everlearn; remove it")
    from accelerate.utils import FullyShardedDataParallelPlugin

    try:
        plugin = FullyShardedDataParallelPlugin()  # parses the FSDP_* variables
    except (ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{where}: {first}") from None
    return Settings(bool(plugin.reshard_after_forward), plugin)


def check_run(strategies: list[str], stage_kinds: list[str], recycle: bool, text_stream: bool,
              source: str) -> None:
    """A one-line error, before anything is written, for what FSDP cannot run."""
    if not requested():
        return
    if recycle:
        raise ConfigError(f"{source}: recycle: not supported under FSDP; run it without the "
                          "FSDP config (examples/accelerate/ddp.yaml or torchrun)")
    for name in strategies:
        why = refusal(name)
        if why is not None:
            raise ConfigError(f"{source}: strategies: '{name}' is not supported under FSDP ("
                              f"{why}); supported: {', '.join(supported())}; or run without "
                              "sharding (examples/accelerate/ddp.yaml)")
    if any(get_kind(k).edits for k in stage_kinds):
        raise ConfigError(f"{source}: stages: edit stages are not supported under FSDP "
                          "(constrained fine-tuning bounds whole weights); run without "
                          "sharding (examples/accelerate/ddp.yaml)")
    if text_stream:
        raise ConfigError(f"{source}: text_stream: not supported under FSDP (AdamW's state "
                          "is carried over boundaries unsharded); run without sharding "
                          "(examples/accelerate/ddp.yaml)")


def refusal(name: str) -> str | None:
    """Why strategy ``name`` cannot run under FSDP, as it declares (None: it can)."""
    from everlearn.strategies import STRATEGIES, Strategy

    return STRATEGIES.get(name, Strategy).unsupported_parallel.get("fsdp")


def supported() -> list[str]:
    """The registered strategies that run under FSDP, by name."""
    from everlearn.strategies import STRATEGIES

    return sorted(n for n in STRATEGIES if refusal(n) is None)


def _fsdp_module_type():
    from torch.distributed.fsdp import FSDPModule

    return FSDPModule


def is_sharded(model) -> bool:
    """Whether ``model`` (or a module inside it) is an FSDP unit."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return False
    kind = _fsdp_module_type()
    return any(isinstance(m, kind) for m in model.modules())


def reshard(model) -> None:
    """Put every FSDP unit back into its sharded state. A unit that does not reshard after
    forward (the root; every unit under SHARD_GRAD_OP) stays gathered after an evaluation pass,
    and then ``model.parameters()`` are its gathered tensors, not the sharded parameters that
    the optimizer must hold."""
    kind = _fsdp_module_type()
    for m in model.modules():
        if isinstance(m, kind):
            m.reshard()


def shard(model, cfg: Settings):
    """Apply ``fully_shard`` to the wrap policy's modules (the decoder layers), then to the
    causal LM itself (inside a PEFT wrapper, so that ``generate`` and PEFT's forward both go
    through the root unit). Gradients are summed over the ranks, not averaged: each rank's loss
    is already weighted by its share of the batch (see
    everlearn.parallel.data_parallel.ShardPlan)."""
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
    from torch.distributed.fsdp import fully_shard

    from everlearn.parallel.collectives import broadcast_parameters

    base = hf_model(model)
    # every rank starts from rank 0's trainable weights, as in the replicated design (they are
    # seeded anyway; frozen weights come from the same files)
    broadcast_parameters([p for p in base.parameters() if p.requires_grad])
    try:
        policy = fsdp2_prepare_auto_wrap_policy(cfg.plugin, base)
    except ValueError as exc:
        raise ConfigError(f"accelerate config: fsdp_config.fsdp_transformer_layer_cls_to_wrap: "
                          f"{exc}") from None
    kind = _fsdp_module_type()
    units = 0
    if policy is not None:
        for module in _bottom_up(base)[:-1]:
            if policy(module) and not isinstance(module, kind):
                fully_shard(module, reshard_after_forward=cfg.reshard_after_forward)
                units += 1
    fully_shard(base, reshard_after_forward=cfg.reshard_after_forward)
    for m in base.modules():
        if isinstance(m, kind):
            m.set_gradient_divide_factor(1.0)
            m.set_force_sum_reduction_for_comms(True)  # plain SUM (gloo has no PREMUL_SUM)
    # transformers' generate() then keeps every rank stepping until all have finished
    # (synced_gpus), should their continuations ever differ in length
    base._is_fsdp_managed_module = True
    logging.getLogger("everlearn").info(
        "FSDP: model sharded over %d processes in %d units (%d by the wrap policy, then the "
        "model), reshard_after_forward=%s", torch.distributed.get_world_size(), units + 1, units,
        cfg.reshard_after_forward)
    return units + 1


def _bottom_up(module) -> list:
    """Modules children first, the root last (nested units before the unit around them)."""
    out = []
    for child in module.children():
        out.extend(_bottom_up(child))
    out.append(module)
    return out


def full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a sharded parameter (a collective: every rank must call it)."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def like(param: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``value`` (a whole tensor) laid out as ``param``: this rank's shard when ``param`` is
    sharded (every rank must call it, with the same value)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if not isinstance(param, DTensor):
        return value
    return distribute_tensor(value.to(param.device, param.dtype), param.device_mesh,
                             param.placements)


class Sharded(DataParallel):
    """The training loop's FSDP mode: the data-parallel split, FSDP's reduce-scatter (summing,
    see :func:`shard`) instead of the hand all-reduce, and no broadcast (the shards came from
    rank 0's weights when the model was sharded)."""

    sharded = True

    def start_from_rank_zero(self) -> None:
        """Nothing: :func:`shard` started every rank from rank 0's weights."""

    def reduce(self) -> None:
        """Nothing: FSDP reduce-scattered the gradients during backward."""

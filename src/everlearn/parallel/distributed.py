"""Multi-process runs (``torchrun``, ``accelerate launch``): joining, launcher checks, agreement.

Every rank holds the whole model (replicated; under an FSDP config it is sharded instead, see
everlearn.parallel.fsdp), draws the same batch plan as a one-process run and trains on its rows of
each batch (everlearn.parallel.data_parallel); the gradients are summed across ranks after
backward, so every rank takes the same optimizer step. Evaluation shards each stage's test records
and gathers the per-record scores. Strategies run their hooks on every rank with the same seeds and
the same examples, so buffers, Fisher and importance estimates, reference gradients and teachers
come out the same everywhere; :func:`check_consistent` verifies it after every phase. Only rank 0
writes the run directory. See docs/distributed.md.

The rank and world size come from accelerate's process state (the run's Accelerator creates the
process group: gloo on CPU, NCCL on GPUs). Without a launcher every helper here is a no-op and a
run is exactly the one-process run. The collectives live in everlearn.parallel.collectives (so the
parallel modes reach them without importing this module's launcher checks) and are re-exported
here for the callers that use ``dist.rank()`` and the like.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import torch

from everlearn.errors import ConfigError, TrainingError
from everlearn.parallel.collectives import (  # noqa: F401  (re-exported: callers use dist.rank())
    active,
    all_reduce_gradients,
    barrier,
    broadcast_object,
    broadcast_parameters,
    gather_objects,
    is_main,
    main_first,
    rank,
    sum_values,
    world_size,
)

# accelerate launch sets this for the back-end everlearn does not drive (FSDP: see
# everlearn.parallel.fsdp; DeepSpeed ZeRO 1/2: everlearn.parallel.zero)
_REFUSED = {"ACCELERATE_USE_MEGATRON_LM": "MEGATRON_LM"}


def launched() -> bool:
    """Whether a launcher started several processes (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def _refused(kind: str) -> ConfigError:
    return ConfigError(f"accelerate config: distributed_type {kind} is not supported: everlearn "
                       "runs its own training loop (strategies hook into it), not a Megatron-LM "
                       "engine; for sharded weights, gradients and optimizer state use "
                       "distributed_type FSDP (examples/accelerate/fsdp.yaml) or DEEPSPEED "
                       "(examples/accelerate/deepspeed_zero2.yaml), else MULTI_GPU "
                       "(examples/accelerate/ddp.yaml) or torchrun")


def check_launcher() -> None:
    """A one-line error for launcher settings the run cannot honour (Megatron-LM, FSDP settings
    other than everlearn's FSDP2 sharding, DeepSpeed settings other than ZeRO 1/2)."""
    for var, name in _REFUSED.items():
        if os.environ.get(var, "false").lower() == "true":
            raise _refused(name)
    from everlearn.parallel import fsdp

    if fsdp.requested():
        fsdp.settings()
    from everlearn.parallel import zero

    if zero.requested():
        zero.settings()


def check_run(strategies: list[str], stage_kinds: list[str], source: str, *,
              recycle: bool = False, text_stream: bool = False,
              checkpoint_every: int = 0) -> None:
    """A one-line error, before anything is written, for what the launcher's sharding back-end
    (FSDP: everlearn.parallel.fsdp; DeepSpeed ZeRO: everlearn.parallel.zero) cannot run; nothing
    without one."""
    from everlearn.parallel import fsdp, zero

    fsdp.check_run(strategies, stage_kinds, recycle, text_stream, source)
    zero.check_run(strategies, stage_kinds, recycle, text_stream, checkpoint_every, source)


def check_accelerator(acc) -> None:
    """The same check on a created Accelerator (its ``distributed_type``)."""
    kind = str(getattr(acc, "distributed_type", "")).rsplit(".", 1)[-1].upper()
    if kind == "MEGATRON_LM":  # (DeepSpeed: hidden from accelerate, see everlearn.parallel.zero)
        raise _refused(kind)


def init() -> None:
    """Join the process group when launched with several processes (idempotent).

    accelerate's ``PartialState`` initialises it from the launcher's environment, as the run's
    Accelerator would; done early so that ranks can agree on a run directory before it exists.
    """
    check_launcher()
    if launched() and not active():
        from accelerate.state import PartialState

        from everlearn.parallel import zero

        with zero.hidden_from_accelerate():
            PartialState(cpu=not torch.cuda.is_available())  # the run's Accelerator's choice


def shutdown() -> None:
    """Leave the process group (a process that exits with gloo's threads still running is
    aborted by the C++ runtime: "terminate called without an active exception")."""
    if active():
        torch.distributed.destroy_process_group()


def _rounded(value: Any) -> Any:
    """JSON-able ``value`` with floats at 6 significant digits (GPU kernels may differ in ulps
    between processes; a real divergence differs far more)."""
    if isinstance(value, float):
        return float(f"{value:.6g}")
    if isinstance(value, dict):
        return {str(k): _rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v) for v in value]
    return value


def fingerprint(tensors: dict[str, torch.Tensor], meta: Any = None) -> dict[str, Any]:
    """A small summary of named tensors (shape, sum, sum of squares) and of JSON-able meta."""
    out: dict[str, Any] = {}
    for name in sorted(tensors):
        t = tensors[name].detach().to(torch.float64)
        out[name] = (list(t.shape), float(t.sum()), float((t * t).sum()))
    return {"tensors": out, "meta": json.dumps(_rounded(meta), sort_keys=True, default=str)}


def check_consistent(what: str, tensors: dict[str, torch.Tensor], meta: Any = None,
                     rtol: float = 1e-4) -> None:
    """Raise when the ranks disagree on ``tensors`` / ``meta`` (trainable weights, strategy
    state): every rank must hold the same model and strategy state after a phase."""
    if world_size() == 1:
        return
    mine = fingerprint(tensors, meta)
    ranks = gather_objects(mine)
    ref = ranks[0]
    for r, other in enumerate(ranks[1:], 1):
        if other["meta"] != ref["meta"] or set(other["tensors"]) != set(ref["tensors"]):
            raise TrainingError(f"{what}: rank {r} disagrees with rank 0 (different structure "
                                "or metadata); a strategy behaves differently across processes")
        for name, (shape, s, sq) in other["tensors"].items():
            shape0, s0, sq0 = ref["tensors"][name]
            scale = (sq0 * max(1, math.prod(shape0))) ** 0.5  # bounds |sum| (Cauchy-Schwarz)
            if (shape != shape0 or abs(s - s0) > rtol * scale + 1e-12
                    or abs(sq - sq0) > rtol * sq0 + 1e-12):
                raise TrainingError(f"{what}: rank {r} disagrees with rank 0 on '{name}'; a "
                                    "strategy behaves differently across processes")

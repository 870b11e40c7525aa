"""Multi-process runs (``torchrun``, ``accelerate launch``): data parallel by hand.

Every rank holds the whole model (replicated; under an FSDP config it is sharded instead, see
everlearn.parallel.fsdp), draws the same batch plan as a one-process run and trains on its rows of
each
batch; the gradients are summed across ranks after backward, so every rank takes the same
optimizer step. Evaluation shards each stage's test records and gathers the per-record scores.
Strategies run their hooks on every rank with the same seeds and the same examples, so buffers,
Fisher and importance estimates, reference gradients and teachers come out the same everywhere;
:func:`check_consistent` verifies it after every phase. Only rank 0 writes the run directory.
See docs/distributed.md.

The rank and world size come from accelerate's process state (the run's Accelerator creates the
process group: gloo on CPU, NCCL on GPUs). Without a launcher every helper here is a no-op and a
run is exactly the one-process run.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator
from typing import Any

import torch

from everlearn.errors import ConfigError, TrainingError

# accelerate launch sets this for the back-end everlearn does not drive (FSDP: see
# everlearn.parallel.fsdp; DeepSpeed ZeRO 1/2: everlearn.parallel.zero)
_REFUSED = {"ACCELERATE_USE_MEGATRON_LM": "MEGATRON_LM"}
_BUCKET = 1 << 26  # elements per flattened all-reduce buffer (256 MB of fp32)


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
    if launched() and not _active():
        from accelerate.state import PartialState

        from everlearn.parallel import zero

        with zero.hidden_from_accelerate():
            PartialState(cpu=not torch.cuda.is_available())  # the run's Accelerator's choice


def shutdown() -> None:
    """Leave the process group (a process that exits with gloo's threads still running is
    aborted by the C++ runtime: "terminate called without an active exception")."""
    if _active():
        torch.distributed.destroy_process_group()


def _active() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def world_size() -> int:
    if not _active():
        return 1
    from accelerate.state import PartialState

    return PartialState().num_processes


def rank() -> int:
    if not _active():
        return 0
    from accelerate.state import PartialState

    return PartialState().process_index


def is_main() -> bool:
    """Rank 0: the one process that writes files and prints."""
    return rank() == 0


def barrier() -> None:
    if world_size() > 1:
        torch.distributed.barrier()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (it may fill a cache on disk), then the other ranks."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if world_size() == 1:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def sum_values(values: list[float], device: torch.device | str = "cpu") -> list[float]:
    """Element-wise sums over the ranks (float64)."""
    if world_size() == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return t.tolist()


def _buckets(params: list[torch.Tensor]) -> Iterator[list[torch.Tensor]]:
    chunk, size = [], 0
    for p in params:
        chunk.append(p)
        size += p.numel()
        if size >= _BUCKET:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def all_reduce_gradients(params: list[torch.nn.Parameter]) -> None:
    """Sum ``.grad`` of ``params`` over the ranks, in place, through flattened fp32 buffers.

    A gradient missing on a rank counts as zero; one missing on every rank stays None (the
    optimizer then skips that weight, as in a one-process run). The presence flags ride in the
    first buffer, so a model up to ``_BUCKET`` elements costs one all-reduce per step.
    """
    if world_size() == 1 or not params:
        return
    device = params[0].device
    present = torch.tensor([p.grad is not None for p in params], dtype=torch.float32,
                           device=device)
    flags = None
    start = 0
    for k, chunk in enumerate(_buckets(params)):
        parts = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                 .to(torch.float32) for p in chunk]
        if k == 0:
            parts.append(present)
        flat = torch.cat(parts)
        torch.distributed.all_reduce(flat)
        if k == 0:
            flags = flat[-len(params):].tolist()
        off = 0
        for j, p in enumerate(chunk):
            n = p.numel()
            p.grad = (flat[off:off + n].view_as(p).to(p.dtype)
                      if flags[start + j] > 0 else None)
            off += n
        start += len(chunk)


@torch.no_grad()
def broadcast_parameters(params: list[torch.Tensor]) -> None:
    """Copy rank 0's values of ``params`` to every rank (as DDP does when it wraps a model)."""
    if world_size() == 1 or not params:
        return
    for chunk in _buckets(params):
        flat = torch.cat([p.detach().reshape(-1).to(torch.float32) for p in chunk])
        torch.distributed.broadcast(flat, src=0)
        off = 0
        for p in chunk:
            p.copy_(flat[off:off + p.numel()].view_as(p))
            off += p.numel()


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

"""The process group and its collectives: rank, world size, object and gradient exchange.

The low level of everlearn.parallel, imported by every parallel mode (data parallel by hand in
everlearn.parallel.data_parallel, FSDP in everlearn.parallel.fsdp) and by the launcher checks of
everlearn.parallel.distributed, so none of them imports another's module to reach a collective.
Without a process group every helper here is a no-op (one process).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

BUCKET = 1 << 26  # elements per flattened all-reduce buffer (256 MB of fp32)


def active() -> bool:
    """Whether this process has joined a process group."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def world_size() -> int:
    if not active():
        return 1
    from accelerate.state import PartialState

    return PartialState().num_processes


def rank() -> int:
    if not active():
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
        if size >= BUCKET:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def all_reduce_gradients(params: list[torch.nn.Parameter]) -> None:
    """Sum ``.grad`` of ``params`` over the ranks, in place, through flattened fp32 buffers.

    A gradient missing on a rank counts as zero; one missing on every rank stays None (the
    optimizer then skips that weight, as in a one-process run). The presence flags ride in the
    first buffer, so a model up to ``BUCKET`` elements costs one all-reduce per step.
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

"""Per-example gradients of the trainable weights, many examples in one batched pass.

Importance estimates (EWC's Fisher, MAS's Omega) are means over examples of a function of each
example's *own* gradient, so they cannot use one gradient of a batch. The plain way is one
forward and backward per example; here ``torch.func.vmap(grad(f))`` over
``torch.func.functional_call`` differentiates the same per-example function ``f`` for every
example of a chunk at once (the matrix products of the whole chunk run as one). Exact, not an
approximation: the per-example gradients equal the loop's to float rounding (sums of the batched
products run in another order).

Why right padding and no attention mask: in a causal LM a position attends to itself and the
positions before it only, so with the padding on the right each real position computes what it
computes unpadded, and the positions read (an example's answer positions) are all real. The
mask is also what vmap cannot take: transformers inspects it (``mask.all()``) to choose the
attention kernel, data-dependent control flow that vmap refuses.

Each example's answer positions are padded to the chunk's longest answer with a repeat of its
last position and a ``valid`` flag of 0, so every example has the same shape, as vmap needs.

Memory: a chunk holds its examples' activations, as a training batch of that size does, and one
fp32 gradient per example and trainable weight; :func:`chunk_size` bounds the latter.

Where the loop runs instead (one forward and backward per example): on a CPU by default
(:func:`default_chunk`: no faster there), examples with images (the vision tower's inputs
differ in shape per example), a chunk of one (e.g. full fine-tuning of a model whose
per-example gradient alone exceeds the budget), and a model whose forward vmap cannot run
(data-dependent control flow, an operator without a batching rule: ``try_batched`` logs it and
the loop takes over for the rest of the pass).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Callable

import torch

from everlearn.data.encode import IGNORE, image_inputs
from everlearn.models.wrapped import hf_model

log = logging.getLogger(__name__)

Tensors = dict[str, torch.Tensor]
# (answer logits (P, V) fp32, valid (P,) bool, extra per-example tensor) -> scalar
Objective = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

GRAD_BUDGET_BYTES = 1 << 28  # per-example fp32 gradients a chunk may hold (256 MiB)
MAX_CHUNK = 8  # examples per chunk at most (a training batch's worth of activations)
_REFUSED: set[str] = set()  # model classes vmap could not run (logged once each)


def chunk_size(params: dict[str, torch.Tensor], most: int = MAX_CHUNK,
               budget: int = GRAD_BUDGET_BYTES) -> int:
    """Examples per batched pass: at most ``most``, and no more than ``budget`` bytes of
    per-example fp32 gradients (LoRA on a 135M model: 8; full fine-tuning of it: 1)."""
    per_example = 4 * sum(p.numel() for p in params.values())
    return max(1, min(most, budget // max(per_example, 1)))


def default_chunk(params: dict[str, torch.Tensor]) -> int:
    """The chunk size importance passes use: :func:`chunk_size` on an accelerator, 1 (the
    loop) on a CPU. The work is the same either way; what batching buys is fuller use of the
    device, and on a CPU one thread's matrix products are as efficient for one example as for
    eight: on the 2-core AMD EPYC of docs/benchmarks.md ("Importance passes") the batched pass
    took 1.0-1.1x the loop's CPU time and, with its larger working set, more wall time."""
    p = next(iter(params.values()), None)
    return 1 if p is None or p.device.type == "cpu" else chunk_size(params)


def forward_options(model) -> dict:
    """The keyword arguments the (PEFT-wrapped or plain) model's forward takes of
    ``use_cache`` (off: no KV cache is built) and ``logits_to_keep`` (True: the head runs at
    the answer positions only)."""
    base = hf_model(model)
    try:
        names = inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return {}, False
    return ({"use_cache": False} if "use_cache" in names else {}), "logits_to_keep" in names


def answer_positions(labels: torch.Tensor) -> torch.Tensor:
    """(P,) positions of one example (labels (L,)) whose logits predict a supervised token."""
    return (labels[1:] != IGNORE).nonzero().squeeze(-1)


def answer_logits(model, input_ids: torch.Tensor, positions: torch.Tensor,
                  weights: Tensors | None = None, **inputs) -> torch.Tensor:
    """(P, V) fp32 logits of one example (input_ids (1, L)) at ``positions``; with
    ``weights``, through ``functional_call`` (the trainable weights replaced by them)."""
    options, keep = forward_options(model)
    kwargs = {"input_ids": input_ids, **options, **inputs}
    if keep:
        kwargs["logits_to_keep"] = positions
    if weights is None:
        logits = model(**kwargs).logits[0]
    else:
        logits = torch.func.functional_call(model, weights, args=(), kwargs=kwargs).logits[0]
    return (logits if keep else logits[positions]).to(torch.float32)


def stack_chunk(batches: list[dict]) -> dict[str, torch.Tensor]:
    """Single-example batches right-padded into one: ``input_ids`` (B, L), ``positions`` and
    ``valid`` (B, P) (answer positions padded with a repeat of the last one, valid 0)."""
    ids = [b["input_ids"][0] for b in batches]
    pos = [answer_positions(b["labels"][0]) for b in batches]
    width, most = max(len(i) for i in ids), max(len(p) for p in pos)
    device = ids[0].device
    out_ids = torch.zeros((len(ids), width), dtype=torch.long, device=device)
    positions = torch.zeros((len(ids), most), dtype=torch.long, device=device)
    valid = torch.zeros((len(ids), most), dtype=torch.bool, device=device)
    for k, (i, p) in enumerate(zip(ids, pos)):
        out_ids[k, :len(i)] = i
        positions[k, :len(p)] = p
        positions[k, len(p):] = p[-1]
        valid[k, :len(p)] = True
    return {"input_ids": out_ids, "positions": positions, "valid": valid}


def batched_grads(model, params: dict[str, torch.Tensor], chunk: dict[str, torch.Tensor],
                  extra: torch.Tensor, objective: Objective, autocast=None) -> Tensors:
    """Per-example gradients {name: (B, *shape)} of ``objective`` for the examples of
    ``chunk`` (from :func:`stack_chunk`), ``extra`` (B, ...) being each one's own input."""
    weights = {n: p.detach() for n, p in params.items()}

    def one(w, input_ids, positions, valid, ex):
        with autocast() if autocast is not None else contextlib.nullcontext():
            logits = answer_logits(model, input_ids[None], positions, weights=w)
        return objective(logits, valid, ex)

    per_example = torch.func.vmap(torch.func.grad(one), in_dims=(None, 0, 0, 0, 0))
    return per_example(weights, chunk["input_ids"], chunk["positions"], chunk["valid"], extra)


def can_batch(model, batches: list[dict], size: int) -> bool:
    """Whether the batched pass may run: chunks of more than one text-only example, on a
    model class vmap has not refused before."""
    return (size > 1 and len(batches) > 1 and type(model).__name__ not in _REFUSED
            and not any(image_inputs(b) for b in batches))


def try_batched(model, params, chunk, extra, objective, autocast=None) -> Tensors | None:
    """:func:`batched_grads`, or None and a log line where it fails (the caller then loops
    over the examples). A failure of vmap itself (data-dependent control flow in the model's
    forward, an operator without a batching rule) is remembered for the model's class."""
    try:
        return batched_grads(model, params, chunk, extra, objective, autocast)
    except (RuntimeError, NotImplementedError) as exc:
        name, first = type(model).__name__, (str(exc).splitlines() or [""])[0][:200]
        if isinstance(exc, NotImplementedError) or "vmap" in first:
            _REFUSED.add(name)
        log.warning("per-example gradients: the batched pass failed on %s (%s); one forward "
                    "and backward per example instead", name, first)
        return None

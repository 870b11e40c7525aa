"""What a step checkpoint holds beyond the weights, flattened to tensors and JSON (no pickle).

A phase resumed mid-way must continue exactly as the uninterrupted phase would have: the
AdamW moments, the learning-rate schedule's position, every random-number generator that
training draws from (Python's, numpy's, torch's CPU and CUDA generators, and the batch
order's), and the position in the batch plan. Each piece is turned into safetensors tensors
and JSON values here, and put back from them. Python floats survive JSON exactly (``repr``
round-trips), and so do tensors in safetensors, so a resumed phase computes bit for bit what
the uninterrupted one computes.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from everlearn.data.encode import length_grouped_batches
from everlearn.errors import ResumeError


# --- random-number generators ------------------------------------------------------------------
def python_rng_state(rng) -> list:
    """``random.Random.getstate()`` as JSON (its inner tuple becomes a list); ``rng`` may also
    be the ``random`` module (its global generator)."""
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def set_python_rng_state(rng, state: list) -> None:
    version, internal, gauss = state
    rng.setstate((int(version), tuple(int(x) for x in internal), gauss))


def global_rng_state() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The process-wide generators: Python's ``random``, numpy's legacy global one, torch's CPU
    generator and every CUDA device's."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    meta = {"python": python_rng_state(random),
            "numpy": [kind, int(pos), int(has_gauss), float(cached)]}
    tensors = {"torch": torch.get_rng_state(), "numpy": torch.from_numpy(keys.astype(np.int64))}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda/{i}"] = state
    return meta, tensors


def set_global_rng_state(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    set_python_rng_state(random, meta["python"])
    kind, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, tensors["numpy"].numpy().astype(np.uint32), pos, has_gauss,
                         cached))
    torch.set_rng_state(tensors["torch"])
    cuda = sorted((int(k.split("/")[1]), v) for k, v in tensors.items() if k.startswith("cuda/"))
    if cuda and torch.cuda.is_available():
        n = torch.cuda.device_count()
        for i, state in cuda:
            if i < n:
                torch.cuda.set_rng_state(state, i)


# --- nested tensors in one flat safetensors dict ----------------------------------------------
def flatten(groups: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """``{group: {name: tensor}}`` as ``{"group/name": tensor}`` (contiguous, as safetensors
    wants); a group may not contain "/"."""
    return {f"{group}/{name}": t.contiguous() for group, part in groups.items()
            for name, t in part.items()}


def unflatten(tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Inverse of :func:`flatten`."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        group, name = key.split("/", 1)
        out.setdefault(group, {})[name] = t
    return out


# --- optimizer and learning-rate schedule ------------------------------------------------------
def optimizer_state(optimizer: torch.optim.Optimizer, names: list[str], whole=None
                    ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """An optimizer's ``state_dict`` as tensors ``"<param index>/<key>"`` and JSON (its
    param groups, non-tensor per-parameter values, and the parameter names in order).
    ``whole`` turns a sharded state tensor into the whole one (FSDP: a collective)."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                value = whole(value) if whole is not None else value
                tensors[f"{idx}/{key}"] = value.detach().cpu()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()}
              for g in sd["param_groups"]]
    return {"param_groups": groups, "scalars": scalars, "params": names}, tensors


def load_optimizer_state(optimizer: torch.optim.Optimizer, meta: dict[str, Any],
                         tensors: dict[str, torch.Tensor], place=None) -> None:
    """Load what :func:`optimizer_state` returned; ``place(param index, key, tensor)`` lays a
    whole tensor out like its parameter (FSDP: this rank's shard; a collective)."""
    state: dict[int, dict[str, Any]] = {}
    for name in sorted(tensors, key=lambda n: (int(n.split("/", 1)[0]), n)):  # same order
        idx, key = name.split("/", 1)  # on every rank: placing may be a collective
        value = tensors[name]
        state.setdefault(int(idx), {})[key] = (place(int(idx), key, value) if place is not None
                                               else value)
    for idx, values in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(values)
    groups = [{k: tuple(v) if isinstance(v, list) and k != "params" else v
               for k, v in g.items()} for g in meta["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def scheduler_state(scheduler) -> dict[str, Any]:
    """A ``LambdaLR``'s state (transformers' schedules): plain numbers and lists."""
    return {k: v for k, v in scheduler.state_dict().items()}


# --- the batch plan ------------------------------------------------------------------------
class BatchStream:
    """Endless epochs of freshly shuffled, length-grouped batches, resumable at any batch.

    The state is the order RNG's state before the current epoch was drawn, the epoch number and
    the batches of it already handed out: restoring redraws that epoch and skips them.
    """

    def __init__(self, lengths: list[int], batch_size: int, rng: random.Random, group: bool):
        self.lengths, self.batch_size, self.rng, self.group = lengths, batch_size, rng, group
        self.epoch, self.pos = -1, 0
        self._plan: list[list[int]] = []
        self._epoch_rng: list = python_rng_state(rng)

    def _next_epoch(self) -> None:
        self._epoch_rng = python_rng_state(self.rng)
        self._plan = length_grouped_batches(self.lengths, self.batch_size, self.rng, self.group)
        self.epoch, self.pos = self.epoch + 1, 0

    def __next__(self) -> list[int]:
        while self.pos >= len(self._plan):
            self._next_epoch()
        self.pos += 1
        return self._plan[self.pos - 1]

    def __iter__(self):
        return self

    def state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "pos": self.pos, "rng": self._epoch_rng,
                "examples": len(self.lengths), "lengths": _digest(self.lengths)}

    def check(self, state: dict[str, Any], where: str) -> None:
        """ResumeError unless ``state`` was taken on these examples (their count and lengths)."""
        if state["examples"] != len(self.lengths) or state["lengths"] != _digest(self.lengths):
            raise ResumeError(f"{where}: the phase has {len(self.lengths)} training examples, "
                              f"the checkpoint {state['examples']} (or other lengths); the "
                              "data changed since the run started")

    def load(self, state: dict[str, Any]) -> None:
        set_python_rng_state(self.rng, state["rng"])
        self.epoch, self.pos = state["epoch"], state["pos"]
        if self.epoch >= 0:  # redraw the current epoch from the RNG state it was drawn with
            self._plan = length_grouped_batches(self.lengths, self.batch_size, self.rng,
                                                self.group)
        else:
            self._plan = []


def _digest(lengths: list[int]) -> str:
    import hashlib

    return hashlib.sha256(",".join(map(str, lengths)).encode()).hexdigest()[:16]

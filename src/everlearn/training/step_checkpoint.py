"""Step checkpoints of a phase in progress: what they hold, writing one, resuming from one.

The loop writes one every ``train.checkpoint_every`` steps and when Ctrl-C or SIGTERM arrives
(at the end of the step); a resumed phase continues from it exactly (everlearn.training.stepstate
holds the tensor and RNG helpers).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import torch

from everlearn.errors import ResumeError
from everlearn.parallel import fsdp
from everlearn.parallel.collectives import gather_objects, is_main, rank
from everlearn.training import stepstate

log = logging.getLogger("everlearn")


class PhaseParts:
    """The parts of a phase in progress that a step checkpoint saves and restores: trainable
    weights, optimizer, schedule, batch position, the strategies' in-stage state and every
    RNG (per rank: ranks may draw different amounts, e.g. dropout on rows of other sizes).

    Under FSDP the weights and AdamW moments are sharded: every rank gathers whole tensors
    (collectives, in the same order everywhere) and rank 0 writes them, so a step checkpoint
    holds the one-process tensors; on restore every rank takes its shard of them again.
    """

    def __init__(self, params, optimizer, scheduler, batches, strategy, sharded: bool = False):
        self.params, self.optimizer, self.scheduler = params, optimizer, scheduler
        self.batches, self.strategy, self.sharded = batches, strategy, sharded

    def snapshot(self, step: int, info: dict[str, Any], counters: dict[str, Any]):
        """({group: tensors}, meta) on rank 0, (None, None) on the others (they send their
        RNG state, and under FSDP their shards)."""
        rng = gather_objects(stepstate.global_rng_state())
        if self.sharded:  # every rank takes part in gathering the whole tensors
            weights = {n: fsdp.full(p.detach()).cpu()
                       for n, p in zip(info["params"], self.params)}
            opt_meta, opt_tensors = stepstate.optimizer_state(self.optimizer, info["params"],
                                                              whole=fsdp.full)
        if not is_main():
            return None, None
        if not self.sharded:
            weights = {n: p.detach().cpu() for n, p in zip(info["params"], self.params)}
            opt_meta, opt_tensors = stepstate.optimizer_state(self.optimizer, info["params"])
        strat = self.strategy.step_state()
        state = {f"strategy/{k}": v for k, v in strat.get("tensors", {}).items()}
        for r, (_, tensors) in enumerate(rng):
            state.update({f"rng/{r}/{k}": v for k, v in tensors.items()})
        meta = {**info, "step": step, "counters": counters, "batches": self.batches.state(),
                "optimizer": opt_meta, "scheduler": stepstate.scheduler_state(self.scheduler),
                "rng": [m for m, _ in rng], "strategy": strat.get("meta", {})}
        return {"trainable": weights, "optimizer": opt_tensors, "state": state}, meta

    def restore(self, ckpt: dict[str, Any], info: dict[str, Any]) -> tuple[int, dict]:
        """Put a step checkpoint back; (its step, its counters). Everything is checked before
        anything changes, so a ResumeError leaves the phase at its start."""
        meta, tensors = ckpt["meta"], ckpt["tensors"]
        where = ckpt.get("where", "step checkpoint")
        for key in ("phase", "stages", "total_steps", "params"):
            if meta.get(key) != info[key]:
                raise ResumeError(f"{where}: {key}: the checkpoint has {meta.get(key)!r}, the "
                                  f"phase {info[key]!r}")
        weights = tensors.get("trainable", {})
        for name, p in zip(info["params"], self.params):
            if name not in weights or weights[name].shape != p.shape:
                raise ResumeError(f"{where}: state.safetensors: weight '{name}' missing or "
                                  "of another shape")
        self.batches.check(meta["batches"], where)
        with torch.no_grad():  # (fsdp.like: this rank's shard of a whole tensor under FSDP)
            for name, p in zip(info["params"], self.params):
                p.copy_(fsdp.like(p, weights[name]))

        def place(idx: int, key: str, value: torch.Tensor) -> torch.Tensor:
            """An AdamW moment laid out like its (maybe sharded) parameter."""
            p = self.params[idx]
            return fsdp.like(p, value) if key != "step" and value.shape == p.shape else value

        stepstate.load_optimizer_state(self.optimizer, meta["optimizer"],
                                       tensors.get("optimizer", {}), place)
        self.scheduler.load_state_dict(meta["scheduler"])
        self.batches.load(meta["batches"])
        state = tensors.get("state", {})
        self.strategy.load_step_state({
            "meta": meta["strategy"],
            "tensors": {k[len("strategy/"):]: v for k, v in state.items()
                        if k.startswith("strategy/")}})
        # this rank's generators (rank 0's when the checkpoint had fewer ranks)
        r = rank() if rank() < len(meta["rng"]) else 0
        prefix = f"rng/{r}/"
        stepstate.set_global_rng_state(meta["rng"][r], {k[len(prefix):]: v for k, v in
                                                        state.items() if k.startswith(prefix)})
        return meta["step"], meta["counters"]


class Counters:
    """What the phase's steps so far trained on and cost; a step checkpoint saves them."""

    def __init__(self) -> None:
        self.tokens = self.cells = self.skipped = 0  # real and padded positions; skipped batches
        self.loss = float("nan")  # the last step's loss
        # the training-loss curve: [step, mean loss of the steps since the previous point]
        self.loss_curve: list[list[float]] = []
        self.window = [0.0, 0]  # finite step losses since the last point: sum, count
        self.prior_s = 0.0  # training time before a resume
        self.start = time.perf_counter()

    def record_loss(self, step: int, loss: float, every: int) -> None:
        """Step ``step``'s loss (1-based): kept as the last loss, added to the window, and
        every ``every`` steps the window's mean becomes a point of the curve (the mean rather
        than that step's loss, as Hugging Face's Trainer logs it: one batch is noisy)."""
        self.loss = loss
        if math.isfinite(loss):
            self.window = [self.window[0] + loss, self.window[1] + 1]
        if step % every == 0:
            self.flush_loss(step)

    def flush_loss(self, step: int) -> None:
        """End the window at ``step``: its mean becomes a point (none for an empty window)."""
        if self.window[1]:
            self.loss_curve.append([step, self.window[0] / self.window[1]])
        self.window = [0.0, 0]

    def train_s(self) -> float:
        return self.prior_s + time.perf_counter() - self.start

    def state(self, strategy_s: float) -> dict[str, Any]:
        return {"tokens": self.tokens, "cells": self.cells, "skipped": self.skipped,
                "loss": self.loss if math.isfinite(self.loss) else None,
                "train_s": self.train_s(), "strategy_s": strategy_s,
                "loss_curve": self.loss_curve, "loss_window": self.window}

    def load(self, state: dict[str, Any]) -> None:
        self.tokens, self.cells, self.skipped = state["tokens"], state["cells"], state["skipped"]
        self.loss = float("nan") if state["loss"] is None else state["loss"]
        self.prior_s = state["train_s"]
        # checkpoints written before the curve was kept: it restarts at the resumed step
        curve, window = state.get("loss_curve"), state.get("loss_window")
        self.loss_curve = [list(p) for p in curve if isinstance(p, list) and len(p) == 2] \
            if isinstance(curve, list) else []
        self.window = list(window) if isinstance(window, list) and len(window) == 2 else [0.0, 0]


class StepCheckpoints:
    """A phase's step checkpoints: ``save`` (RunDir.save_step) writes one on rank 0."""

    def __init__(self, parts: PhaseParts, info: dict[str, Any],
                 save: Callable[[int, int, dict, dict], Any] | None) -> None:
        self.parts, self.info, self.save = parts, info, save

    def write(self, done: int, counters: dict[str, Any]) -> None:
        """The phase after ``done`` steps; a full disk loses this checkpoint, not the run."""
        phase, total = self.info["phase"], self.info["total_steps"]
        tensors, meta = self.parts.snapshot(done, self.info, counters)
        if tensors is None:  # not rank 0
            return
        try:
            where = self.save(phase, done, tensors, meta)
            log.info("phase %d: step checkpoint at step %d of %d: %s", phase, done, total, where)
        except OSError as err:
            log.warning("phase %d: step %d: step checkpoint not written: %s", phase, done, err)

    def resume(self, ckpt: dict[str, Any], counters: Counters, hooks) -> int:
        """Continue from ``ckpt``; the first step to take (0: it did not fit, with a warning)."""
        phase, total = self.info["phase"], self.info["total_steps"]
        try:
            first, state = self.parts.restore(ckpt, self.info)
        except ResumeError as err:
            log.warning("%s; training phase %d from its start", err, phase)
            return 0
        counters.load(state)
        hooks.total += state["strategy_s"]
        log.info("resumed phase %d at step %d of %d", phase, first, total)
        return first

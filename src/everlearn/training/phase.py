"""Setting a training phase up: its kind, its examples and step count, its AdamW and schedule.

Per phase the trainer builds a fresh AdamW and a re-warmed learning-rate schedule (a text-stream
segment instead reads one schedule over the whole stream, see everlearn.training.segments) and
trains for a fixed number of optimizer steps: the sum of its stages' budgets.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import get_scheduler

from everlearn.config import TrainConfig
from everlearn.errors import TrainingError
from everlearn.stages import get_kind
from everlearn.stages.stream import Stage
from everlearn.training import stepstate
from everlearn.training.learning_rate import learning_rate
from everlearn.training.segments import batches as segment_batches
from everlearn.training.segments import restore_moments, stream_scheduler
from everlearn.training.textstream import SegmentPlan


@dataclass
class PhaseCost:
    """What training one phase cost (the evaluation time is added by the runner)."""

    steps: int
    train_time_s: float
    tokens_trained: int  # real tokens of the training batches (align: both answers' rows)
    padding_fraction: float
    examples: int  # training examples (align: pairs; their reference pass is in train_time_s)
    final_loss: float
    peak_memory_mb: float
    strategy_time_s: float = 0.0  # time inside strategy hooks (buffers, Fisher, projections)
    skipped_batches: int = 0  # batches whose loss was not finite (train.nonfinite_loss: skip)
    trainable_params: int | None = None  # edit phases: what the editor trained (else: the model)
    # [step, mean training loss since the previous point], every Trainer.log_every steps
    loss_curve: list[list[float]] = field(default_factory=list)


def phase_kind(stages: list[Stage]) -> str:
    """How the phase trains, from what its stages' kinds declare (everlearn.stages): "dpo"
    (preference pairs), "edit" (constrained fine-tuning or an editor strategy) or "tokens" (the
    token loss: sft, cpt, a text stream); a one-line error for a phase that mixes a dpo or edit
    kind with others."""
    names = ", ".join(s.name for s in stages)
    modes = [training_mode(st.kind) for st in stages]
    if "dpo" in modes and set(modes) != {"dpo"}:
        raise TrainingError(f"stages {names}: an align stage cannot train in one phase with "
                            "sft or cpt stages (a strategy such as joint grouped them)")
    if "edit" in modes and set(modes) != {"edit"}:
        raise TrainingError(f"stages {names}: an edit stage cannot train in one phase with "
                            "other kinds of stages (a strategy such as joint grouped them)")
    return modes[0] if modes else "tokens"


def training_mode(kind: str) -> str:
    """"edit" for a kind whose records are edits, else its loss ("tokens" or "dpo")."""
    declared = get_kind(kind)
    return "edit" if declared.edits else declared.loss


def phase_steps(stages: list[Stage], cfg: TrainConfig, n_examples: int) -> int:
    """Optimizer steps for a phase: the sum of its stages' budgets (steps, else epochs)."""
    total = 0
    per_step = cfg.batch_size * cfg.grad_accum
    for st in stages:
        steps = st.steps if st.steps is not None else (None if st.epochs else cfg.steps)
        if steps is None:
            epochs = st.epochs if st.epochs is not None else cfg.epochs
            share = n_examples / max(1, len(stages))
            steps = max(1, math.ceil(epochs * share / per_step))
        total += steps
    return total


@dataclass
class Phase:
    """One phase set up to train: what the step loop reads and updates."""

    index: int
    stages: list[Stage]
    kind: str  # phase_kind
    examples: list  # Encoded (align: Pair)
    order: list[int] | None  # a text-stream segment: the examples in training order
    total_steps: int
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    bound: Any  # edit phases: the L-inf ball the weights are projected back into (or None)
    batches: Any  # iterator of example indices (a BatchStream, or a segment's batches)

    @property
    def align(self) -> bool:
        return self.kind == "dpo"

    @property
    def label(self) -> str:
        return "+".join(s.name for s in self.stages)


def step_count(stages: list[Stage], cfg: TrainConfig, examples: list,
               order: list[int] | None) -> int:
    """The phase's optimizer steps (a segment: its examples once)."""
    if not examples:
        raise TrainingError(f"stage '{stages[0].name}': no training examples after encoding")
    if order is not None:
        return max(1, math.ceil(len(order) / (cfg.batch_size * cfg.grad_accum)))
    return phase_steps(stages, cfg, len(examples))


def trainable(model, stages: list[Stage]) -> list[torch.nn.Parameter]:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise TrainingError(f"stage '{stages[0].name}': the model has no trainable weights")
    return params


def stage_lr(stages: list[Stage], cfg: TrainConfig) -> float:
    """A stage's own lr (the first one set among the phase's stages), else train.lr."""
    return learning_rate(cfg.lr, *(st.lr for st in stages))


def optimizer_and_schedule(model, params: list, lr: float, cfg: TrainConfig, total_steps: int,
                           segment: SegmentPlan | None, carried: dict, order: list[int] | None,
                           stages: list[Stage], examples: list):
    """A fresh AdamW (a segment: with the moments carried over the boundary) and its
    learning-rate schedule."""
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    if segment is not None:  # a boundary is no reason to forget the moment estimates
        restore_moments(model, optimizer, carried)
    warmup = int(round(cfg.warmup_ratio * total_steps))
    name = {"constant": "constant_with_warmup"}.get(cfg.schedule, cfg.schedule)
    if segment is not None:  # one schedule over the whole stream, not per segment
        scheduler = stream_scheduler(name, optimizer, cfg, segment, order,
                                     len(stages[0].train), examples)
    else:
        scheduler = get_scheduler(name, optimizer, num_warmup_steps=warmup,
                                  num_training_steps=total_steps)
    return optimizer, scheduler


def batch_order(examples: list, align: bool, order: list[int] | None, cfg: TrainConfig,
                rng: random.Random):
    """The phase's batches: a segment's consecutive batches once, else epochs of freshly
    shuffled, length-grouped batches."""
    if order is not None:
        return segment_batches(order, cfg.batch_size)
    lengths = [e.length if align else len(e.input_ids) for e in examples]
    return stepstate.BatchStream(lengths, cfg.batch_size, rng, cfg.group_by_length)

"""What an edit phase changes in training (see everlearn.stages.edit): an editor strategy may
apply the edits itself; otherwise constrained fine-tuning trains only ``edit.layers``' MLP
weights, at ``edit.lr``, projected back into an L-inf ball after every step.

The editor interface (``Strategy.apply_edits``): the phase's edits reach the editor stage by
stage, in the stage's order, cut into batches of ``edit.batch_size`` records (null: the whole
stage as one batch); ``apply_edits(stage, batch)`` applies one batch as one update and returns
its cost ({steps, tokens, edits, loss, trainable_params}), or None when the strategy is not an
editor. Whatever the editor keeps (codebooks, side memories, statistics) it returns from
``state_dict``, saved in every stage checkpoint."""

from __future__ import annotations

import time

from everlearn.errors import TrainingError
from everlearn.stages.stream import Stage
from everlearn.training.learning_rate import learning_rate
from everlearn.training.phase import PhaseCost
from everlearn.training.resources import PeakMemory


def constrained_setup(model, stages: list[Stage], lr: float):
    """Constrained fine-tuning of an edit phase: the trainable MLP weights of ``edit.layers``,
    the weights it froze (the rest, frozen until the phase ends: the caller thaws them), the
    learning rate (``edit.lr``, else the phase's ``lr``), and the L-inf bound around the weights
    entering the phase (or None)."""
    from everlearn.config import EditConfig
    from everlearn.stages.edit import ChangeBound, edit_parameters

    edit = stages[0].edit or EditConfig()
    params = [p for _, p in edit_parameters(model, edit.layers)]
    keep = {id(p) for p in params}
    frozen = [p for p in model.parameters() if p.requires_grad and id(p) not in keep]
    for p in frozen:
        p.requires_grad_(False)
    bound = ChangeBound(params, edit.max_change) if edit.max_change is not None else None
    return params, frozen, learning_rate(lr, edit.lr), bound


def apply_edits(strategy, stages: list[Stage], records: dict, hooks, device) -> PhaseCost | None:
    """An editor strategy (``grace``) applies the phase's edits itself; None when none
    does, and the stages are fine-tuned."""
    memory = PeakMemory(device)
    start = time.perf_counter()
    done = [d for st in stages for d in edit_batches(strategy, st, records[st.name])]
    if all(d is None for d in done):
        return None
    if any(d is None for d in done):
        raise TrainingError(f"stages {', '.join(s.name for s in stages)}: an editor "
                            "strategy edited some of the phase's stages but not all")
    memory.sample()
    train_s = time.perf_counter() - start
    with hooks:
        for st in stages:
            strategy.after_stage(st)
    return PhaseCost(
        steps=sum(d.get("steps", 0) for d in done), train_time_s=train_s,
        tokens_trained=sum(d.get("tokens", 0) for d in done), padding_fraction=0.0,
        examples=sum(d.get("edits", 0) for d in done),
        final_loss=sum(d.get("loss", 0.0) for d in done) / max(1, len(done)),
        peak_memory_mb=memory.peak_mb, strategy_time_s=hooks.total,
        trainable_params=sum(d.get("trainable_params", 0) for d in done))


def batches(records: list, size: int | None) -> list[list]:
    """``records`` in order, cut into batches of ``size`` (None: one batch of all)."""
    if size is None or size >= len(records):
        return [records] if records else []
    return [records[i:i + size] for i in range(0, len(records), size)]


def edit_batches(strategy, stage: Stage, records: list) -> list[dict | None]:
    """The cost of every batch the editor applied for ``stage`` (``edit.batch_size``), or
    [None] when the strategy is not an editor (a stage without records: one empty batch)."""
    from everlearn.config import EditConfig

    size = (stage.edit or EditConfig()).batch_size
    return [strategy.apply_edits(stage, part) for part in batches(records, size) or [[]]]

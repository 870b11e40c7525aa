"""The one learning-rate rule of every phase.

Five config fields can set a learning rate: ``train.lr`` (the run's), a stage's ``lr``,
``edit.lr`` (edit phases), ``recycle.update_lr`` (the base update) and ``recycle.lr``
(re-tuning the adapters). Each is an override of ``train.lr`` for the phases it names; the first
one set wins, in the order the caller lists them (most specific first).
"""

from __future__ import annotations


def learning_rate(train_lr: float, *overrides: float | None) -> float:
    """The first override that is set (not None), else ``train.lr``."""
    return next((lr for lr in overrides if lr is not None), train_lr)

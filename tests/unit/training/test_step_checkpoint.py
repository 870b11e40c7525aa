"""Counters: the training-loss curve kept per phase, and carried through a step checkpoint."""

from __future__ import annotations

import math

import pytest

from everlearn.training.step_checkpoint import Counters


def test_curve_points_are_window_means_at_the_cadence_and_at_the_end():
    c = Counters()
    losses = [4.0, 2.0, 3.0, float("nan"), 1.0, 5.0, 0.5]
    for step, loss in enumerate(losses, 1):
        c.record_loss(step, loss, every=3)
    c.flush_loss(len(losses))
    # steps 1-3: mean 3.0; 4-6: the NaN is left out, mean of 1.0 and 5.0; step 7 alone
    assert c.loss_curve == [[3, 3.0], [6, 3.0], [7, 0.5]]
    assert c.loss == 0.5
    c.flush_loss(7)  # an empty window adds no point
    assert len(c.loss_curve) == 3


def test_curve_and_window_survive_a_step_checkpoint():
    c = Counters()
    for step, loss in enumerate([1.0, 2.0, 3.0, 4.0, 6.0], 1):
        c.record_loss(step, loss, every=2)
    resumed = Counters()
    resumed.load(c.state(0.0))
    resumed.record_loss(6, 8.0, every=2)  # the window holds step 5 from before the resume
    assert resumed.loss_curve == [[2, 1.5], [4, 3.5], [6, 7.0]]


@pytest.mark.parametrize("curve, window", [(None, None), ("junk", [1.0]), ([[1, 2.0], 7], 3)])
def test_an_old_or_damaged_checkpoint_restarts_the_curve(curve, window):
    state = {**Counters().state(0.0), "loss_curve": curve, "loss_window": window}
    c = Counters()
    c.load(state)
    assert c.loss_curve == ([[1, 2.0]] if isinstance(curve, list) else [])
    assert c.window == [0.0, 0] and math.isnan(c.loss)

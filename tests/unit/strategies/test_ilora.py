"""I-LoRA (``strategies.ilora``): the interpolation warm-up, the consistency loss as the
authors' code writes it, and the options it checks."""

from __future__ import annotations

import pytest
import torch

from everlearn.config import StrategySpec
from everlearn.errors import ConfigError
from everlearn.strategies import build_strategy
from everlearn.strategies.ilora import consistency_loss, interpolation_factor


def test_interpolation_factor_warms_up_then_stays_at_ema():
    assert [interpolation_factor(j, 0.9) for j in (1, 2, 3)] == pytest.approx([0.5, 2 / 3, 0.75])
    assert interpolation_factor(50, 0.9) == 0.9
    assert interpolation_factor(1, 0.25) == 0.25  # the authors' 0.25: no warm-up in effect


def test_consistency_loss_is_the_codes_mse_to_the_elementwise_max():
    torch.manual_seed(0)
    fast = [torch.randn(2, 5, 3, requires_grad=True) for _ in range(3)]
    slow = [torch.randn(2, 5, 3) for _ in range(3)]
    mask = torch.ones(2, 5, dtype=torch.long)
    ours = consistency_loss(fast, slow, mask)
    # which47/LLMCL: target where(h_f > h_s, h_f, h_s), MSE(reduction='none'), mean of all
    target = [torch.where(f > s, f, s) for f, s in zip(fast, slow)]
    theirs = torch.cat([torch.nn.functional.mse_loss(f, t, reduction="none")
                        for f, t in zip(fast, target)]).mean()
    assert torch.allclose(ours, theirs)
    g_ours = torch.autograd.grad(ours, fast)
    g_theirs = torch.autograd.grad(theirs, fast)
    assert all(torch.allclose(a, b) for a, b in zip(g_ours, g_theirs))
    # padded positions do not count: a mask that hides half the positions
    mask[:, 3:] = 0
    kept = [f[:, :3] for f in fast], [s[:, :3] for s in slow]
    assert torch.allclose(consistency_loss(fast, slow, mask),
                          consistency_loss(*kept, torch.ones(2, 3)))
    # the slow learner only pulls up: a fast learner above it everywhere costs nothing
    assert consistency_loss([s + 1 for s in slow], slow, torch.ones(2, 5)) == 0


def test_ilora_options_are_checked():
    for options, name in [({"ema": 1.0}, "ema"), ({"buffer_size": 0}, "buffer_size"),
                          ({"consistency_weight": -1}, "consistency_weight"),
                          ({"evaluate_with": "both"}, "evaluate_with")]:
        with pytest.raises(ConfigError, match=rf"options\.{name}: expected"):
            build_strategy([StrategySpec("ilora", options)])

"""GEM (``strategies.gem``): the QP's update conflicts with no stored stage's gradient."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from everlearn.strategies.gem import project_grads, solve_dual
from tests.helpers.replay_family import flat


def _random_case(gen, dim: int, stages: int):
    g = torch.randn(dim, generator=gen, dtype=torch.float64)
    refs = [torch.randn(dim, generator=gen, dtype=torch.float64) for _ in range(stages)]
    return g, refs


def test_gem_update_has_a_non_negative_dot_product_with_every_stored_gradient():
    gen = torch.Generator().manual_seed(0)
    projected = 0
    for trial in range(300):
        dim, stages = 3 + trial % 29, 1 + trial % 6
        g, refs = _random_case(gen, dim, stages)
        for margin in (0.0, 0.5):
            (out,), changed = project_grads([g], [[r] for r in refs], margin)
            scale = float(g.norm()) * max(float(r.norm()) for r in refs)
            dots = [float(out @ r) for r in refs]
            assert min(dots) >= -1e-8 * scale, (trial, dots)
            if all(float(g @ r) >= 0 for r in refs):
                assert not changed and out is g  # no conflict: g passes untouched
            else:
                assert changed
                projected += 1
    assert projected > 200


def test_gem_exact_projection_is_the_closest_feasible_gradient():
    """margin 0: the KKT conditions of the primal hold, and random feasible points are farther."""
    gen = torch.Generator().manual_seed(1)
    for trial in range(50):
        g, refs = _random_case(gen, 8, 1 + trial % 5)
        (z,), _ = project_grads([g], [[r] for r in refs], 0.0)
        a = torch.stack(refs)
        # z = g + A^T v with v >= 0 and complementary slackness v_k <a_k, z> = 0
        v = np.linalg.lstsq(a.T.numpy(), (z - g).numpy(), rcond=None)[0]
        assert (v >= -1e-8).all()
        assert np.abs(v * (a @ z).numpy()).max() < 1e-8
        for _ in range(200):
            cand = z + 0.5 * torch.randn(8, generator=gen, dtype=torch.float64)
            if (a @ cand >= 0).all():
                assert (cand - g).norm() >= (z - g).norm() - 1e-9


def test_gem_dual_solution_equals_brute_force_active_sets():
    rng = np.random.default_rng(2)
    for _ in range(40):
        a = rng.standard_normal((4, 6))
        a[3] = a[0] + a[1]  # a singular Gram matrix
        g = rng.standard_normal(6)
        gram, ag = a @ a.T, a @ g
        v = solve_dual(gram, ag)
        best = min(
            (0.5 * x @ gram @ x + ag @ x)
            for x in [_solve_on(gram, ag, s) for s in range(16)] if x is not None)
        assert 0.5 * v @ gram @ v + ag @ v == pytest.approx(best, abs=1e-8)
        assert (v >= 0).all()


def _solve_on(gram, ag, subset: int):
    idx = [i for i in range(4) if subset >> i & 1]
    x = np.zeros(4)
    if idx:
        x[idx] = np.linalg.lstsq(gram[np.ix_(idx, idx)], -ag[idx], rcond=None)[0]
    return x if (x >= -1e-12).all() else None


def test_gem_projection_over_parameters_equals_projection_of_the_flat_vector():
    gen = torch.Generator().manual_seed(3)
    shapes = [(4, 3), (5,), (2, 2)]
    for _ in range(20):
        grads = [torch.randn(s, generator=gen) for s in shapes] + [None]
        mem = [[torch.randn(s, generator=gen) for s in shapes] + [torch.randn(3, generator=gen)]
               for _ in range(3)]
        out, changed = project_grads(grads, mem, 0.5)
        full_g = flat(grads[:3] + [torch.zeros(3)])
        (expected,), changed_flat = project_grads([full_g], [[flat(m)] for m in mem], 0.5)
        assert changed == changed_flat
        got = flat([o if o is not None else torch.zeros(3) for o in out])
        assert torch.allclose(got, expected, atol=1e-5)


def test_gem_strategy_update_conflicts_with_no_stored_stage_on_the_model(tmp_path):
    """On the tiny model: after ``after_backward`` the gradient handed to the optimizer has a
    non-negative dot product with each stored stage's memory gradient."""
    from everlearn.strategies.gem import GEM, GEMOptions
    from tests.helpers.replay_family import run_context, toy_stage

    ctx = run_context(tmp_path)
    model = ctx.model
    model.train()
    gem = GEM(GEMOptions(memory_size=12, sample_size=6, margin=0.0))
    gem.setup(ctx)
    stages = [toy_stage(i, 6) for i in range(3)]
    for s in stages[:2]:
        gem.before_stage(s)
        gem.after_stage(s)
    gem.before_stage(stages[2])
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=3e-3)
    for _ in range(30):  # learn stage 0, so that unlearning its answers conflicts with it
        opt.zero_grad()
        model(**ctx.batch(stages[0].train)).loss.backward()
        opt.step()
    model.zero_grad()
    from everlearn.data.records import Record
    conflicting = [Record(prompt=r.prompt, answers=["zulu"], task="s2") for r in stages[0].train]
    model(**ctx.batch(conflicting)).loss.backward()
    gem.after_backward(model)
    update = [p.grad.clone() for p in params]
    for stage in range(2):  # the whole memory of a stage: the same gradient GEM used
        model.zero_grad()
        records = [r for s, r in gem.memory.entries if s == stage]
        assert len(records) == 6
        model(**ctx.batch(records)).loss.backward()
        dot = float(sum((u.double() * p.grad.double()).sum() for u, p in zip(update, params)))
        assert dot >= -1e-6 * float(flat(update).norm() * flat([p.grad for p in params]).norm())
    assert gem.stats["2"] == [1, 1]  # it did conflict: the QP ran

"""OSF (``strategies.osf``, PEFT's tuner per stage): the update leaves each weight's preserved
singular subspace untouched, and the model is a plain one again after the stage."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from everlearn.strategies.osf import OSF, OSFOptions, preserved_share
from tests.helpers.replay_family import run_context, toy_stage

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def test_osf_preserved_share_rises_linearly_over_the_stream():
    assert [preserved_share(i, 3, 0.3, 0.7) for i in range(3)] == pytest.approx([0.3, 0.5, 0.7])
    assert preserved_share(0, 1, 0.3, 0.7) == 0.3
    assert OSFOptions(first_share=0.6, last_share=0.5).check()[0] == "last_share"


def test_osf_update_is_orthogonal_to_the_preserved_subspace(tmp_path):
    ctx = run_context(tmp_path)
    model = ctx.model
    stages = [toy_stage(i, 8) for i in range(3)]
    ctx.stream = SimpleNamespace(stages=stages)
    osf = OSF()
    osf.setup(ctx)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    osf.before_stage(stages[1])  # the middle stage: half of each weight's directions frozen
    assert osf.shares == {"1": pytest.approx(0.5)}
    params = [p for p in model.parameters() if p.requires_grad]
    assert params and all("osf_svd_params" in n for n, p in model.named_parameters()
                          if p.requires_grad)
    opt = torch.optim.SGD(params, lr=1.0)
    model.train()
    for _ in range(4):
        opt.zero_grad()
        model(**ctx.batch(stages[1].train)).loss.backward()
        opt.step()
    osf.after_stage(stages[1])

    after = dict(model.named_parameters())
    assert set(after) == set(before)  # plain layers again, nothing added
    assert all(p.requires_grad for p in after.values())  # the full fine-tuning flags are back
    checked = 0
    for name, w0 in before.items():
        delta = (after[name].detach() - w0).double()
        if not any(t in name for t in TARGETS):
            assert torch.equal(delta, torch.zeros_like(delta)), name  # untargeted: frozen
            continue
        u, _, vt = torch.linalg.svd(w0.double(), full_matrices=False)
        k = int(min(w0.shape) * 0.5)
        u_high, v_high = u[:, :k], vt[:k]
        size = float(delta.norm())
        assert size > 1e-4, name  # it trained
        assert float((u_high.T @ delta).norm()) < 1e-3 * size, name  # plain SGD here: 0.58-0.71
        assert float((delta @ v_high.T).norm()) < 1e-3 * size, name  # plain SGD here: 0.58-0.71
        checked += 1
    assert checked == 2 * len(TARGETS)  # two layers in the tiny model


def test_osf_refuses_a_peft_without_its_tuner_in_one_line(tmp_path, monkeypatch):
    import sys

    from everlearn.errors import ConfigError

    monkeypatch.setitem(sys.modules, "peft.tuners.osf", None)  # import fails as if absent
    with pytest.raises(ConfigError, match=r"^strategies: osf runs on PEFT's OSF tuner") as err:
        OSF().setup(run_context(tmp_path))
    assert "\n" not in str(err.value)

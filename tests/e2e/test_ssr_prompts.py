"""Progressive Prompts in a run: earlier prompts stay bit-identical and the model unchanged."""

from __future__ import annotations

import copy

import torch

from everlearn.models.loading import build_tiny_model
from everlearn.runs.run_dir import RunDir
from everlearn.runs.runner import Run
from everlearn.strategies.progressive_prompts import ProgressivePrompts, ProgressivePromptsOptions
from everlearn.validation import build_config
from tests.conftest import constant_task, tiny_config
from tests.helpers.ssr_prompts import TOK, run_context, stage_of


def test_a_run_keeps_earlier_prompts_bit_identical_and_the_model_unchanged(tmp_path):
    stages = [constant_task(tmp_path, n, a, n_train=8, n_test=2)
              for n, a in (("red", "alpha"), ("green", "bravo"), ("blue", "charlie"))]
    cfg = build_config(tiny_config(
        tmp_path, stages, model={"name": "tiny-llama", "finetune": "full"},
        train={"lr": 0.05, "steps": 3, "batch_size": 4, "precision": "fp32", "max_length": 32},
        strategies=[{"name": "progressive_prompts", "options": {"num_virtual_tokens": 4}}]))
    run = Run(cfg, tmp_path / "run", quiet=True)
    results = run.execute()
    assert [c["trainable_params"] for c in results["cost"]] == [4 * 64] * 3  # P_t only
    states = [RunDir(tmp_path / "run").load_phase(t, need_weights=False)[1]["tensors"]
              for t in (1, 2, 3)]
    key = "0.progressive_prompts/prompt/stage{}".format  # the stack's key for member 0
    assert set(states[2]) == {key(1), key(2), key(3)}
    for t in (1, 2):
        for later in states[t:]:
            assert torch.equal(later[key(t)], states[t - 1][key(t)])
    fresh = build_tiny_model(TOK)
    init = ProgressivePrompts(ProgressivePromptsOptions(num_virtual_tokens=4))
    init.setup(run_context(tmp_path, copy.deepcopy(fresh)))
    init.ctx.seed = cfg.seed
    init.before_stage(stage_of(1, 2))
    assert not torch.equal(init.bank.get(1).detach(), states[0][key(1)])  # P_1 trained
    trained = {k: v for k, v in run.model.state_dict().items() if "everlearn_prompts" not in k}
    assert trained.keys() == fresh.state_dict().keys()
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in trained.items())

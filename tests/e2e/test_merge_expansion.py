"""Block expansion in a run: only the new blocks train, and resume rebuilds them."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from everlearn.models.loading import build_tiny_model, load_trainable_state
from everlearn.runs.run_dir import RunDir
from everlearn.runs.runner import Run
from everlearn.strategies import build_strategy
from everlearn.strategies.base import RunContext
from everlearn.validation import build_config
from tests.conftest import constant_task, tiny_config
from tests.helpers.merge_expansion import TOK


def test_only_new_blocks_train_and_resume_rebuilds_them(tmp_path):
    """A real run with per_stage expansion: originals never change, stage-1 blocks are frozen
    during stage 2, and a fresh model restored from the phase-2 checkpoint is the same model."""
    stages = [constant_task(tmp_path, "red", "alpha", 8, 2),
              constant_task(tmp_path, "green", "bravo", 8, 2)]
    cfg = build_config(tiny_config(
        tmp_path, stages, train={"lr": 1e-2, "steps": 3, "batch_size": 4, "precision": "fp32",
                                 "max_length": 40},
        strategies=[{"name": "block_expansion", "per_stage": True}], keep_stage_weights="all"))
    run = Run(cfg, tmp_path / "run", quiet=True)
    res = run.execute()
    model = run.model
    strategy = run.strategy.members[0]
    assert strategy.expanded_at == [1, 2] and len(model.model.layers) == 4
    assert res["cost"][1]["trainable_params"] < res["cost"][1]["total_params"]
    fresh = build_tiny_model(TOK).state_dict()
    trained = model.state_dict()
    ckpt = tmp_path / "run" / "checkpoints"
    phase1 = load_file(ckpt / "phase-01" / "trainable.safetensors")
    for pos, tag in enumerate(strategy.layout):
        prefix = f"model.layers.{pos}."
        block = {k[len(prefix):]: v for k, v in trained.items() if k.startswith(prefix)}
        if tag[0] == "orig":
            src = f"model.layers.{tag[1]}."
            assert all(torch.equal(v, fresh[src + k]) for k, v in block.items())
        elif tag[1] == 1:  # trained in stage 1 (at position 2 then), frozen since
            assert all(torch.equal(v, phase1[f"model.layers.2.{k}"]) for k, v in block.items())
            assert block["mlp.down_proj.weight"].abs().sum() > 0  # it did train
        else:
            assert block["mlp.down_proj.weight"].abs().sum() > 0
    for k in ("model.embed_tokens.weight", "model.norm.weight"):
        assert torch.equal(trained[k], fresh[k])

    weights, state = RunDir(tmp_path / "run").load_phase(2, need_weights=True)
    again = build_tiny_model(TOK)
    restored = build_strategy(cfg.strategies)  # as the runner resumes: state, then weights
    restored.setup(RunContext(model=again, tokenizer=TOK, encoder=None, config=cfg,
                              stream=None, seed=cfg.seed))
    restored.load_state_dict(state)
    load_trainable_state(again, weights, "phase-02")
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in trained.items())

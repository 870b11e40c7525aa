"""EWC, online EWC, MAS, L2 and LwF in runs: less forgetting than sequential fine-tuning on a
two-stage tiny stream."""

from __future__ import annotations

import pytest
import torch

from everlearn.data.encode import Encoder, collate
from everlearn.strategies import build_strategy
from everlearn.strategies.base import RunContext
from everlearn.validation import build_config
from tests.conftest import constant_task, tiny_config

# --- less forgetting than sequential fine-tuning ---------------------------------------------
STRONG = {
    "ewc": {"ewc_lambda": 10000.0, "fisher_samples": 16},
    "mas": {"mas_lambda": 0.3, "mas_samples": 16},
    "l2": {"l2_lambda": 1.0},
    "lwf": {"alpha": 1.0},
}


@pytest.fixture(scope="module")
def two_stage_runs(tmp_path_factory):
    """Stage red->alpha trained once; then green->bravo under seqft and each regulariser, from
    the same weights with the same seed. Returns {name: (old NLL, new NLL, distance moved)}."""
    from everlearn.models.loading import load_base_model, make_trainable
    from everlearn.runs.session import make_accelerator, seed_everything
    from everlearn.stages.stream import build_stream
    from everlearn.training.trainer import Trainer

    tmp = tmp_path_factory.mktemp("two_stage")
    stages = [constant_task(tmp, "red", "alpha", n_train=16),
              constant_task(tmp, "green", "bravo", n_train=16)]

    def config(spec):
        return build_config(tiny_config(tmp, stages, strategies=[spec]))

    cfg = config("seqft")
    stream = build_stream(cfg)
    red, green = stream.stages
    acc = make_accelerator("fp32")
    seed_everything(0)
    model, tok = load_base_model(cfg.model)
    model = make_trainable(model, cfg.model)
    encoder = Encoder(tok, cfg.train.max_length)

    def ctx_for(strategy):
        strategy.setup(RunContext(model=model, tokenizer=tok, encoder=encoder, config=cfg,
                                  stream=stream, seed=0, accelerator=acc))
        return strategy

    def nll(stage):
        model.eval()
        b = collate(encoder.encode_stage("sft", stage.test), encoder.pad_id)
        with torch.no_grad():
            return model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                         labels=b["labels"]).loss.item()

    first = ctx_for(build_strategy(cfg.strategies))
    Trainer(acc, encoder, cfg.train, first, 0, quiet=True).train_phase(model, [red], 1)
    after_red = {k: v.clone() for k, v in model.state_dict().items()}
    results = {"stage1": (nll(red), nll(green), 0.0)}
    runs = {"seqft": {"name": "seqft"}, **{n: {"name": n, **o} for n, o in STRONG.items()},
            "ewc_empirical": {"name": "ewc", **STRONG["ewc"], "fisher": "empirical"}}
    for name, spec in runs.items():
        model.load_state_dict(after_red)
        strategy = ctx_for(build_strategy(config(spec).strategies))
        strategy.after_stage(red)  # what the runner calls at the end of stage 1
        seed_everything(2)
        Trainer(acc, encoder, cfg.train, strategy, 0, quiet=True).train_phase(model, [green], 2)
        moved = sum(((p.detach() - after_red[n]) ** 2).sum()
                    for n, p in model.named_parameters()).sqrt().item()
        results[name] = (nll(red), nll(green), moved)
    return results


def test_stage_one_is_learned_and_seqft_forgets_it(two_stage_runs):
    red_nll, green_nll, _ = two_stage_runs["stage1"]
    assert red_nll < 0.5 and green_nll > 3.0
    assert two_stage_runs["seqft"][0] > 3.0  # sequential fine-tuning forgets red->alpha


@pytest.mark.parametrize("name", sorted(STRONG))
def test_regularizer_forgets_less_than_seqft_and_still_learns(two_stage_runs, name):
    old, new, moved = two_stage_runs[name]
    seq_old, _, seq_moved = two_stage_runs["seqft"]
    assert old < seq_old - 1.0  # the first stage's answers stay far more likely
    assert new < 0.5 * two_stage_runs["stage1"][1]  # and the second stage is still learned
    if name != "lwf":  # weight-space penalties keep the weights nearer the anchor
        assert moved < seq_moved


def test_sampled_fisher_protects_more_than_the_empirical_fisher(two_stage_runs):
    """Why ``fisher: sampled`` is the default: the labels of a stage the model fits well give
    near-zero gradients, so the empirical Fisher under-weights the weights that matter."""
    assert two_stage_runs["ewc"][0] < two_stage_runs["ewc_empirical"][0] - 1.0


@pytest.mark.parametrize("name", ["ewc", "mas"])
def test_no_importance_passes_after_the_last_stage(tmp_path, three_stages, name):
    from everlearn.runs.runner import Run
    from tests.conftest import tiny_config

    cfg = build_config(tiny_config(tmp_path, three_stages[:2], strategies=[
        {"name": name, "fisher_samples" if name == "ewc" else "mas_samples": 4}],
        train={"steps": 2, "precision": "fp32"}))
    run = Run(cfg, tmp_path / name, quiet=True)
    res = run.execute()
    strategy = run.strategy.members[0]
    if name == "ewc":
        assert [idx for idx, _, _ in strategy.terms] == [1]  # stage 2 is the last: no Fisher
    else:
        assert strategy.stages_seen == 1
    assert res["cost"][1]["strategy_time_s"] < res["cost"][0]["strategy_time_s"]

"""The LoRA-family strategies of issue 18 (nlora, ilora, inflora, moe_lora) in runs on the tiny
model: each one's defining property, measured on what the run leaves behind."""

from __future__ import annotations

import pytest
import torch

from everlearn.runs.runner import Run
from everlearn.validation import build_config
from tests.conftest import constant_task, tiny_config


def _cfg(tmp, stages, strategy: dict, steps: int = 6, **overrides):
    return build_config(tiny_config(
        tmp, stages, model={"name": "tiny-llama", "finetune": "lora", "lora": {"r": 4}},
        train={"lr": 5e-3, "steps": steps, "batch_size": 4, "precision": "fp32",
               "max_length": 48, "warmup_ratio": 0.0, "schedule": "constant"},
        strategies=[strategy], **overrides))


def _two_stages(tmp):
    return [constant_task(tmp, "red", "alpha", 12, 2), constant_task(tmp, "green", "bravo", 12, 2)]


# --- N-LoRA -----------------------------------------------------------------------------------
def _nlora_collision(tmp_path, lambda_1: float) -> dict:
    cfg = _cfg(tmp_path, _two_stages(tmp_path), {"name": "nlora", "lambda_1": lambda_1}, steps=20)
    run = Run(cfg, tmp_path / f"run-{lambda_1}", quiet=True)
    result = run.execute()
    assert result["strategy_metrics"]["nlora"]["collision_rate"]["green"] == \
        run.strategy.members[0].collisions["green"]
    return run.strategy.members[0].collisions["green"]


def test_nlora_collision_falls_as_the_l1_penalty_grows(tmp_path):
    rates = {lam: _nlora_collision(tmp_path, lam) for lam in (0.0, 0.01, 0.1)}
    # Same seed, data and initial adapters: only the penalty differs.
    assert rates[0.0]["collision_rate"] > rates[0.01]["collision_rate"] > \
        rates[0.1]["collision_rate"]
    assert rates[0.0]["collision_rate"] > 5 * rates[0.1]["collision_rate"]
    assert rates[0.0]["density"] > rates[0.01]["density"] > rates[0.1]["density"]
    assert rates[0.0]["l1"] > rates[0.01]["l1"] > rates[0.1]["l1"]


# --- I-LoRA -----------------------------------------------------------------------------------
def test_ilora_slow_weights_are_the_interpolation_of_the_fast_ones(tmp_path):
    from everlearn.strategies.ilora import interpolation_factor

    stages = [constant_task(tmp_path, "red", "alpha", 12, 2),
              constant_task(tmp_path, "green", "bravo", 12, 2)]
    ema = 0.6  # above 0.5: the warm-up min(1 - 1/(j+1), ema) matters at the first step
    run = Run(_cfg(tmp_path, stages, {"name": "ilora", "ema": ema, "buffer_size": 8}, steps=4),
              tmp_path / "run", quiet=True)
    strategy = run.strategy.members[0]
    trajectory: list[list[dict]] = []  # per stage: the fast weights after every step
    start: list[dict] = []
    original_backward, original_before, original_after = (
        strategy.after_backward, strategy.before_stage, strategy.after_stage)

    def snapshot():
        return {n: p.detach().clone() for n, p in strategy.trained().items()}

    calls = []

    def before_stage(stage):
        original_before(stage)
        start.append(snapshot())
        trajectory.append([])
        calls.append(0)

    def after_backward(model):  # before step j: the weights step j - 1 left (none at j = 1)
        if calls[-1]:
            trajectory[-1].append(snapshot())
        calls[-1] += 1
        original_backward(model)

    def after_stage(stage):
        trajectory[-1].append(snapshot())  # the last step's weights, before the swap to slow
        original_after(stage)

    replayed = []
    original_extra = strategy.extra_loss

    def extra_loss(model, batch, outputs):
        term = original_extra(model, batch, outputs)
        replayed.append((len(trajectory),
                         term is not None, strategy.task_loss_weight))
        return term

    strategy.before_stage, strategy.after_backward, strategy.after_stage = (
        before_stage, after_backward, after_stage)
    strategy.extra_loss = extra_loss
    result = run.execute()
    # Stage 1 trains on its batches alone; stage 2 replays and halves the task loss.
    assert {r for r in replayed if r[0] == 1} == {(1, False, 1.0)}
    assert {r for r in replayed if r[0] == 2} == {(2, True, 0.5)}
    assert [len(t) for t in trajectory] == [c["steps"] for c in result["cost"]] == [4, 4]
    # The formula, replayed from the recorded fast weights.
    slow = {n: v.clone() for n, v in start[0].items()}
    for steps in trajectory:
        for j, fast in enumerate(steps, start=1):
            a = interpolation_factor(j, ema)
            slow = {n: a * slow[n] + (1 - a) * fast[n] for n in slow}
    assert interpolation_factor(1, ema) == 0.5 and interpolation_factor(2, ema) == ema
    assert slow.keys() == strategy.slow.keys()
    for n in slow:
        assert torch.allclose(strategy.slow[n], slow[n], atol=1e-7), n
    # The slow learner is what the model holds after the stage (evaluated, checkpointed), and
    # it differs from the fast learner it follows.
    params = strategy.trained()
    assert all(torch.equal(params[n], strategy.slow[n]) for n in slow)
    assert any(not torch.allclose(strategy.fast[n], strategy.slow[n]) for n in slow)
    assert any("lora_B" in n and strategy.slow[n].abs().sum() > 0 for n in slow)


# --- InfLoRA ----------------------------------------------------------------------------------
def test_inflora_update_leaves_earlier_subspace_outputs_unchanged(tmp_path):
    from everlearn.strategies.inflora import lora_layers

    stages = [constant_task(tmp_path, "red", "alpha", 12, 2),
              constant_task(tmp_path, "green", "bravo", 12, 2),
              constant_task(tmp_path, "blue", "charlie", 12, 2)]
    run = Run(_cfg(tmp_path, stages, {"name": "inflora"}, steps=4), tmp_path / "run", quiet=True)
    strategy = run.strategy.members[0]
    seen = {}  # per stage: the memory it was designed against, and its designed lora_A
    original_before = strategy.before_stage

    def before_stage(stage):
        memory = {k: (s.basis.clone(), s.kind) for k, s in strategy.memory.items()}
        original_before(stage)
        new = strategy.names[-1]
        seen[new] = (memory, {k: m.lora_A[new].weight.detach().clone()
                              for k, m in lora_layers(strategy.model).items()})

    strategy.before_stage = before_stage
    run.execute()
    layers = lora_layers(run.model)
    assert set(seen) == {"stage1", "stage2", "stage3"} and not seen["stage1"][0]
    torch.manual_seed(0)
    checked = 0
    for name in ("stage2", "stage3"):
        memory, designed = seen[name]
        assert set(memory) == set(layers)
        for key, module in layers.items():
            a = module.lora_A[name].weight.detach().double()
            b = module.lora_B[name].weight.detach().double()
            assert torch.equal(module.lora_A[name].weight, designed[key])  # only B trained
            assert b.abs().sum() > 0
            basis, kind = memory[key]
            inside = basis @ basis.T
            earlier = inside if kind == "remove" else torch.eye(len(inside)).double() - inside
            x = earlier @ torch.randn(len(inside), 16).double()  # inputs in the earlier space
            assert x.norm() > 0
            change = (b @ a @ x).norm() / ((b @ a).norm() * x.norm())
            assert change < 1e-6, (name, key, float(change))
            # a generic input is changed: the bound is the design, not a dead adapter
            z = torch.randn(len(inside), 16).double()
            assert (b @ a @ z).norm() / ((b @ a).norm() * z.norm()) > 1e-3
            checked += 1
    assert checked == 2 * len(layers)
    assert 0 < strategy.metrics()["protected_share"] < 1


# --- MoE-LoRA ---------------------------------------------------------------------------------
def test_moe_lora_freezes_earlier_experts_and_reports_a_router_load_summing_to_one(tmp_path):
    from everlearn.strategies.common.adapters import adapter_parameters

    stages = [constant_task(tmp_path, "red", "alpha", 12, 2),
              constant_task(tmp_path, "green", "bravo", 12, 2),
              constant_task(tmp_path, "blue", "charlie", 12, 2)]
    run = Run(_cfg(tmp_path, stages, {"name": "moe_lora"}, steps=4), tmp_path / "run", quiet=True)
    strategy = run.strategy.members[0]
    ended: dict[str, dict] = {}  # each expert (with its router rows) as its stage left it
    original_after = strategy.after_stage

    def after_stage(stage):
        original_after(stage)
        name = strategy.names[-1]
        ended[name] = {n: p.detach().clone() for n, p in adapter_parameters(run.model, name)
                       .items()}

    strategy.after_stage = after_stage
    result = run.execute()
    final = {n: adapter_parameters(run.model, n) for n in ("stage1", "stage2", "stage3")}
    for name in ("stage1", "stage2"):  # frozen by the later stages: bit-identical
        params = final[name]
        assert {n for n in params if ".lora_router." in n}  # router rows are the expert's
        assert set(params) == set(ended[name])
        for n, p in params.items():
            assert torch.equal(p.detach(), ended[name][n]), n
        assert any("lora_B" in n and p.abs().sum() > 0 for n, p in params.items())
    assert any("lora_B" in n and p.abs().sum() > 0 for n, p in final["stage3"].items())
    # The layer computes W x + sum_i softmax(W_g x)_i * s_i B_i A_i x over the three experts.
    from everlearn.strategies.moe_lora import moe_layers

    run.model.eval()
    layer = next(iter(moe_layers(run.model).values()))
    x = torch.randn(2, 3, layer.lora_A["stage1"].weight.shape[1])
    names = ["stage1", "stage2", "stage3"]
    gates = torch.softmax(x @ torch.cat([layer.lora_router[n] for n in names]).T, dim=-1)
    expected = layer.base_layer(x) + sum(
        gates[..., i:i + 1] * layer.scaling[n] * (x @ layer.lora_A[n].weight.T
                                                  @ layer.lora_B[n].weight.T)
        for i, n in enumerate(names))
    with torch.no_grad():
        assert torch.allclose(layer(x), expected, atol=1e-6)
    load = result["strategy_metrics"]["moe_lora"]["router_load"]
    assert list(load) == ["red", "green", "blue"]
    assert list(load["red"]) == ["red"] and list(load["blue"]) == ["red", "green", "blue"]
    for after, rows in load.items():
        for on, shares in rows.items():
            assert len(shares) == list(load).index(after) + 1
            assert sum(shares.values()) == pytest.approx(1.0, abs=1e-9), (after, on)
            assert all(0 < v < 1 for v in shares.values()) or len(shares) == 1

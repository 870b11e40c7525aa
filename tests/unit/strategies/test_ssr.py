"""Self-synthesised rehearsal (``strategies.ssr``): prompt pieces, demos within budget, inputs
written with the base model and outputs with the latest (the strategy matrix covers resume and
checkpoints)."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from everlearn.config import LoraConfig, ModelConfig, StrategySpec
from everlearn.data.records import Record
from everlearn.errors import ConfigError
from everlearn.models.loading import make_trainable
from everlearn.strategies import build_strategy
from everlearn.strategies import ssr as ssr_module
from everlearn.strategies.ssr import SSR, SSROptions, demo_orders, icl_prompt, parse_input
from tests.helpers.ssr_prompts import perturbed_model, run_context, stage_of


def test_ssr_prompt_pieces():
    prompt = icl_prompt("Classify the sentiment.", [("Great.", "pos"), ("Awful.", "neg")])
    assert prompt == ("Classify the sentiment.\n\nInput: Great.\nOutput: pos\n\n"
                      "Input: Awful.\nOutput: neg\n\nInput:")
    assert parse_input(" A fine day.\nOutput: pos\n\nInput: x") == "A fine day."
    assert parse_input(" two lines\n\nthen more") == "two lines"
    orders = demo_orders(3, 2, 8, __import__("random").Random(0))
    assert len(set(orders[:6])) == 6 and orders[6:] == orders[:2]  # all 3*2 permutations, cycled


# --- SSR: the strategy ----------------------------------------------------------------------
def _ssr(ctx, **options) -> SSR:
    s = SSR(SSROptions(max_input_tokens=10, max_answer_tokens=6, **options))
    s.setup(ctx)
    s.after_stage(stage_of(1, 6))
    s.after_stage(stage_of(2, 3))
    return s


def test_ssr_keeps_demos_within_budget_and_rehearses_earlier_stages_only(tmp_path):
    ctx = run_context(tmp_path, perturbed_model())
    third = stage_of(3, 20)
    strategy = _ssr(ctx, demos=4, ratio=0.3, input_model="latest")
    kept = {t["index"]: [Record.from_dict(d) for d in t["demos"]] for t in strategy.tasks}
    assert {i: len(d) for i, d in kept.items()} == {1: 4, 2: 3}  # budget, or all there is
    assert all(d.task == f"s{i}" for i, ds in kept.items() for d in ds)
    assert strategy.buffer_size() == 7

    rng_before = torch.get_rng_state()
    mixed = strategy.train_data(third, third.train)
    assert torch.equal(torch.get_rng_state(), rng_before)  # training's RNG is left alone
    assert mixed[:20] == third.train
    synthetic = mixed[20:]
    assert all(r.meta["ssr"] for r in synthetic)
    assert Counter(r.meta["ssr_stage"] for r in synthetic) == {1: 3, 2: 3}  # 0.3 * 20, split
    for r in synthetic:  # an earlier stage's template around a new input, with an answer
        stage = r.meta["ssr_stage"]
        assert r.task == f"s{stage}" and r.prompt.startswith(f"s{stage} question ")
        assert r.answers and r.prompt not in {d.prompt for d in kept[stage]}

    again = _ssr(ctx, demos=4, ratio=0.3, input_model="latest").train_data(third, third.train)
    assert [r.to_dict() for r in again] == [r.to_dict() for r in mixed]  # same seed, same data
    moved = _ssr(run_context(tmp_path, ctx.model, seed=1), demos=4, ratio=0.3, input_model="latest")
    assert [r.prompt for r in moved.train_data(third, third.train)[20:]] != [
        r.prompt for r in synthetic]
    fixed = _ssr(ctx, per_stage=2, input_model="latest").train_data(third, third.train)
    assert Counter(r.meta["ssr_stage"] for r in fixed[20:]) == {1: 2, 2: 2}
    first = stage_of(1, 20)
    fresh = SSR(SSROptions())
    fresh.setup(ctx)
    assert fresh.train_data(first, first.train) == first.train  # nothing earlier to rehearse


def _lora_disabled(model) -> bool:
    flags = [m.disable_adapters for m in model.modules() if hasattr(m, "_disable_adapters")]
    assert flags
    return all(flags)


def test_ssr_writes_inputs_with_the_base_model_and_outputs_with_the_latest(tmp_path,
                                                                            monkeypatch):
    seen: dict[str, object] = {}
    real_complete, real_generate = ssr_module.complete, ssr_module.generate

    def spy_complete(ctx, model, *args, **kwargs):
        seen["inputs"] = model
        seen["inputs_lora_off"] = _lora_disabled(model) if hasattr(model, "peft_config") else None
        seen["inputs_weights"] = {k: v.clone() for k, v in model.state_dict().items()}
        return real_complete(ctx, model, *args, **kwargs)

    def spy_generate(ctx, model, *args, **kwargs):
        seen["outputs"] = model
        seen["outputs_lora_off"] = _lora_disabled(model) if hasattr(model, "peft_config") else None
        return real_generate(ctx, model, *args, **kwargs)

    monkeypatch.setattr(ssr_module, "complete", spy_complete)
    monkeypatch.setattr(ssr_module, "generate", spy_generate)

    # LoRA: the base model is the current one with its adapters disabled, for inputs only.
    lora = make_trainable(perturbed_model(), ModelConfig(name="tiny-llama", lora=LoraConfig(r=4)))
    with torch.no_grad():
        for n, p in lora.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)  # a "trained" adapter
    ctx = run_context(tmp_path, lora, finetune="lora")
    flags = {n: p.requires_grad for n, p in lora.named_parameters()}
    synthetic = _ssr(ctx, ratio=0.3).train_data(stage_of(3, 20), [])
    assert synthetic
    assert seen["inputs"] is lora and seen["inputs_lora_off"] is True
    assert seen["outputs"] is lora and seen["outputs_lora_off"] is False
    assert not _lora_disabled(lora)
    assert {n: p.requires_grad for n, p in lora.named_parameters()} == flags

    # Full fine-tuning: a frozen copy of the model as it was at setup writes the inputs.
    model = perturbed_model()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    strategy = _ssr(run_context(tmp_path, model), ratio=0.3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)  # "training" after setup
    strategy.train_data(stage_of(3, 20), [])
    assert seen["inputs"] is not model and seen["outputs"] is model
    assert all(torch.equal(seen["inputs_weights"][k], v) for k, v in original.items())
    assert next(seen["inputs"].parameters()).device.type == "cpu"


def test_ssr_options_are_validated():
    for options, field in [({"demos": 0}, "demos"), ({"candidates": 0.5}, "candidates"),
                           ({"input_model": "teacher"}, "input_model"), ({"top_p": 0}, "top_p")]:
        with pytest.raises(ConfigError, match=f"options.{field}"):
            build_strategy([StrategySpec(name="ssr", options=options)])

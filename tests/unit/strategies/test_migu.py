"""MIGU (``strategies.migu``): a step changes only the kept rows of each linear layer."""

from __future__ import annotations

import torch

from everlearn.models.loading import build_tiny_model, build_tiny_tokenizer
from everlearn.strategies.migu import MIGU, MIGUOptions, magnitude_mask, mask_targets
from tests.helpers.replay_family import run_context, toy_stage


def _step(tmp_path, model, threshold: float):
    ctx = run_context(tmp_path)
    ctx.model = model
    migu = MIGU(MIGUOptions(threshold=threshold))
    migu.setup(ctx)
    migu.before_stage(toy_stage(1, 8))
    model.train()
    sums: dict[str, torch.Tensor] = {}
    hooks = [decider.register_forward_hook(
        lambda m, a, out, n=name: sums.__setitem__(n, out.detach().abs().reshape(
            -1, out.shape[-1]).sum(0) + sums.get(n, 0)))
        for name, decider, _ in mask_targets(model)]
    batch = ctx.batch(toy_stage(1, 8).train)
    model(**batch).loss.backward()
    for h in hooks:
        h.remove()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    migu.after_backward(model)
    torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2,
                      weight_decay=0.0).step()
    return migu, sums, before


def test_migu_step_changes_only_the_rows_of_the_largest_outputs(tmp_path):
    tok = build_tiny_tokenizer()
    model = build_tiny_model(tok)
    migu, sums, before = _step(tmp_path, model, threshold=0.7)
    targets = mask_targets(model)
    assert len(targets) >= 7  # q, k, v, o, gate, up, down (a tied head is not)
    modules = dict(model.named_modules())
    for name, _, _ in targets:
        keep = magnitude_mask(sums[name], 0.7)
        n = keep.numel()
        assert 0 < int(keep.sum()) <= n - int(0.7 * n) + 1  # about the top 30%
        # the kept rows are exactly the largest-magnitude ones
        assert sums[name][keep].min() > sums[name][~keep].max()
        changed = (modules[name].weight.detach() != before[f"{name}.weight"]).any(dim=1)
        assert not changed[~keep].any(), name  # masked rows did not move
        assert changed[keep].float().mean() > 0.9, name  # kept rows did
    share = migu.metrics()["kept_share"]["1"]
    assert 0.2 < share < 0.4


def test_migu_lora_masks_b_by_the_adapted_layer_output(tmp_path):
    from peft import LoraConfig, get_peft_model

    tok = build_tiny_tokenizer()
    model = get_peft_model(build_tiny_model(tok), LoraConfig(r=4, target_modules="all-linear"))
    deciders = {name: decider for name, decider, _ in mask_targets(model)}
    b_names = [n for n in deciders if ".lora_B." in n]
    a_names = [n for n in deciders if ".lora_A." in n]
    assert b_names and a_names
    for n in b_names:  # lora_B is decided by the adapted layer (base plus delta)
        assert deciders[n] is dict(model.named_modules())[n.rsplit(".lora_B.", 1)[0]]
    for n in a_names:
        assert deciders[n] is dict(model.named_modules())[n]
    assert not any("base_layer" in n for n in deciders)  # frozen weights are not targets


def test_migu_first_stage_is_unmasked_by_default(tmp_path):
    ctx = run_context(tmp_path)
    migu = MIGU()
    migu.setup(ctx)
    migu.before_stage(toy_stage(0, 4))
    assert not migu.handles
    migu.after_stage(toy_stage(0, 4))
    masked = MIGU(MIGUOptions(mask_first_stage=True))
    masked.setup(ctx)
    masked.before_stage(toy_stage(0, 4))
    assert masked.handles
    masked.after_stage(toy_stage(0, 4))
    assert not masked.handles

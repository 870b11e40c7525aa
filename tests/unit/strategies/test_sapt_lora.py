"""SAPT-LoRA (``strategies.sapt_lora``): the per-input mixture of adapters, the query's
positions, and the reflection term's target."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model

from everlearn.strategies.sapt_lora import SAPTLoRA, content_positions, max_pool
from tests.helpers.replay_family import run_context, toy_stage


def test_content_positions_drop_the_template_frame_per_row():
    keep = torch.tensor([[1, 1, 1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1, 1, 1],
                         [1, 1, 1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    got = content_positions(keep, head=2, tail=1)
    assert got[0].tolist() == [0, 0, 1, 1, 1, 0, 0, 0]
    assert got[1].tolist() == [0, 0, 0, 0, 1, 1, 1, 0]  # left padding: ranks, not indices
    assert got[2].tolist() == keep[2].tolist()  # nothing inside the frame: keep all
    pooled = max_pool(torch.arange(24.).view(1, 8, 3), got[:1])
    assert pooled.tolist() == [[12.0, 13.0, 14.0]]  # max over positions 2-4 only


def _two_stage_sapt(tmp_path):
    ctx = run_context(tmp_path)
    ctx.model = get_peft_model(ctx.model, LoraConfig(r=4, lora_alpha=8,
                                                      target_modules="all-linear"))
    ctx.config = copy.deepcopy(ctx.config)
    ctx.config.model.finetune = "lora"
    sapt = SAPTLoRA()
    sapt.setup(ctx)
    for i in (1, 2):
        stage = toy_stage(i, 4)
        sapt.before_stage(stage)
        with torch.no_grad():  # a non-zero, distinct update per adapter
            for n, p in ctx.model.named_parameters():
                if f"lora_B.stage{i}." in n:
                    p.normal_(0, 0.5, generator=torch.Generator().manual_seed(i))
        sapt.targets[f"stage{i}"] = torch.eye(2)[i - 1, :i]
    return ctx, sapt


def test_each_input_gets_its_own_weighted_sum_of_adapters(tmp_path):
    ctx, sapt = _two_stage_sapt(tmp_path)
    model = ctx.model
    model.eval()
    batch = ctx.batch(toy_stage(1, 2).train)
    alpha = torch.tensor([[0.8, 0.2], [0.1, 0.9]])
    with torch.no_grad():
        sapt._hook.remove()  # fix the weights by hand instead of the selector
        sapt.alpha = alpha
        mixed = model(input_ids=batch["input_ids"],
                      attention_mask=batch["attention_mask"]).logits
        # the same per-row mixture built from PEFT alone: scale each adapter's B by the weight
        sapt.alpha = None
        for row in range(2):
            saved = {n: p.clone() for n, p in model.named_parameters() if "lora_B" in n}
            for n, p in model.named_parameters():
                for i, name in enumerate(("stage1", "stage2")):
                    if f"lora_B.{name}." in n:
                        p.mul_(alpha[row, i])
            model.base_model.set_adapter(["stage1", "stage2"])  # PEFT: the deltas add up
            ref = model(input_ids=batch["input_ids"][row:row + 1],
                        attention_mask=batch["attention_mask"][row:row + 1]).logits
            for n, p in model.named_parameters():
                if n in saved:
                    p.copy_(saved[n])
            assert torch.allclose(mixed[row:row + 1], ref, atol=1e-5)


def test_reflection_term_is_the_kl_to_the_stored_attention_of_the_stage(tmp_path):
    ctx, sapt = _two_stage_sapt(tmp_path)
    prompt = sapt.prompt_ids(toy_stage(1, 1).train[0])
    sapt.pseudo = [("stage1", prompt)] * 4
    weights = sapt.attention([prompt])[0]
    sapt.targets["stage1"] = weights[:1] / weights[:1].sum()  # stage1's label: one-hot [1]
    loss = sapt.extra_loss(ctx.model.train(), {}, None)
    assert float(loss.detach()) == pytest.approx(-float(torch.log(weights[0])), rel=1e-4)
    loss.backward()
    key = sapt.selector.keys["stage2"]
    assert key.grad is not None and float(key.grad.norm()) > 0  # the new key is pushed away
    assert sapt.selector.keys["stage1"].grad is None  # earlier keys are frozen


def test_option_scoring_on_a_cache_keeps_the_prompts_selection(tmp_path):
    """Option likelihoods run the options on the prompt's KV cache (transformers 5 passes it as
    ``cache``): the selection made on the prompt holds, and the short feed is not re-pooled
    against the whole attention mask (which once raised a size mismatch)."""
    from everlearn.evaluation.option_scoring import OptionItem, score_options

    ctx, sapt = _two_stage_sapt(tmp_path)
    ctx.model.eval()
    seen = []
    ctx.model.register_forward_hook(lambda *_: seen.append(sapt.alpha.clone()))
    items = [OptionItem(prompt=[5, 6, 7, 8], options=[[9, 10, 11], [12, 13, 14]]),
             OptionItem(prompt=[15, 16], options=[[17, 18, 19], [20, 21, 22]])]
    scores = score_options(ctx.model, items, pad_id=0, device=torch.device("cpu"),
                           autocast=contextlib.nullcontext)
    assert len(scores) == 2 and all(len(s) == 2 for s in scores)
    assert len(seen) == 3 and all(torch.equal(a, seen[0]) for a in seen)  # prompt, 2 feeds

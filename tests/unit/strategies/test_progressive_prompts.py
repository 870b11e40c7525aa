"""Progressive Prompts (``strategies.progressive_prompts``): the prompt first and masked out of
the loss, the newest prompt first and alone trained, generation with and without the KV cache."""

from __future__ import annotations

import pytest
import torch

from everlearn.config import StrategySpec
from everlearn.data.encode import Encoded, collate
from everlearn.errors import ConfigError
from everlearn.models.loading import build_tiny_model
from everlearn.strategies import build_strategy
from everlearn.strategies.progressive_prompts import (
    ProgressivePrompts,
    ProgressivePromptsOptions,
    extend_inputs,
)
from tests.helpers.ssr_prompts import TOK, perturbed_model, run_context, stage_of


# --- Progressive Prompts ------------------------------------------------------------------
def _prompts(tmp_path, n_tokens: int = 3, stages: int = 2, model=None):
    model = model if model is not None else perturbed_model()
    s = ProgressivePrompts(ProgressivePromptsOptions(num_virtual_tokens=n_tokens))
    s.setup(run_context(tmp_path, model))
    for i in range(1, stages + 1):
        s.before_stage(stage_of(i, 2))
        with torch.no_grad():  # as if trained: distinct, consequential prompts
            s.bank.get(i).mul_(5)
    return model, s


def _batch(texts: list[str], left: bool = False) -> dict:
    ids = [TOK.encode(t) for t in texts]
    return collate([Encoded(x, x) for x in ids], TOK.pad_token_id, left=left)


def test_extend_inputs_puts_the_prompt_first_and_masks_it_out_of_the_loss():
    prompt = torch.arange(6.0).reshape(3, 2)
    embeds = torch.ones(2, 4, 2)
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])  # left padding
    labels = torch.tensor([[-100, -100, 5, 6], [1, 2, 3, 4]])
    out = extend_inputs(prompt, embeds, mask, labels, past=0)
    assert out["inputs_embeds"].shape == (2, 7, 2)
    assert torch.equal(out["inputs_embeds"][0, :3], prompt)
    assert out["attention_mask"].tolist() == [[1, 1, 1, 0, 0, 1, 1], [1] * 7]
    assert out["labels"][:, :3].eq(-100).all() and torch.equal(out["labels"][:, 3:], labels)
    assert out["position_ids"].tolist() == [[0, 1, 2, 2, 2, 3, 4], list(range(7))]
    step = extend_inputs(prompt, torch.ones(2, 1, 2), torch.cat([mask, mask[:, :1] * 0 + 1], 1),
                         None, past=7)  # a decoding step: the cache already holds the prompt
    assert step["inputs_embeds"].shape == (2, 1, 2) and step["attention_mask"].shape == (2, 8)
    assert step["position_ids"].tolist() == [[5], [7]]


def test_progressive_prompts_grow_the_input_newest_prompt_first(tmp_path):
    model = perturbed_model()
    seen = []
    model.model.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["inputs_embeds"].detach().clone()), with_kwargs=True)
    batch = _batch(["hello there", "hi"])
    x = model.get_input_embeddings()(batch["input_ids"]).detach()
    s = ProgressivePrompts(ProgressivePromptsOptions(num_virtual_tokens=3))
    s.setup(run_context(tmp_path, model))
    lengths = []
    for stage in (1, 2, 3):
        s.before_stage(stage_of(stage, 2))
        with torch.no_grad():
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        assert out.logits.shape[1] == x.shape[1]  # callers still see their own positions
        lengths.append(seen[-1].shape[1])
    assert lengths == [x.shape[1] + 3, x.shape[1] + 6, x.shape[1] + 9]  # + P per stage
    P = {i: s.bank.get(i).detach() for i in (1, 2, 3)}
    assert torch.equal(seen[-1][0], torch.cat([P[3], P[2], P[1], x[0]]))  # [P_3; P_2; P_1; x]
    emb = model.get_input_embeddings().weight
    assert any(torch.equal(P[1][0], row) for row in emb)  # initialised from a vocabulary row


def test_only_the_newest_prompt_gets_gradients(tmp_path):
    model, s = _prompts(tmp_path)
    batch = _batch(["s2 question 1 answer", "s2 q"])
    assert s.train_data(stage_of(2, 2), []) == []  # the "nothing else trains" check passes
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                labels=batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100))
    out.loss.backward()
    newest = s.bank.get(2)
    assert newest.grad is not None and newest.grad.abs().sum() > 0
    others = [(n, p) for n, p in model.named_parameters() if p is not newest]
    assert others and all(p.grad is None and not p.requires_grad for _, p in others)
    model.lm_head.weight.requires_grad_(True)  # what a weight-training strategy would do
    with pytest.raises(ConfigError, match="strategies"):
        s.train_data(stage_of(2, 2), [])


def test_generation_with_prompts_matches_with_and_without_kv_cache(tmp_path):
    model, s = _prompts(tmp_path)
    model.eval()
    batch = _batch(["hello there", "a much longer prompt here"], left=True)
    kwargs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                  max_new_tokens=6, do_sample=False, pad_token_id=TOK.pad_token_id)
    cached = model.generate(use_cache=True, **kwargs)
    uncached = model.generate(use_cache=False, **kwargs)
    assert torch.equal(cached, uncached)

    # The same greedy tokens by hand: embeddings [P_2; P_1; x], no hooks, no cache.
    joint = s.bank.joint().detach().clone()
    ids = TOK.encode("hello there")
    s.detach()
    assert not hasattr(model, "everlearn_prompts")
    plain = model.generate(use_cache=True, **kwargs)
    assert not torch.equal(plain, cached)  # the prompts changed what the model writes
    with torch.no_grad():
        for _ in range(6):
            x = model.get_input_embeddings()(torch.tensor([ids]))
            logits = model(inputs_embeds=torch.cat([joint[None], x], 1)).logits
            ids.append(int(logits[0, -1].argmax()))
    assert cached[0, -6:].tolist() == ids[-6:]


def test_lora_is_refused_and_bad_options_name_their_field():
    with pytest.raises(ConfigError, match="model.finetune"):
        build_strategy([StrategySpec(name="progressive_prompts")], finetune="lora")
    with pytest.raises(ConfigError, match="options.num_virtual_tokens"):
        build_strategy([StrategySpec(name="progressive_prompts",
                                     options={"num_virtual_tokens": 0})])


def test_prompts_past_the_model_positions_are_refused(tmp_path):
    s = ProgressivePrompts(ProgressivePromptsOptions(num_virtual_tokens=300))
    s.setup(run_context(tmp_path, build_tiny_model(TOK)))
    s.before_stage(stage_of(1, 2))  # 48 + 300 <= 512 positions
    with pytest.raises(ConfigError, match="train.max_length"):
        s.before_stage(stage_of(2, 2))  # 48 + 600 > 512

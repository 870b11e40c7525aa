"""Block expansion (LLaMA-Pro, ``strategies.block_expansion``): insertion points, an expanded
model that computes the original function, and the refusal of LoRA."""

from __future__ import annotations

import copy

import pytest
import torch

from everlearn.errors import ConfigError
from everlearn.models.loading import build_tiny_model
from everlearn.strategies.block_expansion import (
    BlockExpansion,
    BlockExpansionOptions,
    insertion_points,
)
from tests.helpers.merge_expansion import TOK, lora_model, run_context, stage_of, token_ids


# --- block expansion ---------------------------------------------------------------------------
def test_insertion_points_follow_llama_pro():
    assert insertion_points(32, n_blocks=8) == [3, 7, 11, 15, 19, 23, 27, 31]
    assert insertion_points(32, every=4) == insertion_points(32)  # default: a quarter more
    assert insertion_points(2) == [1]
    assert insertion_points(6, n_blocks=4) == [1, 2, 4, 5]
    with pytest.raises(ConfigError, match="n_blocks"):
        insertion_points(2, n_blocks=3)


def _expanded(options: BlockExpansionOptions, layers: int = 4):
    model = build_tiny_model(TOK, layers=layers)
    strategy = BlockExpansion(options)
    strategy.setup(run_context(model, "full"))
    return model, strategy


def test_expanded_model_computes_the_original_function_and_generates():
    model, strategy = _expanded(BlockExpansionOptions(every=2))
    original = copy.deepcopy(model).eval()
    ids = torch.tensor([TOK.encode("a longer prompt"),
                        TOK.encode("short") + [TOK.pad_token_id] * 10])
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    strategy.before_stage(stage_of(1))
    assert [t[0] for t in strategy.layout] == ["orig", "orig", "new", "orig", "orig", "new"]
    assert model.config.num_hidden_layers == 6
    assert [b.self_attn.layer_idx for b in model.model.layers] == list(range(6))
    model.eval()
    with torch.no_grad():
        out = model(ids, attention_mask=mask).logits
        ref = original(ids, attention_mask=mask).logits
    assert torch.allclose(out, ref, atol=1e-5)
    gen = dict(max_new_tokens=6, do_sample=False, pad_token_id=TOK.pad_token_id)
    assert torch.equal(model.generate(token_ids(), **gen), original.generate(token_ids(), **gen))
    # Once the new blocks differ from identity, the KV cache must still address every block
    # by its own index: cached generation equals generation that recomputes everything.
    with torch.no_grad():
        for tag, block in zip(strategy.layout, model.model.layers):
            if tag[0] == "new":
                for p in block.parameters():
                    p.add_(torch.randn_like(p) * 0.5)
    assert torch.equal(model.generate(token_ids(), **gen, use_cache=True),
                       model.generate(token_ids(), **gen, use_cache=False))


def test_block_expansion_refuses_lora():
    with pytest.raises(ConfigError, match="model.finetune"):
        BlockExpansion().setup(run_context(lora_model(), "lora"))

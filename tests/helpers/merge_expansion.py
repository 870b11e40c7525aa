"""Helpers shared by several files of the merge expansion tests."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from everlearn.config import LoraConfig, ModelConfig
from everlearn.models.loading import build_tiny_model, build_tiny_tokenizer, make_trainable
from everlearn.strategies.base import RunContext

TOK = build_tiny_tokenizer()


def stage_of(index: int):
    return SimpleNamespace(index=index, name=f"s{index}")


def run_context(model, finetune: str) -> RunContext:
    cfg = SimpleNamespace(model=SimpleNamespace(finetune=finetune))
    return RunContext(model=model, tokenizer=TOK, encoder=None, config=cfg, stream=None, seed=7)


def token_ids():
    return torch.tensor([TOK.encode("merge these weights, then expand the blocks")])


# --- merge strategy on the tiny model ----------------------------------------------------------
def tiny_gpt2():
    """A seeded GPT-2: its Linear layers are ``Conv1D`` (weight (in, out); PEFT sets
    fan_in_fan_out), the layout the Llama tests never exercise."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=len(TOK), n_positions=64,
                        bos_token_id=TOK.bos_token_id, eos_token_id=TOK.eos_token_id,
                        pad_token_id=TOK.pad_token_id)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return GPT2LMHeadModel(config)


def plain_model(arch: str = "llama"):
    return tiny_gpt2() if arch == "gpt2" else build_tiny_model(TOK)


def lora_model(arch: str = "llama", targets="all-linear"):
    return make_trainable(plain_model(arch), ModelConfig(
        name=f"tiny-{arch}", finetune="lora", lora=LoraConfig(r=4, target_modules=targets)))

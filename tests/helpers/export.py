"""Export tests: the tiny model saved as a plain Hugging Face directory (what a user's base is),
LoRA models on it with non-zero adapters, and their logits."""

from __future__ import annotations

from pathlib import Path

import torch

PROBE = "red question 3"  # any byte string works: the tiny tokenizer is byte-level


def save_tiny_base(path: Path) -> Path:
    """The random tiny Llama and its tokenizer, saved with save_pretrained into ``path``."""
    from everlearn.models.embedded import build_tiny_model, build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    build_tiny_model(tok).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def randomise_lora(model, seed: int = 0) -> None:
    """Give every LoRA B non-zero values (a fresh adapter's B is zero: it changes nothing)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)


def logits(model, text: str = PROBE) -> torch.Tensor:
    ids = torch.tensor([list(text.encode())])
    was = model.training
    model.eval()
    with torch.no_grad():
        out = model(input_ids=ids).logits
    model.train(was)
    return out


def plain_peft(base: Path, adapter: Path):
    """The adapter loaded the way a user without everlearn loads it."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter)


def assert_same_logits(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-5), (a - b).abs().max().item()

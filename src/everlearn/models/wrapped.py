"""The transformers model inside a PEFT wrapper: what code that reads a model's class,
config or forward signature looks at, whether or not LoRA wraps it."""

from __future__ import annotations


def hf_model(model):
    """The transformers model inside a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model

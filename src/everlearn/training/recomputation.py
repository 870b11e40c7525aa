"""Gradient checkpointing (``train.gradient_checkpointing``): each decoder layer keeps only its
input during a training step and recomputes the rest in the backward pass.

The activations a backward pass keeps are most of a LoRA step's memory (docs/benchmarks.md
"Peak memory against EasyCL": ~1 GB at batch 8 x 100 tokens on SmolLM2-135M); recomputing them
costs about one more forward pass per step. transformers implements it per layer; this module
only turns it on for the training steps of a phase (evaluation, generation, editors' own loops
and importance passes run as before) and checks, before a run starts, that the model has it.
The non-reentrant form is used: it needs no gradient on the inputs (LoRA's frozen embeddings)
and keeps the RNG state, so dropout draws the same masks when a layer is recomputed. Forward
hooks on modules inside a layer run again, on the same inputs, when the layer is recomputed
(MIGU then sums a linear layer's output magnitudes twice, which leaves its per-layer quantile
mask as it is); hooks on the layer
itself run once (transformers checkpoints the layer's ``forward``, not its ``__call__``).
"""

from __future__ import annotations

from contextlib import contextmanager

from everlearn.errors import ConfigError
from everlearn.models.wrapped import hf_model


def check_supported(model, source: str) -> None:
    """A one-line error when the model's transformers class has no gradient checkpointing."""
    base = hf_model(model)
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise ConfigError(f"{source}: train.gradient_checkpointing: {type(base).__name__} does "
                          "not support gradient checkpointing; set it to false")


@contextmanager
def recomputed_activations(model, enabled: bool):
    """While the block runs, ``model``'s layers recompute activations in the backward pass."""
    if not enabled:
        yield
        return
    base = hf_model(model)
    had_input_grads = hasattr(base, "_require_grads_hook")
    kwargs = {"use_reentrant": False}
    if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.24
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    try:
        yield
    finally:
        if hasattr(base, "activation_checkpointing_disable"):
            base.activation_checkpointing_disable()
        else:
            base.gradient_checkpointing_disable()
        # enabling made the embeddings' output require a gradient (a hook); undo that too
        if not had_input_grads and hasattr(base, "_require_grads_hook"):
            base.disable_input_require_grads()

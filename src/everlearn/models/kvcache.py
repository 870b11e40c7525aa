"""The KV cache under either of its names.

transformers 5.24 renamed the cache argument and output field ``past_key_values`` to ``cache``
(the old name still works until 5.40, with a warning). Code that reads or passes the cache goes
through these helpers so that it runs, silently and alike, on both sides of the rename.
"""

from __future__ import annotations

import inspect

from everlearn.models.wrapped import hf_model


def cache_of(output):
    """The KV cache a forward pass returned (``output.cache`` or ``output.past_key_values``)."""
    if "cache" in getattr(output, "__dataclass_fields__", {}):
        return output.cache
    return output.past_key_values


def cache_in(kwargs: dict):
    """The KV cache passed in a forward call's keyword arguments, or None."""
    cache = kwargs.get("cache")
    return cache if cache is not None else kwargs.get("past_key_values")


def cache_kwarg(model) -> str:
    """The keyword under which ``model.forward`` takes the KV cache (a PEFT model: its base's)."""
    base = hf_model(model)
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"

"""Vision-language models in a continual stream: images in records, LLaVA-style models, the
alignment stage, and the parts (vision tower, projector, language model) a stage trains.

Text-only runs never import this package; it is loaded when a record carries an ``image`` or
the model is a vision-language model (its config has a ``vision_config``).
"""

from __future__ import annotations


def is_vision_model(model) -> bool:
    """Whether ``model`` (plain or PEFT-wrapped) is a vision-language model."""
    config = getattr(model, "config", None)
    return config is not None and getattr(config, "vision_config", None) is not None

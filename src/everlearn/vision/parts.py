"""The three parts of a vision-language model: vision tower, projector, language model.

Found by the attribute names transformers' image-text-to-text models use (LLaVA family:
``vision_tower``, ``multi_modal_projector``, ``language_model``; others: ``visual``,
``vision_model``, ``connector``...), through a PEFT wrapper when there is one. The stage
policy (:mod:`everlearn.vision.training`) and the per-stage projector strategy work on them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from everlearn.models.wrapped import hf_model

TOWER_NAMES = ("vision_tower", "visual", "vision_model", "vision_encoder")
PROJECTOR_NAMES = ("multi_modal_projector", "mm_projector", "connector", "multimodal_projector",
                   "visual_projection")
LANGUAGE_NAMES = ("language_model", "text_model")


@dataclass
class VisionParts:
    """Module paths (as in ``model.named_modules()``) and the modules themselves."""

    tower_name: str
    projector_name: str
    language_name: str
    tower: torch.nn.Module
    projector: torch.nn.Module
    language: torch.nn.Module

    def tower_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.tower.parameters())

    def projector_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.projector.parameters())


def find_parts(model) -> VisionParts | None:
    """The parts of a vision-language model, with names valid on ``model`` itself (a PEFT
    wrapper prefixes them); None when ``model`` has no vision tower and projector."""
    found: dict[str, tuple[str, torch.nn.Module]] = {}
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        for role, names in (("tower", TOWER_NAMES), ("projector", PROJECTOR_NAMES),
                            ("language", LANGUAGE_NAMES)):
            if leaf in names and role not in found:
                found[role] = (name, module)
    if "tower" not in found or "projector" not in found or "language" not in found:
        return None
    return VisionParts(found["tower"][0], found["projector"][0], found["language"][0],
                       found["tower"][1], found["projector"][1], found["language"][1])


def language_lora_targets(model, target_modules) -> str | list[str]:
    """LoRA target modules restricted to the language model of a vision-language model.

    ``all-linear`` (PEFT's default here) would also adapt the vision tower and the projector;
    LoRA belongs on the language model, the projector trains whole (LLaVA's recipe). Returns a
    regular expression PEFT matches against full module names: the Linear layers inside the
    language model whose last name is in ``target_modules`` (every one for ``all-linear``).
    """
    import re

    parts = find_parts(hf_model(model))
    if parts is None:
        return target_modules
    leaves = sorted({n.rsplit(".", 1)[-1] for n, m in parts.language.named_modules()
                     if isinstance(m, torch.nn.Linear)})
    if target_modules != "all-linear":
        wanted = [target_modules] if isinstance(target_modules, str) else list(target_modules)
        leaves = [leaf for leaf in leaves if leaf in wanted]
    return rf"{re.escape(parts.language_name)}\..*\.({'|'.join(map(re.escape, leaves))})"


@torch.no_grad()
def pooled_image_features(model, pixel_inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """(images, hidden): the vision tower's features that the projector reads, averaged over the
    image's patches (CLS dropped under LLaVA's "default" selection). What routing by vision
    prototype compares (``stage_projector``)."""
    hf = hf_model(model)
    parts = find_parts(hf)
    config = hf.config
    layer = getattr(config, "vision_feature_layer", -1)
    layer = layer[-1] if isinstance(layer, (list, tuple)) else layer
    pixels = pixel_inputs["pixel_values"].to(next(parts.tower.parameters()).dtype)
    out = parts.tower(pixel_values=pixels, output_hidden_states=True)
    hidden = out.hidden_states[layer] if out.hidden_states is not None else out.last_hidden_state
    if getattr(config, "vision_feature_select_strategy", "default") == "default":
        hidden = hidden[:, 1:]
    return hidden.float().mean(dim=1)

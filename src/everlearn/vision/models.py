"""Vision-language models: the embedded LLaVA-shaped default, a tiny one for tests, and any
Hugging Face image-text-to-text model found locally.

The default, ``smollm2-135m-llava``, is transformers' ``LlavaForConditionalGeneration`` with a
small CLIP vision encoder (2 layers, 64x64 images, 16x16 patches: 16 image tokens) and LLaVA's
two-layer MLP projector on top of the embedded SmolLM2-135M-Instruct, whose weights load into it
unchanged: on text its logits are the plain model's. The image placeholder is ``<empty_output>``,
a special token of SmolLM2's vocabulary that chat text never contains, so the vocabulary (and the
tied embedding matrix) stay as they are. The vision encoder and projector are randomly
initialised (seed 0), so the model cannot see until an alignment stage (``freeze_lm: true`` on
captions, docs/multimodal.md) has trained them. It is built once into the model cache with its
processor (``LlavaProcessor``) and then loads like any local model.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from everlearn.errors import ModelError
from everlearn.models.embedded import (
    DTYPES,
    build_tiny_model,
    build_tiny_tokenizer,
    cache_dir,
    cached_model_dir,
    embedded_smollm2_dir,
    write_model_dir,
)

log = logging.getLogger(__name__)

DEFAULT_NAME = "smollm2-135m-llava"
TINY_NAME = "tiny-llava"
EMBEDDED = {
    DEFAULT_NAME: "LLaVA-shaped: SmolLM2-135M-Instruct + a 2-layer CLIP vision encoder (64x64 "
                  "images, 16 image tokens) and MLP projector, randomly initialised (align it "
                  "first: docs/multimodal.md)",
    TINY_NAME: "random tiny LLaVA (2-layer Llama, 1-layer CLIP, 32x32 images), for tests",
}
DEFAULT_IMAGE_TOKEN = "<empty_output>"  # SmolLM2 special token 16, unused by chat text
VISION_SEED = 0


def _image_processor(size: int):
    try:  # the PIL backend: no torchvision needed
        from transformers import CLIPImageProcessorPil as cls
    except ImportError:  # older transformers: one class
        from transformers import CLIPImageProcessor as cls
    return cls(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def make_processor(tokenizer, image_token: str, image_size: int, patch_size: int):
    """A ``LlavaProcessor``: CLIP preprocessing at ``image_size`` and the image placeholder
    expanded to one token per patch (the CLS feature is dropped: strategy "default")."""
    from transformers import LlavaProcessor

    return LlavaProcessor(image_processor=_image_processor(image_size), tokenizer=tokenizer,
                          patch_size=patch_size, vision_feature_select_strategy="default",
                          image_token=image_token, num_additional_image_tokens=1)


def build_llava(language_model, image_token_id: int, *, image_size: int = 64,
                patch_size: int = 16, hidden: int = 256, layers: int = 2, heads: int = 4,
                seed: int = VISION_SEED):
    """A ``LlavaForConditionalGeneration`` around ``language_model`` (a causal LM whose weights
    are copied in unchanged); the vision encoder and projector are drawn from ``seed``."""
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration

    text = language_model.config
    vision = CLIPVisionConfig(hidden_size=hidden, intermediate_size=4 * hidden,
                              num_hidden_layers=layers, num_attention_heads=heads,
                              image_size=image_size, patch_size=patch_size)
    config = LlavaConfig(vision_config=vision, text_config=text.to_dict(),
                         image_token_index=image_token_id,
                         image_seq_length=(image_size // patch_size) ** 2,
                         vision_feature_select_strategy="default", vision_feature_layer=-1,
                         tie_word_embeddings=bool(getattr(text, "tie_word_embeddings", False)))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config)
    base = language_model.get_decoder() if hasattr(language_model, "get_decoder") else (
        language_model.model)
    model.model.language_model.load_state_dict(base.state_dict())
    if not config.tie_word_embeddings:
        model.lm_head.load_state_dict(language_model.lm_head.state_dict())
    return model.to(language_model.dtype)


def embedded_llava_dir() -> Path:
    """The default VLM in the model cache, built from the embedded SmolLM2 on first use."""
    target = cache_dir() / "models" / DEFAULT_NAME
    return cached_model_dir(target, write_embedded_llava)


def write_embedded_llava(target: Path) -> None:
    """The default VLM from the converted SmolLM2, written to ``target``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = embedded_smollm2_dir()
    log.info("building %s in %s (once)", DEFAULT_NAME, target)
    tok = AutoTokenizer.from_pretrained(src)
    lm = AutoModelForCausalLM.from_pretrained(src, use_safetensors=True)
    image_token_id = tok.convert_tokens_to_ids(DEFAULT_IMAGE_TOKEN)
    model = build_llava(lm, image_token_id)
    write_model_dir(target, model, make_processor(tok, DEFAULT_IMAGE_TOKEN, 64, 16))


def build_tiny_llava(seed: int = 0):
    """(model, processor): a random tiny LLaVA on the tiny byte-level tokenizer (plus an
    ``<image>`` token), 32x32 images in 8x8 patches (16 image tokens); trains in milliseconds."""
    tok = build_tiny_tokenizer()
    tok.add_tokens(["<image>"], special_tokens=True)
    lm = build_tiny_model(tok, seed=seed)
    model = build_llava(lm, tok.convert_tokens_to_ids("<image>"), image_size=32, patch_size=8,
                        hidden=32, layers=1, heads=2, seed=seed)
    return model, make_processor(tok, "<image>", 32, 8)


def is_vision_dir(path: Path) -> bool:
    """Whether a local model directory holds a vision-language model (a ``vision_config``)."""
    import json

    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "vision_config" in config


def load_vision_model(source: str, cfg):
    """(model, processor) of a local or cached Hugging Face vision-language model
    (``AutoModelForImageTextToText`` and its ``AutoProcessor``), weights through safetensors."""
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from transformers.utils import logging as hf_logging

    kwargs = dict(trust_remote_code=cfg.trust_remote_code, revision=cfg.revision)
    try:
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # without torchvision: a notice that PIL is used
        try:
            processor = AutoProcessor.from_pretrained(source, **kwargs)
        finally:
            hf_logging.set_verbosity(verbosity)
        model = AutoModelForImageTextToText.from_pretrained(
            source, dtype=DTYPES[cfg.dtype], use_safetensors=True, **kwargs)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"model.name: cannot load '{source}' as a vision-language model: "
                         f"{first}") from None
    if not hasattr(processor, "image_processor") or not hasattr(processor, "tokenizer"):
        raise ModelError(f"model.name: '{source}': its processor has no image processor and "
                         "tokenizer; expected a vision-language model")
    return model, processor


def load_embedded(name: str, cfg):
    """(model, processor) of an embedded vision-language model name."""
    if name == TINY_NAME:
        model, processor = build_tiny_llava()
        return model.to(DTYPES[cfg.dtype]), processor
    return load_vision_model(str(embedded_llava_dir()), cfg)

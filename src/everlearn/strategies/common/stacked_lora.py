"""One LoRA computation per layer for a sum of adapters (what PEFT's LoRA layer lacks).

PEFT's LoRA ``Linear`` runs every active adapter on its own: per adapter, the layer input is cast
and goes through ``lora_A`` then ``lora_B``, and backward repeats that. While ``inc_lora`` or
``olora`` trains adapter ``t`` on top of frozen adapters ``1..t-1`` that is ``t`` passes over the
layer input, activation-sized work that grows with the stream. The sum they compute is

    sum_i s_i B_i A_i x  =  [s_1 B_1 ... s_t B_t] ([A_1; ...; A_t] x)

so :func:`stacked` swaps each adapted layer's forward, for one stage, for one pair of matmuls of
rank ``sum r_i``: the frozen blocks are concatenated once when the stage starts (detached), the
trainable block is appended on every call (so its gradient is the same as PEFT's). Dropout, when
configured, draws one mask per call for all adapters (as the O-LoRA authors' code does) rather
than one per adapter. Layers this cannot express (DoRA or other LoRA variants, merged or disabled
adapters, non-Linear layers) keep PEFT's forward.
"""

from __future__ import annotations

import contextlib
import types

import torch
import torch.nn.functional as F

try:  # PEFT's LoRA Linear; without PEFT nothing is stacked
    from peft.tuners.lora.layer import Linear as LoraLinear
except ImportError:  # pragma: no cover - peft is a dependency
    LoraLinear = None


def _stackable(module, names: list[str]) -> bool:
    return (LoraLinear is not None and isinstance(module, LoraLinear)
            and not module.merged and not module.disable_adapters
            and set(module.active_adapters) == set(names)
            and not any(n in getattr(module, "lora_variant", {}) for n in names))


def _stacked_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    frozen_A, frozen_B, new, active = self._everlearn_stack
    if (self.disable_adapters or self.merged or kwargs.get("adapter_names") is not None
            or tuple(self.active_adapters) != active):  # someone changed the set: PEFT's way
        return type(self).forward(self, x, *args, **kwargs)
    result = self.base_layer(x, *args, **kwargs)
    lora_A, lora_B = self.lora_A[new], self.lora_B[new]
    x = self._cast_input_dtype(x, lora_A.weight.dtype)
    a = torch.cat([frozen_A, lora_A.weight])
    b = torch.cat([frozen_B, lora_B.weight * self.scaling[new]], dim=1)
    return (result + F.linear(F.linear(self.lora_dropout[new](x), a), b)).to(result.dtype)


_stacked_forward.token_local = True  # per token: option scoring may share a prompt head


@contextlib.contextmanager
def stacked(model, frozen: list[str], new: str):
    """Within the context, every stackable LoRA layer computes adapters ``frozen`` (which must
    not change meanwhile) plus the trainable ``new`` in one pass; afterwards PEFT's forward.
    A layer whose active adapters, merge or disable state change meanwhile falls back to PEFT's
    forward for that call."""
    swapped = []
    if frozen:
        for module in model.modules():
            if not _stackable(module, [*frozen, new]):
                continue
            with torch.no_grad():
                frozen_A = torch.cat([module.lora_A[n].weight for n in frozen]).detach()
                frozen_B = torch.cat([module.lora_B[n].weight * module.scaling[n]
                                      for n in frozen], dim=1).detach()
            module._everlearn_stack = (frozen_A, frozen_B, new, tuple(module.active_adapters))
            module.forward = types.MethodType(_stacked_forward, module)
            swapped.append(module)
    try:
        yield len(swapped)
    finally:
        for module in swapped:
            del module.forward  # the instance attribute; the class's forward is back
            del module._everlearn_stack

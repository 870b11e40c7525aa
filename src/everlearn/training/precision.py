"""Which mixed precision a run trains in: ``train.precision`` resolved for the device.

Kept apart from the loop because the run driver resolves it before the Accelerator (and the
loop) exist.
"""

from __future__ import annotations

import torch

from everlearn.runs.environment import cpu_bf16


def bf16_supported(device: torch.device) -> bool:
    """bf16 autocast pays off on CUDA with bf16 and on CPUs with native bf16 (AVX512-BF16, AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_bf16()
    return False


def resolve_precision(preference: str, device: torch.device) -> str:
    """accelerate's mixed_precision value for the configured ``train.precision``."""
    if preference == "fp32":
        return "no"
    if preference == "bf16" or bf16_supported(device):
        return "bf16"
    return "no"

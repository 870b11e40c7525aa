"""The environment a run used, recorded under ``environment`` in results.json.

Two runs of one config can differ in their numbers because a library changed, the device did,
or the run fell back from bf16 autocast to fp32; without the environment written beside the
results a reader cannot tell. ``collect`` is called once per process that writes results.json
(a resumed run records its own process); ``history`` keeps the earlier environments of a
resumed run when they differ from the latest. No torch import at module level: ``compare`` and
the report read the recorded dict only, and ``cpu_bf16`` serves the trainer's precision choice.
"""

from __future__ import annotations

import platform
import sys
from importlib import metadata
from typing import Any

from everlearn.wording import plural

# Versions recorded besides everlearn's own (None when a package is not installed).
PACKAGES = ("torch", "transformers", "peft", "accelerate", "datasets", "safetensors")
# The order fields are shown in (compare, the report, the log line); unknown keys follow.
FIELDS = ("everlearn", "python", *PACKAGES, "os", "machine", "device", "gpu", "cuda", "cpu",
          "cpu_bf16", "world_size", "threads", "precision")


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _cpuinfo() -> str:
    if not sys.platform.startswith("linux"):
        return ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            return fh.read()
    except OSError:
        return ""


def cpu_model() -> str | None:
    """/proc/cpuinfo's ``model name`` on Linux, else what ``platform`` says."""
    for line in _cpuinfo().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            return value.strip()
    return platform.processor() or platform.machine() or None


def cpu_bf16() -> bool:
    """Whether the CPU computes bf16 natively (AVX512-BF16 or AMX): only then does bf16 autocast
    pay off on the CPU."""
    for line in _cpuinfo().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            flags = set(value.split())
            return "avx512_bf16" in flags or "amx_bf16" in flags
    return False


def collect(device: Any, mixed_precision: str, world_size: int = 1) -> dict[str, Any]:
    """This process's environment. ``device`` is the run's torch device; ``mixed_precision``
    is accelerate's value actually in force (``bf16`` or ``no``), recorded as bf16 / fp32."""
    import torch

    from everlearn import __version__

    env: dict[str, Any] = {"everlearn": __version__, "python": platform.python_version()}
    env.update({name: package_version(name) for name in PACKAGES})
    env.update(os=f"{platform.system()} {platform.release()}".strip(),
               machine=platform.machine() or None)
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        env.update(device=f"cuda:{index}", gpu=torch.cuda.get_device_name(index),
                   cuda=torch.version.cuda)
    else:
        env["device"] = str(device)
    env.update(cpu=cpu_model(), cpu_bf16=cpu_bf16(), world_size=int(world_size),
               threads=torch.get_num_threads(),
               precision="bf16" if mixed_precision == "bf16" else "fp32")
    return env


def history(previous: dict[str, Any] | None, env: dict[str, Any]) -> list[dict[str, Any] | None]:
    """``environment_history`` for results.json when ``env``'s process continues a run whose
    results.json held ``previous``: the earlier environments, oldest first, one entry per
    change (None: results written before everlearn recorded environments); empty while every
    process of the run had the same environment. ``previous`` None: a fresh run."""
    if previous is None:
        return []
    past = list(previous.get("environment_history") or [])
    last = previous.get("environment")
    if last != env:
        past.append(last if isinstance(last, dict) else None)
    return past


def add_to(results: dict[str, Any], env: dict[str, Any] | None,
           earlier: list[dict[str, Any] | None]) -> None:
    """Put ``environment`` (and ``environment_history`` when there is one) into ``results``."""
    if env is not None:
        results["environment"] = env
    if earlier:
        results["environment_history"] = earlier


def summary(env: dict[str, Any]) -> str:
    """One log line: what most often explains a difference between two runs."""
    device = env.get("device")
    if env.get("gpu"):
        device = f"{device} ({env['gpu']})"
    return (f"torch {env.get('torch')}, transformers {env.get('transformers')}, "
            f"device {device}, CPU {env.get('cpu')}, precision {env.get('precision')}, "
            f"{plural(env.get('world_size'), 'process', 'processes')} x "
            f"{plural(env.get('threads'), 'thread')}")


"""A stage's LoRA as a standard PEFT adapter directory, which ``PeftModel.from_pretrained`` loads.

A stage checkpoint's ``trainable.safetensors`` keeps PEFT's in-model parameter names
(``...q_proj.lora_A.default.weight``) and no ``adapter_config.json``, so it only reloads into
everlearn's own model. This module turns a phase's weights and strategy state into what
``PeftModel.save_pretrained`` writes: ``adapter_config.json`` (the engine's ``LoraConfig``,
``inference_mode`` on) and ``adapter_model.safetensors`` with PEFT's saved keys (the adapter
name taken out: ``...q_proj.lora_A.weight``). What the adapter holds depends on the strategies:

* one adapter (``form: adapter``): strategies that only change how the engine's ``default``
  adapter trains (seqft, joint, replay, der, pseudo_replay, ssr, general_mix, ewc, mas, l2, lwf,
  agem, in any combination): that adapter.
* the sum as one adapter (``adapter_sum``): ``inc_lora`` and ``olora`` keep every stage's adapter
  active, so the model computes ``W x + sum_i s B_i A_i x``. That is exactly one LoRA of rank
  ``sum r_i``: ``A = [A_1; ...; A_t]``, ``B = [B_1 ... B_t]`` (PEFT's ``cat`` combination), with
  ``lora_alpha`` scaled so its scaling stays ``s`` (``alpha * t``; ``alpha * sqrt(t)`` under
  rsLoRA). Same function, one adapter.
* one adapter per stage (``stage_adapters``): ``routed_lora`` computes one adapter per record,
  chosen by task id or prototype; PEFT has no router, so each stage's adapter is its own
  directory ``stage<i>/`` and ``stages.json`` says which stage and task id each belongs to.

Refused, with the reason (:func:`export_form`): ``merge`` under LoRA (the merged delta is held in
forward hooks outside the adapter), ``grace`` (a codebook hooked into one layer),
``progressive_prompts`` (soft prompts put in front of the input by hooks), ``block_expansion``
(inserted blocks), ``stage_projector`` and vision-language models, and any strategy not listed
here. Full fine-tuning is exported as a whole model (everlearn.runs.export), never per stage.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from everlearn.errors import ExportError
from everlearn.runs.run_dir import ADAPTER_DIR  # beside a checkpoint's trainable.safetensors

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
STAGES_NAME = "stages.json"  # stage_adapters: which stage each subdirectory belongs to

# strategies that leave the weights as the only thing they change (the engine's one adapter)
WEIGHTS_ONLY = frozenset({"seqft", "joint", "replay", "der", "pseudo_replay", "ssr",
                          "general_mix", "ewc", "mas", "l2", "lwf", "agem", "gem", "migu"})
SUMMED = frozenset({"inc_lora", "olora"})
PER_STAGE = frozenset({"routed_lora"})
# full fine-tuning: the merged or edited weights are the model's own
FULL_ALSO = frozenset({"merge", "rome", "memit", "alphaedit"})
WHY_NOT = {
    "merge": "under LoRA its merged delta is held in forward hooks outside the adapter "
             "(full fine-tuning exports as a model)",
    "grace": "its edits are a codebook hooked into one layer, not weights",
    "progressive_prompts": "its soft prompts are put in front of the input by hooks",
    "block_expansion": "it inserts decoder blocks that only the strategy rebuilds",
    "stage_projector": "its per-stage projectors are chosen per record",
}


@dataclass
class Adapter:
    """One PEFT adapter: the subdirectory it goes in ('' for the top), its LoraConfig and its
    tensors under PEFT's saved keys."""

    subdir: str
    config: Any
    tensors: dict[str, torch.Tensor]


def export_form(strategies: list[str], finetune: str, source: str = "run") -> str:
    """``adapter``, ``adapter_sum``, ``stage_adapters`` or (full fine-tuning) ``full``; an
    ExportError naming the strategy that makes the weights alone not the model."""
    allowed = WEIGHTS_ONLY | (FULL_ALSO if finetune == "full" else SUMMED | PER_STAGE)
    for name in strategies:
        if name not in allowed:
            why = WHY_NOT.get(name, "its state is more than the model's weights")
            raise ExportError(f"{source}: strategies: '{name}' is not exportable: {why}")
    if finetune == "full":
        return "full"
    if any(n in SUMMED for n in strategies):
        return "adapter_sum"
    if any(n in PER_STAGE for n in strategies):
        return "stage_adapters"
    return "adapter"


def peft_key(name: str, adapter: str) -> str | None:
    """PEFT's saved key of an in-model LoRA parameter of ``adapter`` (None: not one)."""
    for part in ("lora_A", "lora_B"):
        marker = f".{part}.{adapter}."
        if marker in name:
            return name.replace(marker, f".{part}.")
    return None


def stage_adapter_state(strategies: list[str], state: dict[str, Any]):
    """(adapter entries as the strategy's meta lists them, {adapter name: {in-model name:
    tensor}}) of the per-stage adapter strategy in a stack's state (keys ``<i>.<name>/``)."""
    for i, name in enumerate(strategies):
        if name in SUMMED | PER_STAGE:
            key = f"{i}.{name}"
            entries = (state.get("meta") or {}).get(key, {}).get("adapters", [])
            prefix = f"{key}/adapter/"
            found: dict[str, dict[str, torch.Tensor]] = {}
            for k, v in (state.get("tensors") or {}).items():
                if not k.startswith(prefix):
                    continue
                pname = k[len(prefix):]
                for e in entries:
                    if peft_key(pname, e["name"]) is not None:
                        found.setdefault(e["name"], {})[pname] = v
            return entries, found
    raise ExportError("strategy state: no per-stage adapters found")


def single_adapter(weights: dict[str, torch.Tensor], lora) -> Adapter:
    """The engine's ``default`` adapter from a checkpoint's trainable weights."""
    out = {}
    for name, t in weights.items():
        key = peft_key(name, "default")
        if key is None:
            raise ExportError(f"trainable weight '{name}' is not part of the LoRA adapter; "
                              "only LoRA weights export as a PEFT adapter")
        out[key] = t
    return Adapter("", inference_config(lora), out)


def rename(tensors: dict[str, torch.Tensor], adapter: str) -> dict[str, torch.Tensor]:
    return {peft_key(k, adapter): v for k, v in tensors.items()}


def summed_adapter(entries, found, lora) -> Adapter:
    """Every stage adapter's delta added up, as one adapter of rank ``sum r_i``."""
    names = [e["name"] for e in entries]
    if lora.rank_pattern or lora.alpha_pattern or getattr(lora, "use_dora", False):
        raise ExportError("model.lora: per-module ranks, alphas or DoRA do not sum into one "
                          "adapter")
    parts = [rename(found.get(n, {}), n) for n in names]
    keys = sorted(parts[0])
    if not keys or any(sorted(p) != keys for p in parts):
        raise ExportError(f"strategy state: adapters {', '.join(names)} do not adapt the same "
                          "modules")
    tensors = {k: torch.cat([p[k] for p in parts], dim=0 if ".lora_A." in k else 1)
               for k in keys}
    config = inference_config(lora)
    n = len(names)
    config.r = lora.r * n
    config.lora_alpha = lora.lora_alpha * (math.sqrt(n) if lora.use_rslora else n)
    return Adapter("", config, tensors)


def peft_adapters(form: str, lora, weights: dict[str, torch.Tensor],
                  state: dict[str, Any], strategies: list[str]) -> list[Adapter]:
    """The adapters a phase exports as (see the module docstring); ``lora``: the engine's
    LoraConfig (every stage adapter is a copy of it)."""
    if form == "adapter":
        return [single_adapter(weights, lora)]
    entries, found = stage_adapter_state(strategies, state)
    if not entries:
        raise ExportError("strategy state: no stage adapter trained yet")
    if form == "adapter_sum":
        return [summed_adapter(entries, found, lora)]
    return [Adapter(e["name"], inference_config(lora), rename(found.get(e["name"], {}),
                                                             e["name"]))
            for e in entries]


def inference_config(lora):
    config = copy.deepcopy(lora)
    config.inference_mode = True
    return config


def config_json(config, base_model: str | None) -> str:
    """adapter_config.json as ``PeftConfig.save_pretrained`` writes it (sets as lists)."""
    data = config.to_dict()
    if base_model:
        data["base_model_name_or_path"] = base_model
    for key, value in data.items():
        if isinstance(value, set):
            data[key] = sorted(value)
    return json.dumps(data, indent=2, sort_keys=True)


def write_adapter_dir(target: Path, adapters: list[Adapter], base_model: str | None,
                      stages: list[dict[str, Any]] | None = None) -> list[str]:
    """Write ``adapters`` into the directory ``target`` as a whole (a temporary directory
    renamed into place, replacing an older one); the files written, relative to ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        written = fill_adapter_dir(tmp, adapters, base_model, stages)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return written


def fill_adapter_dir(d: Path, adapters: list[Adapter], base_model: str | None,
                     stages: list[dict[str, Any]] | None = None) -> list[str]:
    """Write ``adapters`` into the existing directory ``d`` (each in its subdirectory, with
    adapter_config.json and adapter_model.safetensors); ``stages``: per-stage adapters' stage
    entries, written to stages.json. The files written, relative to ``d``."""
    written = []
    for a in adapters:
        sub = d / a.subdir if a.subdir else d
        sub.mkdir(parents=True, exist_ok=True)
        (sub / CONFIG_NAME).write_text(config_json(a.config, base_model), encoding="utf-8")
        save_file({k: v.detach().cpu().contiguous() for k, v in a.tensors.items()},
                  str(sub / WEIGHTS_NAME), metadata={"format": "pt"})
        written += [f"{a.subdir}/{n}" if a.subdir else n for n in (CONFIG_NAME, WEIGHTS_NAME)]
    if stages is not None:
        (d / STAGES_NAME).write_text(json.dumps(stages, indent=2) + "\n", encoding="utf-8")
        written.append(STAGES_NAME)
    return written


def stage_entries(form: str, state: dict[str, Any], strategies: list[str]):
    """stages.json's content for per-stage adapters (None for the other forms)."""
    if form != "stage_adapters":
        return None
    entries, _ = stage_adapter_state(strategies, state)
    return [{"adapter": e["name"], "stage": e["stage"], "stage_name": e["stage_name"],
             "task_id": e["task_id"]} for e in entries]


def phase_writer(cfg, model, weights: dict[str, torch.Tensor], state: dict[str, Any],
                 strategies: list[str]):
    """What a LoRA run's stage checkpoint calls to write ``adapter/`` beside its weights:
    ``write(phase_dir) -> files written`` (relative to the phase directory; none when the
    phase's LoRA is not exportable), or None for a run that has no such adapter (full
    fine-tuning, a vision-language model, a refused strategy)."""
    from everlearn.vision import is_vision_model

    if cfg.model.finetune != "lora" or is_vision_model(model) or not getattr(
            model, "peft_config", None):
        return None
    try:
        form = export_form(strategies, "lora")
    except ExportError:
        return None
    lora = next(iter(model.peft_config.values()))  # every stage adapter copies the engine's
    base = lora.base_model_name_or_path or cfg.model.name

    def write(phase_dir: Path) -> list[str]:
        try:
            adapters = peft_adapters(form, lora, weights, state, strategies)
        except ExportError:
            return []  # e.g. a trainable weight that is not LoRA: the checkpoint alone
        files = write_adapter_dir(phase_dir / ADAPTER_DIR, adapters, base,
                                  stage_entries(form, state, strategies))
        return [f"{ADAPTER_DIR}/{f}" for f in files]

    return write

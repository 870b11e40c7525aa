"""The base row's scores, computed once per content and shared by the runs of a sweep.

Every point of a sweep (strategies x seeds on one stream) starts by scoring the untrained model
on each stage's test set, and that work is the same for all of them. A cached stage score is
used only when everything it depends on is the same, compared as content, not as names:

- the model: a hash of every weight and buffer (name, dtype, shape, bytes), of the module
  tree, the forward hooks on it and forwards replaced on a module (what strategies may add),
  and of the model's config (the attention implementation included). One exception, exact: a
  LoRA adapter whose ``B`` is all zeros (PEFT's init) adds exactly zero, whatever its ``A``, so
  the bytes of such an ``A`` are left out (a seed that only draws ``A`` then shares the entry);
- the tokenizer (its serialised vocabulary, merges and special tokens, and its chat template);
- the data: the stage's kind, metric and labels and its test records after sampling
  (``max_test`` and friends are applied already), image files by content;
- the scoring settings: the whole ``eval`` section (metric options, ``max_new_tokens``, batch
  size: left padding can move the low bits), ``train.max_length``, the chat-template and edit
  formats, the precision and device type, and the versions of everlearn, torch and
  transformers.

Entries are JSON files ``CACHE_DIR/base-row/<sha256>.json``, written atomically; each keeps
the parts of its key and is used only if they all equal the ones computed now. Only what can
be restored exactly is cached: single-process runs without routing, ``sft`` and ``cpt``
stages (the score, its predictions and side metrics, and the share of test prompts cut to
``max_length``). Other kinds (edit locality, preference log-ratios) keep state in the
evaluator and are scored afresh.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch

from everlearn import __version__
from everlearn.evaluation.evaluator_base import StageScore
from everlearn.runs.run_dir import write_atomic

log = logging.getLogger(__name__)

CACHED_KINDS = ("sft", "cpt")


def _tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().cpu().contiguous()
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def _zero_b_adapters(params: dict[str, torch.Tensor]) -> set[str]:
    """Names of the LoRA ``A`` weights whose ``B`` is all zeros (they add exactly nothing);
    none when the model has DoRA magnitudes (there the weight is renormalised)."""
    if any("lora_magnitude_vector" in n for n in params):
        return set()
    out = set()
    for name, p in params.items():
        if ".lora_B." in name and not bool(p.detach().any()):
            a = name.replace(".lora_B.", ".lora_A.")
            if a in params:
                out.add(a)
    return out


def model_fingerprint(model) -> str:
    """sha256 of the model's weights, buffers, module tree, hooks and config (see above)."""
    h = hashlib.sha256()
    params = dict(model.named_parameters(remove_duplicate=False))
    inert = _zero_b_adapters(params)
    tensors = list(params.items()) + list(model.named_buffers(remove_duplicate=False))
    for name, t in tensors:
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        if name not in inert:
            h.update(_tensor_bytes(t))
    for name, module in model.named_modules():
        hooks = [getattr(f, "__qualname__", repr(f)) for f in
                 list(module._forward_hooks.values()) + list(module._forward_pre_hooks.values())]
        own = module.__dict__.get("forward")  # a forward replaced on the instance
        if own is not None:
            hooks.append(getattr(own, "__qualname__", repr(own)))
        h.update(f"{name}:{type(module).__qualname__}:{hooks}\n".encode())
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_json_string"):
        h.update(config.to_json_string(use_diff=False).encode())
        h.update(str(getattr(config, "_attn_implementation", "")).encode())
    return h.hexdigest()


def tokenizer_fingerprint(tok) -> str:
    """sha256 of a tokenizer's serialised form and chat template (or a processor's)."""
    inner = getattr(tok, "tokenizer", tok)  # a vision-language processor wraps one
    backend = getattr(inner, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(
        inner.get_vocab(), sort_keys=True)
    extra = {"template": getattr(tok, "chat_template", None) or getattr(
        inner, "chat_template", None), "special": str(inner.special_tokens_map),
        "bos": getattr(inner, "add_bos_token", None), "eos": getattr(inner, "add_eos_token", None)}
    return hashlib.sha256((text + json.dumps(extra, sort_keys=True, default=str)).encode()
                          ).hexdigest()


def _record_content(record) -> dict[str, Any]:
    row = dataclasses.asdict(record)
    image = row.get("image")
    if image and Path(str(image)).is_file():
        row["image"] = hashlib.sha256(Path(str(image)).read_bytes()).hexdigest()
    return row


def data_fingerprint(stage) -> str:
    """sha256 of what a stage's base score reads of it: kind, metric, labels, test records."""
    body = {"kind": stage.kind, "metric": stage.metric, "labels": stage.labels,
            "task_id": stage.task_id,
            "test": [_record_content(r) for r in stage.test]}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def scoring_settings(cfg, precision: str, device: str) -> dict[str, Any]:
    """The settings a stage score depends on besides the model and the data."""
    import transformers

    return {"eval": json.loads(json.dumps(dataclasses.asdict(cfg.eval), default=str)),
            "max_length": cfg.train.max_length, "chat_template": cfg.model.chat_template,
            "edit_format": cfg.edit.format, "precision": precision, "device": device,
            "everlearn": __version__, "torch": torch.__version__,
            "transformers": transformers.__version__}


class BaseRowCache:
    """Stage scores of the base row under ``CACHE_DIR/base-row``, keyed by content."""

    def __init__(self, root: str | Path, settings: dict[str, Any], tokenizer: str):
        self.dir = Path(root) / "base-row"
        self.settings, self.tokenizer = settings, tokenizer
        self.model: str | None = None  # the model's fingerprint, once computed
        self.hits = self.misses = 0

    def parts(self, model, stage) -> dict[str, Any]:
        """Every component of the key of ``stage``'s base score (the model hashed once)."""
        if self.model is None:
            self.model = model_fingerprint(model)
        return {"model": self.model, "tokenizer": self.tokenizer,
                "data": data_fingerprint(stage), "scoring": self.settings}

    def _path(self, parts: dict[str, Any]) -> Path:
        key = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
        return self.dir / f"{key}.json"

    def get(self, parts: dict[str, Any]) -> tuple[StageScore, float | None] | None:
        """(score, share of test prompts cut) stored under exactly ``parts``, else None."""
        path = self._path(parts)
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if entry.get("parts") != parts:
            return None
        s = entry["score"]
        return (StageScore(s["score"], s["n"], s["predictions"], s.get("side") or {},
                           s.get("samples")),  # the predictions files' lines (runs.predictions)
                entry.get("truncated_test"))

    def put(self, parts: dict[str, Any], score: StageScore, truncated: float | None) -> None:
        entry = {"parts": parts, "score": dataclasses.asdict(score),
                 "truncated_test": truncated}
        write_atomic(self._path(parts), json.dumps(entry, sort_keys=True))

    def score(self, evaluator, model, stage) -> StageScore:
        """The stage's base score: from the cache when its key matches, else scored (and
        stored)."""
        parts = self.parts(model, stage)
        found = self.get(parts)
        if found is not None:
            score, truncated = found
            if truncated is not None:
                evaluator.encoder.truncated.setdefault(stage.name, {})["test"] = truncated
            self.hits += 1
            log.info("base row: %s from the cache", stage.name)
            return score
        score = evaluator.score(model, stage)
        self.misses += 1
        self.put(parts, score, evaluator.encoder.truncated.get(stage.name, {}).get("test"))
        return score


def cacheable(stage, router, processes: int) -> bool:
    """Whether a stage's base score may come from the cache (see the module docstring)."""
    return router is None and processes == 1 and stage.kind in CACHED_KINDS

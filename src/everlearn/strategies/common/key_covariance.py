"""The second moment C = E[k k^T] of an MLP down-projection's keys on a general text corpus,
which ROME, MEMIT and AlphaEdit take as the statistics of the knowledge an edit must keep.

It is estimated once per model, layer, corpus and token count and cached in the run directory
(``cache/covariance/<key>.safetensors``, written atomically; the file's metadata repeats the
key, so a file for another key is never taken), so a resumed run and every later edit stage
read the same matrix. The corpus is the built-in general instruction set of ``general_mix``
(each pair as one text, "prompt answer") unless the editor's ``corpus`` option names a file
(read as ``general_mix`` reads one: instruction records or text). Keys are taken at every
token of every document (truncated to ``max_length`` tokens) in corpus order until ``tokens``
keys were seen (null: the whole corpus); the count used is reported.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from everlearn.strategies.common.general_data import GENERAL_PAIRS
from everlearn.strategies.common.mlp_access import capture_inputs, down_projection

BUILTIN = "builtin:general"


@dataclass
class CovarianceRequest:
    """What identifies a covariance: the model, the layer, the corpus and the token budget."""

    model: str
    layer: int
    corpus: str
    tokens: int | None
    max_length: int

    def key(self) -> str:
        text = json.dumps([self.model, self.layer, self.corpus, self.tokens, self.max_length])
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    def metadata(self) -> dict[str, str]:
        return {"model": self.model, "layer": str(self.layer), "corpus": self.corpus,
                "tokens": str(self.tokens), "max_length": str(self.max_length)}


def model_identity(model, name: str | None) -> str:
    """The model's name with a hash of its architecture config (two tiny models of different
    sizes under one name do not share a cache entry)."""
    config = getattr(model, "config", None)
    text = config.to_json_string(use_diff=False) if config is not None else repr(model)
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    return f"{name or getattr(config, '_name_or_path', '') or 'model'}:{digest}"


def corpus_texts(path: str | None, split: str | None = "train") -> tuple[list[str], str]:
    """(documents, identity) of the corpus: the built-in general pairs, or a file's records
    (identity: the resolved path and a hash of its bytes, so an edited file misses the cache)."""
    if path is None:
        texts = [f"{p} {a}" for p, a in GENERAL_PAIRS]
        digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:12]
        return texts, f"{BUILTIN}:{digest}"
    from everlearn.strategies.general_mix import read_corpus

    records = read_corpus(path, split)
    texts = [r.text if r.text else f"{r.prompt} {r.response}" for r in records]
    file = Path(path).expanduser()
    if file.is_file():
        digest = hashlib.sha256(file.read_bytes()).hexdigest()[:12]
        return texts, f"{file.resolve()}:{digest}"
    return texts, f"{path}:{split}"


@torch.no_grad()
def estimate(model, encoder, texts: list[str], layers: list[int], tokens: int | None,
             max_length: int, autocast, who: str) -> tuple[dict[int, torch.Tensor], int]:
    """E[k k^T] of each layer's down-projection input over the corpus tokens (one document per
    forward pass, so no padding enters), and the number of tokens used."""
    modules = {layer: down_projection(model, layer, who) for layer in layers}
    device = next(model.parameters()).device
    sums: dict[int, torch.Tensor] = {}
    seen = 0
    was_training = model.training
    model.eval()
    try:
        for text in texts:
            if tokens is not None and seen >= tokens:
                break
            ids = encoder.start_ids(text)[:max_length]
            if tokens is not None:
                ids = ids[:tokens - seen]
            if not ids:
                continue
            with capture_inputs(modules) as found, autocast():
                model(input_ids=torch.tensor([ids], device=device))
            for layer in layers:
                k = found[layer][0][0].double()  # seq x d_in
                sums[layer] = sums[layer] + k.T @ k if layer in sums else k.T @ k
            seen += len(ids)
    finally:
        model.train(was_training)
    if not seen:
        raise ValueError(f"{who}: the covariance corpus has no tokens")
    return {layer: (s / seen).float().cpu() for layer, s in sums.items()}, seen


def _is_main() -> bool:
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def save_cached(path: Path, cov: torch.Tensor, count: int, req: CovarianceRequest) -> None:
    """Write the cache file atomically (a temporary beside it, then a rename), main process
    only."""
    if not _is_main():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        save_file({"covariance": cov.contiguous()}, tmp,
                  metadata={**req.metadata(), "count": str(count)})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_cached(path: Path, req: CovarianceRequest) -> tuple[torch.Tensor, int] | None:
    """The cached (covariance, token count), or None when there is none for ``req``."""
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
        if any(meta.get(k) != v for k, v in req.metadata().items()):
            return None
        return fh.get_tensor("covariance"), int(meta["count"])


class CovarianceCache:
    """Covariances of one run: in memory, and on disk under ``cache_dir`` when there is one.
    ``hits`` and ``misses`` count disk look-ups (for tests and the editor's metrics)."""

    def __init__(self, cache_dir: Path | None):
        self.dir = Path(cache_dir) if cache_dir is not None else None
        self.memory: dict[str, tuple[torch.Tensor, int]] = {}
        self.hits = self.misses = 0

    def path(self, req: CovarianceRequest) -> Path | None:
        return self.dir / f"{req.key()}.safetensors" if self.dir is not None else None

    def get(self, reqs: list[CovarianceRequest], compute) -> dict[int, tuple[torch.Tensor, int]]:
        """The covariance and token count of every request (one per layer); ``compute(layers)``
        estimates the missing ones in one pass over the corpus."""
        out: dict[int, tuple[torch.Tensor, int]] = {}
        missing = []
        for req in reqs:
            found = self.memory.get(req.key())
            if found is None and (path := self.path(req)) is not None:
                found = load_cached(path, req)
                self.hits, self.misses = self.hits + (found is not None), self.misses + (
                    found is None)
            if found is None:
                missing.append(req)
            else:
                out[req.layer] = self.memory[req.key()] = found
        if missing:
            covs, count = compute([r.layer for r in missing])
            for req in missing:
                out[req.layer] = self.memory[req.key()] = (covs[req.layer], count)
                if (path := self.path(req)) is not None:
                    save_cached(path, covs[req.layer], count, req)
        return out

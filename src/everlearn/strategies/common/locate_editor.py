"""What ROME, MEMIT and AlphaEdit share as strategies: their options on keys, values and the
covariance, the layers they edit, the prefixes and covariance they compute once, their
metrics and their checkpoint state. Each editor adds its update rule (``edit_requests``).

They edit the model's weights in place, so they need ``model.finetune: full`` (the phase
checkpoint then holds the edited weights); the covariance is cached in the run directory, and
what else they accumulate (the prefixes, AlphaEdit's K_p K_p^T) is in the strategy state.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from everlearn.schema import field
from everlearn.stages import get_kind
from everlearn.strategies.base import Strategy
from everlearn.strategies.common.edit_targets import (
    EditRequest,
    ValueSettings,
    generate_prefixes,
    requests_of,
)
from everlearn.strategies.common.key_covariance import (
    CovarianceCache,
    CovarianceRequest,
    corpus_texts,
    estimate,
    model_identity,
)
from everlearn.strategies.common.mlp_access import down_projection
from everlearn.strategies.grace import decoder_layers

CACHE_DIR = Path("cache") / "covariance"


@dataclass
class LocateOptions:
    """Options every locate-then-edit editor has (the value optimisation and the covariance)."""

    corpus: str | None = field(
        None, "Text corpus whose keys give the covariance C (JSON/JSONL records, .txt, hf:name);"
        " null: the 60 built-in general instruction pairs of general_mix.", path=True)
    covariance_tokens: int | None = field(
        None, "Most corpus tokens whose keys enter C (null: the whole corpus).")
    covariance_max_length: int = field(128, "Tokens per corpus document (longer ones are cut).")
    ridge: float = field(
        1e-3, "C + ridge * mean eigenvalue * I before it is inverted (a covariance from fewer "
        "tokens than keys' dimensions is singular; 0: none, as in the papers).")
    prefixes: int = field(5, "Prefixes the model writes itself; keys are averaged over them and "
                        "the empty prefix, and values optimised on all of them.")
    prefix_length: int = field(10, "Tokens per prefix.")
    value_steps: int = field(20, "Most Adam steps of a value.")
    value_lr: float = field(0.5, "Adam learning rate of a value.")
    kl_factor: float = field(0.0625, "Weight of the KL 'essence' term (<subject> is a).")
    weight_decay: float = field(
        0.5, "Weight of the squared norm of delta over that of h in a value's loss (h: the "
        "output being rewritten, before the edit).")
    clamp_norm: float = field(4.0, "The norm of delta is clamped to this times that of h after "
                            "every step.")
    stop_loss: float = field(0.05, "A value's optimisation stops once its NLL is below this.")

    def check(self) -> tuple[str, str] | None:
        for name in ("value_lr", "clamp_norm"):
            if getattr(self, name) <= 0:
                return name, f"expected a positive number, got {getattr(self, name)}"
        for name in ("ridge", "kl_factor", "weight_decay", "stop_loss", "prefixes"):
            if getattr(self, name) < 0:
                return name, f"expected a number >= 0, got {getattr(self, name)}"
        for name in ("prefix_length", "value_steps", "covariance_max_length"):
            if getattr(self, name) < 1:
                return name, f"expected an integer >= 1, got {getattr(self, name)}"
        if self.covariance_tokens is not None and self.covariance_tokens < 1:
            return "covariance_tokens", f"expected an integer >= 1 or null, got " \
                                        f"{self.covariance_tokens}"
        if self.corpus is not None and not self.corpus.strip():
            return "corpus", "expected a file path or null"
        if self.corpus is not None and ":" not in self.corpus and not Path(
                self.corpus).expanduser().exists():
            return "corpus", f"{self.corpus}: file not found"
        return None

    def value_settings(self) -> ValueSettings:
        return ValueSettings(self.value_steps, self.value_lr, self.kl_factor, self.weight_decay,
                             self.clamp_norm, self.stop_loss)


class LocateEditor(Strategy):
    """The shared part of ROME, MEMIT and AlphaEdit (not registered: it has no name)."""

    requires_finetune = "full"
    unsupported_parallel = {
        "fsdp": "it edits whole weight matrices of chosen layers in place",
        "zero": "it edits weight matrices in place outside the training loop",
    }

    def __init__(self, options=None):
        super().__init__(options)
        self.layers: list[int] = []
        self.prefixes: list[str] | None = None
        self.edits = 0
        self.covariance_tokens: int | None = None
        self.covariance_corpus: str | None = None
        self.cache = CovarianceCache(None)
        self.update_norms: list[float] = []
        self.counted_stage: str | None = None  # the stage whose edited weights were counted

    # --- what each editor defines ---------------------------------------------------------
    def choose_layers(self, depth: int) -> list[int]:
        raise NotImplementedError

    def edit_requests(self, reqs: list[EditRequest]) -> dict[str, Any]:
        """Apply the edits; {steps, tokens, loss} of the value optimisation."""
        raise NotImplementedError

    # --- set-up ---------------------------------------------------------------------------
    def setup(self, ctx) -> None:
        super().setup(ctx)
        self.layers = self.choose_layers(len(decoder_layers(ctx.model)))
        run_dir = getattr(ctx, "run_dir", None)
        self.cache = CovarianceCache(Path(run_dir) / CACHE_DIR if run_dir else None)

    def autocast(self):
        return self.ctx.autocast()

    def covariances(self) -> dict[int, torch.Tensor]:
        """C of every edited layer (from the cache, or estimated once on the corpus)."""
        ctx, o = self.ctx, self.options
        texts, corpus = corpus_texts(o.corpus)
        name = getattr(getattr(ctx.config, "model", None), "name", None)
        ident = model_identity(ctx.model, name)
        reqs = [CovarianceRequest(ident, layer, corpus, o.covariance_tokens,
                                  o.covariance_max_length) for layer in self.layers]

        def compute(layers):
            return estimate(ctx.model, ctx.encoder, texts, layers, o.covariance_tokens,
                            o.covariance_max_length, self.autocast, self.name)

        found = self.cache.get(reqs, compute)
        self.covariance_tokens = found[self.layers[0]][1]
        self.covariance_corpus = corpus
        return {layer: cov for layer, (cov, _) in found.items()}

    def down(self, layer: int) -> torch.nn.Module:
        return down_projection(self.ctx.model, layer, self.name)

    # --- the hook -------------------------------------------------------------------------
    def apply_edits(self, stage, records):
        if not get_kind(stage.kind).edits:
            return None
        reqs = requests_of(records)
        model = self.ctx.model
        was_training = model.training
        model.eval()
        try:
            if self.prefixes is None:
                self.prefixes = generate_prefixes(model, self.ctx.encoder, self.options.prefixes,
                                                  self.options.prefix_length, self.ctx.seed)
            done = self.edit_requests(reqs) if reqs else {"steps": 0, "tokens": 0, "loss": 0.0}
        finally:
            model.train(was_training)
        self.edits += len(reqs)
        # the edited matrices, counted once per stage (a stage may come in several batches)
        first = reqs and self.counted_stage != stage.name
        edited = sum(self.down(layer).weight.numel() for layer in self.layers) if first else 0
        if reqs:
            self.counted_stage = stage.name
        return {**done, "edits": len(reqs), "trainable_params": edited}

    # --- results and checkpoints ----------------------------------------------------------
    def metrics(self) -> dict[str, Any]:
        if not self.edits:
            return {}
        out = {"layers": list(self.layers), "edits": self.edits,
               "covariance_tokens": self.covariance_tokens,
               "covariance_corpus": self.covariance_corpus}
        if self.update_norms:
            out["mean_update_norm"] = sum(self.update_norms) / len(self.update_norms)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"meta": {"layers": list(self.layers), "prefixes": self.prefixes,
                         "edits": self.edits, "covariance_tokens": self.covariance_tokens,
                         "covariance_corpus": self.covariance_corpus,
                         "update_norms": list(self.update_norms)},
                "tensors": {}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        meta = state.get("meta", {})
        if self.layers and meta.get("layers") and list(meta["layers"]) != self.layers:
            from everlearn.errors import TrainingError

            raise TrainingError(f"{self.name}: the checkpoint edited layers {meta['layers']}, "
                                f"the run's are {self.layers}")
        self.layers = list(meta.get("layers") or self.layers)
        self.prefixes = meta.get("prefixes")
        self.edits = int(meta.get("edits", 0))
        self.covariance_tokens = meta.get("covariance_tokens")
        self.covariance_corpus = meta.get("covariance_corpus")
        self.update_norms = [float(x) for x in meta.get("update_norms", [])]

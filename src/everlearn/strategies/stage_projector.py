"""Per-stage projector: a new vision-to-language projector for every stage of a vision-language
model, chosen at test time by task id or by the nearest prototype of vision features.

The projector (LLaVA's MLP from vision features to the language model's embeddings) is what
visual instruction stages bend to each task's images and questions; sharing one lets a later
task overwrite what an earlier one needs. Here, as in the expanded task-specific projection
layers of EProj (He et al. 2023), each instruction stage trains its own projector, initialised
from the shared one the alignment stage trained (``init: shared``) or from the previous stage's
(``init: previous``), while the language model trains as configured (LoRA or full; compose with
``inc_lora`` or ``replay`` to protect it too). A stage's projector is kept (strategy state)
when the stage ends.

Testing: ``route(record)`` picks the projector of an image record

* by task id when the stream is task-incremental (``scenario: TIL``): the latest stage trained
  with the record's ``task`` owns it;
* otherwise (DIL, CIL, or a task with no projector yet) by the nearest stage prototype: the mean
  over the stage's training images of the vision tower's features (the ones the projector reads,
  averaged over patches); a record goes to the stage whose prototype has the highest cosine
  similarity with its image's feature. This needs tasks whose images differ (the built-in visual
  tasks each have their own background, as continual VQA benchmarks draw each task from another
  image source); the routing accuracy is reported (``routing_accuracy`` in the strategy
  metrics) so a poor separation shows. An alignment stage (``freeze_lm``) owns the shared
  projector, with a prototype of its own.

The vision tower is frozen in instruction stages unless ``model.vision.train_vision_tower`` is
set; then a stage's prototype is the tower's view when the stage ended. Text records are not
routed. Needs a vision-language model and ``model.vision.train_projector: true``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from everlearn.errors import ConfigError
from everlearn.strategies.base import Strategy
from everlearn.strategies.routed_lora import (
    ROUTE_BY,
    nearest_prototype,
    prototype_records,
    routes_by_task_id,
    routing_accuracy,
    routing_metrics,
    routing_row,
)

SHARED = "shared"


def projector_name(stage_index: int) -> str:
    return f"projector{stage_index}"


@dataclass
class StageProjectorOptions:
    route_by: str = field(default="auto", metadata={
        "help": "'auto': task id when the scenario is TIL, else nearest vision prototype; "
                "'task_id'; 'prototype' (ignore task ids)."})
    init: str = field(default="shared", metadata={
        "help": "A new stage's projector starts from the shared projector (as the alignment "
                "stage left it, or as the model came) or from the previous stage's: 'shared' "
                "or 'previous'."})
    prototype_examples: int | None = field(default=256, metadata={
        "help": "Training images per stage averaged into its prototype (seeded sample; null: "
                "all)."})

    def check(self) -> tuple[str, str] | None:
        """(field, message) for the first invalid option, else None."""
        if self.route_by not in ROUTE_BY:
            return "route_by", f"expected one of {', '.join(ROUTE_BY)}, got {self.route_by!r}"
        if self.init not in ("shared", "previous"):
            return "init", f"expected 'shared' or 'previous', got {self.init!r}"
        if self.prototype_examples is not None and self.prototype_examples < 1:
            return "prototype_examples", f"expected an integer >= 1, got {self.prototype_examples}"
        return None


class StageProjector(Strategy):
    name = "stage_projector"
    summary = ("vision-language models: a new projector per stage, chosen by task id (TIL) or "
               "by the nearest prototype of vision features")
    paper = ("Task-specific projection layers: He et al. 2023, Continual Instruction Tuning for "
             "Large Multimodal Models (EProj); LLaVA: Liu et al. 2023")
    Options = StageProjectorOptions
    requires_vision = True

    def __init__(self, options=None):
        super().__init__(options)
        self.entries: list[dict] = []  # name, stage, stage_name, task_id (latest last)
        self.projectors: dict[str, dict[str, torch.Tensor]] = {}  # name -> weights (cpu)
        self.prototypes: dict[str, torch.Tensor] = {}
        self.routing: list[dict] = []
        self.shared: dict[str, torch.Tensor] | None = None
        self._features: dict[str, torch.Tensor] = {}
        self._projector = None

    # --- setup ----------------------------------------------------------------------------
    def setup(self, ctx) -> None:
        super().setup(ctx)
        from everlearn.vision.parts import find_parts

        parts = find_parts(ctx.model)
        if parts is None:
            raise ConfigError(f"config: strategies: '{self.name}' needs a vision-language model "
                              f"(a projector); model.name '{ctx.config.model.name}' has none")
        if not ctx.config.model.vision.train_projector:
            raise ConfigError(f"config: model.vision.train_projector: strategy '{self.name}' "
                              "trains a projector per stage; set it to true")
        self._projector = parts.projector

    def _weights(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().cpu().clone().contiguous()
                for n, p in self._projector.named_parameters()}

    def _load(self, weights: dict[str, torch.Tensor]) -> None:
        params = dict(self._projector.named_parameters())
        with torch.no_grad():
            for n, t in weights.items():
                params[n].copy_(t)

    # --- hooks ----------------------------------------------------------------------------
    def before_stage(self, stage) -> None:
        self._features = {}
        if stage.freeze_lm:  # alignment trains the shared projector itself
            return
        if self.shared is None:
            self.shared = self._weights()
        if self.options.init == "previous" and self.entries and self.entries[-1]["name"] in (
                self.projectors):
            self._load(self.projectors[self.entries[-1]["name"]])
        else:
            self._load(self.shared)

    def after_stage(self, stage) -> None:
        name = SHARED if stage.freeze_lm else projector_name(stage.index)
        if stage.freeze_lm:
            self.shared = self._weights()
            self.entries = [e for e in self.entries if e["name"] != SHARED]
        self.projectors[name] = self._weights()
        self.entries.append({"name": name, "stage": stage.index, "stage_name": stage.name,
                             "task_id": stage.task_id or stage.name})
        records = prototype_records([r for r in stage.train if r.image],
                                    self.options.prototype_examples, self.ctx.seed, stage.index,
                                    self.name)
        if records:
            self.prototypes[name] = torch.stack(self._compute(records)).mean(0)
        self._features = {}
        self.routing.append(self._measure(stage.name))

    # --- routing --------------------------------------------------------------------------
    def by_task_id(self) -> bool:
        return routes_by_task_id(self.options.route_by, self.ctx)

    def route(self, record) -> str | None:
        if not record.image or not self.projectors:
            return None
        if self.by_task_id():
            owner = {e["task_id"]: e["name"] for e in self.entries}.get(record.task)
            if owner is not None:
                return owner
        names = [n for n in self.projectors if n in self.prototypes]
        if not names:
            return None
        protos = torch.stack([self.prototypes[n] for n in names])
        return names[int(nearest_prototype(self._feature_of(record).unsqueeze(0), protos)[0])]

    def activate(self, model, choice: str) -> bool:
        if choice not in self.projectors:
            return False
        self._load(self.projectors[choice])
        return True

    def _measure(self, after: str) -> dict:
        stages = {s.index: s for s in self.ctx.stream.stages}
        per_stage = {}
        for e in self.entries:
            stage = stages.get(e["stage"])
            test = [r for r in stage.test if r.image] if stage is not None else []
            if test:
                per_stage[e["stage_name"]] = routing_accuracy([self.route(r) for r in test],
                                                              e["name"])
        return routing_row(after, per_stage)

    def metrics(self):
        """Routing accuracy (percent of each stage's image test records sent to its own
        projector) after every stage; the last entry is the final routing."""
        return routing_metrics(self.routing)

    # --- features -------------------------------------------------------------------------
    def _feature_of(self, record) -> torch.Tensor:
        if record.image not in self._features:
            # every test image of the stream at once, in a fixed order (same batches, so the
            # same floating-point features, whatever was routed before)
            refs = {r.image: r for s in self.ctx.stream.stages for r in s.test if r.image}
            if record.image not in refs:
                refs[record.image] = record
            missing = [r for ref, r in refs.items() if ref not in self._features]
            self._features.update(zip([r.image for r in missing], self._compute(missing)))
        return self._features[record.image]

    @torch.no_grad()
    def _compute(self, records) -> list[torch.Tensor]:
        """Pooled vision-tower features of each record's image (eval mode, batched)."""
        from everlearn.vision.parts import pooled_image_features

        ctx, model = self.ctx, self.ctx.model
        device = next(model.parameters()).device
        bs = getattr(getattr(ctx.config, "eval", None), "batch_size", 16)
        was_training = model.training
        model.eval()
        out: list[torch.Tensor] = []
        try:
            for s in range(0, len(records), bs):
                pixels = ctx.encoder.image_tensors([r.image for r in records[s:s + bs]])
                with ctx.autocast():
                    feats = pooled_image_features(model, {k: v.to(device)
                                                          for k, v in pixels.items()})
                out.extend(feats.float().cpu())
        finally:
            model.train(was_training)
        return out

    # --- state ----------------------------------------------------------------------------
    def state_dict(self):
        tensors = {f"prototype/{n}": p.clone().contiguous() for n, p in self.prototypes.items()}
        for name, weights in self.projectors.items():
            tensors.update({f"projector/{name}/{k}": v for k, v in weights.items()})
        if self.shared is not None:
            tensors.update({f"shared/{k}": v for k, v in self.shared.items()})
        meta = {"entries": [dict(e) for e in self.entries],
                "routing": [dict(r, per_stage=dict(r["per_stage"])) for r in self.routing]}
        return {"meta": meta, "tensors": tensors}

    def load_state_dict(self, state):
        meta, tensors = state.get("meta", {}), state.get("tensors", {})
        self.entries = [dict(e) for e in meta.get("entries", [])]
        self.routing = [dict(r, per_stage=dict(r["per_stage"])) for r in meta.get("routing", [])]
        self.projectors, self.prototypes = {}, {}
        shared = {}
        for key, value in tensors.items():
            kind, _, rest = key.partition("/")
            if kind == "prototype":
                self.prototypes[rest] = value.float()
            elif kind == "projector":
                name, _, param = rest.partition("/")
                self.projectors.setdefault(name, {})[param] = value
            elif kind == "shared":
                shared[rest] = value
        self.shared = shared or None
        self._features = {}

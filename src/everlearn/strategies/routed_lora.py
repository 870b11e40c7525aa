"""Routed LoRA: one LoRA adapter per stage, and at test time each record goes to one adapter.

Training: stage t adds adapter ``stage<t>``; it alone computes and trains (earlier adapters are
frozen and inactive), so stages never interfere (parameter isolation, as per-task adapters in
AdapterCL, Madotto et al. 2021). Testing: ``route(record)`` picks the adapter

* by task id when the stream is task-incremental (``scenario: TIL``): ``record.task`` names the
  stage's ``task_id``, and the latest stage trained with that id owns it;
* otherwise (DIL, CIL, or a TIL record whose task has no adapter yet) by the nearest stage
  prototype: the mean over a stage's training prompts of the base model's last hidden state
  averaged over the prompt's tokens, computed with every adapter disabled; a record goes to the
  stage whose prototype has the highest cosine similarity with its own feature. This is task
  identification from frozen pre-trained features, as in EPI (Wang et al. 2023), simplified from
  their Mahalanobis distance to cosine-to-mean (no covariance to estimate, which a few hundred
  prompts per stage would do poorly in hundreds of dimensions).

The feature reads the record's own text (system, chat context and prompt; ``text`` for raw-text
records) without the chat template, whose tokens are the same for every stage and would pull all
features together; it keeps the first ``train.max_length`` tokens. The base model is frozen
under LoRA, so a prompt's feature never changes: features are cached, and the test records of the
whole stream are featurised once, in a fixed batch order, so a resumed run routes identically.

Reported: after every stage, the routing accuracy (percent of each trained stage's test records
routed to that stage's own adapter) in the state's meta (``routing``); ``routing_accuracy()``
returns the latest row. Prototypes are saved as state tensors. Needs ``model.finetune: lora``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch

from everlearn.strategies.common.adapters import StageAdapters, adapter_name, base_model_only

ROUTE_BY = ("auto", "task_id", "prototype")


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` (B x L x H) over the positions where ``mask`` (B x L) is 1."""
    m = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1)


def nearest_prototype(features: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Index of the prototype (S x H) with the highest cosine similarity to each feature (N x H);
    ties go to the earliest stage."""
    f = torch.nn.functional.normalize(features.double(), dim=-1)
    p = torch.nn.functional.normalize(prototypes.double(), dim=-1)
    return (f @ p.T).argmax(dim=-1)


def routing_accuracy(routed: list[str | None], own: str) -> float:
    """Percent of records routed to their own stage's adapter."""
    return 100.0 * sum(r == own for r in routed) / max(1, len(routed))


# shared with stage_projector, which routes projectors the same way
def routes_by_task_id(route_by: str, ctx) -> bool:
    """``route_by`` 'auto': by task id when the stream's scenario is TIL, else by prototype."""
    if route_by != "auto":
        return route_by == "task_id"
    scenario = getattr(ctx.stream, "scenario", None) if ctx is not None else None
    if scenario is None and ctx is not None:
        scenario = getattr(ctx.config, "scenario", "TIL")
    return scenario == "TIL"


def prototype_records(records: list, n: int | None, seed: int, stage_index: int,
                      strategy: str) -> list:
    """At most ``n`` of a stage's records for its prototype (a seeded sample, in order)."""
    if n is None or len(records) <= n:
        return records
    rng = random.Random(f"{seed}:{stage_index}:{strategy}:prototype")
    return [records[i] for i in sorted(rng.sample(range(len(records)), n))]


def routing_row(after: str, per_stage: dict[str, float]) -> dict:
    """One entry of the routing history: accuracy per stage after stage ``after``, and the
    mean."""
    mean = sum(per_stage.values()) / len(per_stage) if per_stage else 0.0
    return {"after": after, "per_stage": per_stage, "mean": mean}


def routing_metrics(routing: list[dict]) -> dict:
    """results.json's ``routing_accuracy`` (copies of the history entries)."""
    return {"routing_accuracy": [dict(r, per_stage=dict(r["per_stage"]))
                                 for r in routing]} if routing else {}


@dataclass
class RoutedLoRAOptions:
    route_by: str = field(default="auto", metadata={
        "help": "'auto': task id when the scenario is TIL, else nearest prototype; 'task_id'; "
                "'prototype' (ignore task ids)."})
    prototype_examples: int | None = field(default=256, metadata={
        "help": "Training prompts per stage averaged into its prototype (seeded sample; null: "
                "all)."})

    def check(self) -> tuple[str, str] | None:
        """(field, message) for the first invalid option, else None."""
        if self.route_by not in ROUTE_BY:
            return "route_by", f"expected one of {', '.join(ROUTE_BY)}, got {self.route_by!r}"
        if self.prototype_examples is not None and self.prototype_examples < 1:
            return "prototype_examples", f"expected an integer >= 1, got {self.prototype_examples}"
        return None


class RoutedLoRA(StageAdapters):
    name = "routed_lora"
    summary = ("one LoRA adapter per stage, isolated in training; each test record is routed to "
               "one adapter by task id (TIL) or by the nearest stage prototype")
    unsupported_parallel = {"fsdp": "it adds a LoRA adapter per stage"}
    paper = ("Per-task adapters: Madotto et al. 2021, Continual Learning in Task-Oriented Dialogue "
             "Systems (AdapterCL); task identification from frozen features: Wang et al. 2023, "
             "Rehearsal-free Continual Language Learning via Efficient Parameter Isolation (EPI)")
    Options = RoutedLoRAOptions

    def __init__(self, options=None):
        super().__init__(options)
        self.prototypes: dict[str, torch.Tensor] = {}  # adapter name -> H (float32, cpu)
        self.routing: list[dict] = []  # after each stage: per-stage routing accuracy (percent)
        self._features: dict[tuple[int, ...], torch.Tensor] = {}
        self._test_done = False

    def training_active(self, new: str) -> list[str]:
        return [new]  # earlier adapters neither compute nor train

    def resting_active(self) -> list[str]:
        return self.names[-1:]

    # --- routing --------------------------------------------------------------------------
    def by_task_id(self) -> bool:
        return routes_by_task_id(self.options.route_by, self.ctx)

    def route(self, record) -> str | None:
        if not self.prototypes:
            return None  # nothing trained yet: leave the (untrained) active adapter
        if self.by_task_id():
            owner = {a["task_id"]: a["name"] for a in self.adapters if a["name"] in
                     self.prototypes}.get(record.task)
            if owner is not None:
                return owner
        names = list(self.prototypes)
        feature = self._feature_of(record)
        protos = torch.stack([self.prototypes[n] for n in names])
        return names[int(nearest_prototype(feature.unsqueeze(0), protos)[0])]

    def after_stage(self, stage) -> None:
        super().after_stage(stage)
        name = adapter_name(stage.index)
        records = prototype_records(list(stage.train), self.options.prototype_examples,
                                    self.ctx.seed, stage.index, self.name)
        feats = self._compute([self._ids(r) for r in records])
        self.prototypes[name] = torch.stack(feats).mean(0)
        measured = self._measure(stage.name)
        if measured["per_stage"]:  # a text stream's segments have no test set of their own
            self.routing.append(measured)

    def metrics(self):
        """Routing accuracy (percent of each stage's test records sent to its own adapter)
        after every stage; the last entry is the final routing."""
        return routing_metrics(self.routing)

    def routing_accuracy(self) -> dict[str, float]:
        """Latest routing accuracy (percent) per trained stage name, with their mean."""
        if not self.routing:
            return {}
        last = self.routing[-1]
        return {**last["per_stage"], "mean": last["mean"]}

    def _measure(self, after: str) -> dict:
        stages = {s.name: s for s in self.ctx.stream.stages}
        per_stage = {}
        for a in self.adapters:
            stage = stages.get(a["stage_name"])
            if stage is not None and stage.test:
                per_stage[a["stage_name"]] = routing_accuracy(
                    [self.route(r) for r in stage.test], a["name"])
        return routing_row(after, per_stage)

    # --- features -------------------------------------------------------------------------
    def _ids(self, record) -> tuple[int, ...]:
        parts = [record.system or ""] + [m.get("content", "") for m in record.context]
        parts.append(record.prompt)
        text = "\n\n".join(p for p in parts if p) or record.text
        enc = self.ctx.encoder
        ids = enc.ids(text)[: enc.max_length] if text else []
        return tuple(ids) or (enc.pad_id,)

    def _feature_of(self, record) -> torch.Tensor:
        key = self._ids(record)
        if key not in self._features and not self._test_done:
            # Every test record of the stream at once, in a fixed order: the same batches (and
            # so the same floating-point features) whatever was routed before, resumed or not.
            self._test_done = True
            keys = {self._ids(r): None for s in self.ctx.stream.stages for r in s.test}
            missing = [k for k in keys if k not in self._features]
            self._features.update(zip(missing, self._compute(missing)))
        if key not in self._features:
            self._features[key] = self._compute([key])[0]
        return self._features[key]

    @torch.no_grad()
    def _compute(self, keys: list[tuple[int, ...]]) -> list[torch.Tensor]:
        """Mean last-layer hidden state of each token sequence, with every adapter disabled."""
        model, ctx = self.model, self.ctx
        device = next(model.parameters()).device
        bs = getattr(getattr(ctx.config, "eval", None), "batch_size", 16)
        order = sorted(range(len(keys)), key=lambda i: (-len(keys[i]), keys[i]))
        out: list[torch.Tensor | None] = [None] * len(keys)
        hf = model.get_base_model()
        backbone = getattr(hf, "base_model", hf)
        pad = ctx.encoder.pad_id
        with base_model_only(model):
            for s in range(0, len(order), bs):
                idx = order[s:s + bs]
                width = len(keys[idx[0]])
                ids = torch.full((len(idx), width), pad, dtype=torch.long)
                mask = torch.zeros((len(idx), width), dtype=torch.long)
                for j, i in enumerate(idx):
                    ids[j, : len(keys[i])] = torch.tensor(keys[i])
                    mask[j, : len(keys[i])] = 1
                ids, mask = ids.to(device), mask.to(device)
                with ctx.autocast():
                    if backbone is hf:
                        hidden = hf(input_ids=ids, attention_mask=mask,
                                    output_hidden_states=True).hidden_states[-1]
                    else:
                        hidden = backbone(input_ids=ids, attention_mask=mask).last_hidden_state
                pooled = masked_mean(hidden.float(), mask).cpu()
                for j, i in enumerate(idx):
                    out[i] = pooled[j]
        return out

    # --- state ----------------------------------------------------------------------------
    def extra_meta(self):
        return {"routing": [dict(r, per_stage=dict(r["per_stage"])) for r in self.routing]}

    def extra_tensors(self):
        return {f"prototype/{n}": p.clone().contiguous() for n, p in self.prototypes.items()}

    def load_extra(self, meta, tensors):
        self.routing = [dict(r, per_stage=dict(r["per_stage"])) for r in meta.get("routing", [])]
        order = [a["name"] for a in meta.get("adapters", [])]
        protos = {k[len("prototype/"):]: v for k, v in tensors.items()
                  if k.startswith("prototype/")}
        self.prototypes = {n: protos[n].float() for n in order if n in protos}

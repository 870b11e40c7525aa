"""The strategy interface: a continual-learning method is a small plugin on a few hooks.

Hooks *return* values instead of mutating shared state, so strategies compose: ``train_data``
chains, ``extra_loss`` terms add up, ``plan``, ``route`` and ``apply_edits`` take the first
answer given.
A strategy's options are a dataclass, validated like the rest of the config. ``state_dict``
returns ``{"meta": <JSON-able>, "tensors": {name: tensor}}``, stored without pickle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import torch

    from everlearn.data.records import Record
    from everlearn.stages.stream import Stage, Stream


@dataclass
class NoOptions:
    """A strategy without options."""


@dataclass
class RunContext:
    """What strategies may read: the model being trained, its tokenizer and the run settings."""

    model: Any
    tokenizer: Any
    encoder: Any
    config: Any
    stream: Stream
    seed: int
    accelerator: Any = None  # device placement and autocast for strategy-side forward passes
    run_dir: Any = None  # the run directory (a Path), for caches a strategy keeps there

    def batch(self, records: list[Record]) -> dict:
        """Encode and pad ``records`` like the trainer does, on the training device."""
        from everlearn.data.encode import collate
        from everlearn.stages.sft import encode_responses

        batch = collate(encode_responses(self.encoder, records), self.encoder.pad_id)
        device = self.accelerator.device if self.accelerator is not None else "cpu"
        return {k: v.to(device) for k, v in batch.items()}

    def autocast(self):
        """The run's mixed-precision context (a no-op without an accelerator)."""
        import contextlib

        return self.accelerator.autocast() if self.accelerator is not None else (
            contextlib.nullcontext())


class Strategy:
    """Base class: every hook is a no-op, so a method overrides only what it changes."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    requires_finetune: ClassVar[str | None] = None  # "lora" or "full" when only one works
    requires_vision: ClassVar[bool] = False  # True: needs a vision-language model (a projector)
    # True when extra_loss reads outputs.logits at every position, or the strategy changes the
    # model's input sequence; otherwise training computes logits at labelled positions only.
    needs_full_logits: ClassVar[bool] = False
    # Factor on the task loss (the data's labels) before extra_loss is added: 0 trains on
    # extra_loss alone (distillation without labels, as recycle's distill policy does).
    task_loss_weight: float = 1.0
    # The parallel modes (everlearn.parallel) this strategy cannot run under, each with why (one
    # clause, for the error and the docs): "fsdp" (sharded weights, everlearn.parallel.fsdp) and
    # "zero" (DeepSpeed ZeRO 1/2, everlearn.parallel.zero); one process and data parallelism by
    # hand run every strategy. FSDP is refused until a strategy declares it works (``{}``).
    unsupported_parallel: ClassVar[dict[str, str]] = {
        "fsdp": "it is not known to work on a sharded model"}

    def __init__(self, options: Any = None):
        self.options = options if options is not None else self.Options()
        self.ctx: RunContext | None = None

    def setup(self, ctx: RunContext) -> None:
        """Called once, after the model is loaded and before the base row is evaluated."""
        self.ctx = ctx

    def is_last_stage(self, stage) -> bool:
        """Whether ``stage`` ends the stream: what only later stages would use (a Fisher, an
        importance estimate) need not be computed after it. A segment of a text stream says
        so itself (``stage.last``: where the detector ends it is known only when it ends)."""
        if getattr(stage, "last", None) is not None:
            return bool(stage.last)
        stream = self.ctx.stream if self.ctx is not None else None
        return bool(stream is not None and stream.stages
                    and stage.index == stream.stages[-1].index)

    def plan(self, stages: list[Stage]) -> list[list[Stage]] | None:
        """Group stages into training phases (one row of R each); None keeps one per stage."""
        return None

    def before_stage(self, stage: Stage) -> None:
        """Called before a stage trains."""

    def train_data(self, stage: Stage, records: list[Record]) -> list[Record]:
        """The records to train on for this stage (replay adds buffered ones)."""
        return records

    def extra_loss(self, model, batch: dict, outputs) -> torch.Tensor | None:
        """A term added to the task loss (regularisers, distillation)."""
        return None

    def after_backward(self, model) -> None:
        """Called after gradients exist and before the optimizer step (gradient projection)."""

    def after_stage(self, stage: Stage) -> None:
        """Called after a stage trains (fill buffers, compute importances, merge)."""

    def apply_edits(self, stage: Stage, records: list[Record]) -> dict[str, Any] | None:
        """An editor (``grace``) applies an ``edit`` stage's edits (``records``, after
        ``train_data``) itself and returns what it cost ({steps, tokens, edits, loss,
        trainable_params}); the stage's weights are then not fine-tuned. None: not an editor,
        fine-tune as usual."""
        return None

    def route(self, record: Record) -> str | None:
        """The adapter to evaluate ``record`` with; None leaves the active adapter."""
        return None

    def activate(self, model, choice: str) -> bool:
        """Switch on what ``route`` chose (``stage_projector``: a projector); False when the
        choice is not this strategy's to make (a PEFT adapter name, set by the stack)."""
        return False

    def buffer_size(self) -> int:
        """Examples this strategy stores (reported as cost)."""
        return 0

    def metrics(self) -> dict[str, Any]:
        """Method-specific results for results.json (e.g. routing accuracy); JSON-able."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {"meta": {}, "tensors": {}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned (a resumed run continues exactly)."""

    def step_state(self) -> dict[str, Any]:
        """What changes *inside* a stage, between ``before_stage`` and ``after_stage`` (the
        per-step hooks' RNGs, counters), for a step checkpoint; same format as ``state_dict``.

        A run resumed from a step checkpoint restores the stage checkpoint before the phase,
        calls ``before_stage`` and ``train_data`` again, then ``load_step_state``: what those
        hooks rebuild need not be here. The default covers every ``random.Random`` and
        ``torch.Generator`` attribute (the batches a replay-family method draws per step);
        a strategy that also mutates other state per step extends it (A-GEM's counters).
        """
        import random

        import torch

        from everlearn.training.stepstate import python_rng_state

        meta, tensors = {}, {}
        for key, value in vars(self).items():
            if isinstance(value, random.Random):
                meta[key] = python_rng_state(value)
            elif isinstance(value, torch.Generator):
                tensors[key] = value.get_state()
        return {"meta": {"rng": meta} if meta else {}, "tensors": tensors}

    def load_step_state(self, state: dict[str, Any]) -> None:
        """Restore what ``step_state`` returned."""
        import random

        from everlearn.training.stepstate import set_python_rng_state

        for key, value in state.get("meta", {}).get("rng", {}).items():
            if not isinstance(getattr(self, key, None), random.Random):  # made lazily
                setattr(self, key, random.Random())
            set_python_rng_state(getattr(self, key), value)
        for key, value in state.get("tensors", {}).items():
            getattr(self, key).set_state(value)


class StrategyStack(Strategy):
    """Several strategies applied in order (``strategy: [replay, ewc]``)."""

    name = "stack"

    def __init__(self, members: list[Strategy]):
        super().__init__()
        self.members = members

    @property
    def needs_full_logits(self) -> bool:
        return any(m.needs_full_logits for m in self.members)

    @property
    def task_loss_weight(self) -> float:
        weight = 1.0
        for m in self.members:
            weight *= m.task_loss_weight
        return weight

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.members]

    def setup(self, ctx: RunContext) -> None:
        super().setup(ctx)
        for m in self.members:
            m.setup(ctx)

    def plan(self, stages):
        for m in self.members:
            phases = m.plan(stages)
            if phases is not None:
                return phases
        return None

    def before_stage(self, stage):
        for m in self.members:
            m.before_stage(stage)

    def train_data(self, stage, records):
        for m in self.members:
            records = m.train_data(stage, records)
        return records

    def extra_loss(self, model, batch, outputs):
        terms = [t for m in self.members if (t := m.extra_loss(model, batch, outputs)) is not None]
        return sum(terms[1:], terms[0]) if terms else None

    def after_backward(self, model):
        for m in self.members:
            m.after_backward(model)

    def after_stage(self, stage):
        for m in self.members:
            m.after_stage(stage)

    def apply_edits(self, stage, records):
        for m in self.members:
            done = m.apply_edits(stage, records)
            if done is not None:
                return done
        return None

    def route(self, record):
        for m in self.members:
            choice = m.route(record)
            if choice is not None:
                return choice
        return None

    def activate(self, model, choice):
        if not any(m.activate(model, choice) for m in self.members):
            model.set_adapter(choice)  # the per-stage adapter strategies route to PEFT adapters
        return True

    def buffer_size(self) -> int:
        return sum(m.buffer_size() for m in self.members)

    def metrics(self):
        return {m.name: found for m in self.members if (found := m.metrics())}

    def state_dict(self):
        return self._joined([m.state_dict() for m in self.members])

    def load_state_dict(self, state):
        for m, part in zip(self.members, self._split(state)):
            m.load_state_dict(part)

    def step_state(self):
        return self._joined([m.step_state() for m in self.members])

    def load_step_state(self, state):
        for m, part in zip(self.members, self._split(state)):
            m.load_step_state(part)

    def _joined(self, states: list[dict[str, Any]]) -> dict[str, Any]:
        """The members' states under ``<position>.<name>`` keys."""
        meta, tensors = {}, {}
        for i, (m, state) in enumerate(zip(self.members, states)):
            key = f"{i}.{m.name}"
            meta[key] = state.get("meta", {})
            tensors.update({f"{key}/{k}": v for k, v in state.get("tensors", {}).items()})
        return {"meta": meta, "tensors": tensors}

    def _split(self, state: dict[str, Any]) -> list[dict[str, Any]]:
        out = []
        for i, m in enumerate(self.members):
            key = f"{i}.{m.name}"
            prefix = f"{key}/"
            out.append({"meta": state["meta"].get(key, {}),
                        "tensors": {k[len(prefix):]: v for k, v in state["tensors"].items()
                                    if k.startswith(prefix)}})
        return out


"""The trainer: trains the phases of a stream on one model with one strategy stack.

Built on accelerate (mixed-precision autocast, backward, gradient clipping, process layout).
Per phase it runs the strategies' stage hooks, sets the phase up (everlearn.training.phase: a
fresh AdamW and a re-warmed learning-rate schedule, a fixed number of optimizer steps over
length-grouped batches), chooses the parallel mode (everlearn.parallel.backend) and runs the
step loop (everlearn.training.loop), and returns the phase's cost. With a step checkpoint writer
it saves the phase in progress every ``train.checkpoint_every`` steps and when Ctrl-C or SIGTERM
arrives (at the end of the step), and it continues a phase from such a checkpoint exactly (see
everlearn.training.step_checkpoint and everlearn.training.stepstate).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import torch

from everlearn.config import TrainConfig
from everlearn.data.encode import Encoded, Encoder
from everlearn.parallel.backend import backend_for
from everlearn.stages.align import Pair, encode_pairs
from everlearn.stages.stream import Stage
from everlearn.strategies.base import Strategy
from everlearn.training import phase as setup
from everlearn.training.editing import apply_edits, constrained_setup
from everlearn.training.loop import StepLoop
from everlearn.training.phase import Phase, PhaseCost, phase_kind
from everlearn.training.recomputation import recomputed_activations
from everlearn.training.resources import Stopwatch
from everlearn.training.segments import SegmentSteps, moments, segment_examples
from everlearn.training.textstream import SegmentPlan


class Trainer:
    """Trains phases of a stream on one model with one strategy stack."""

    def __init__(self, accelerator, encoder: Encoder, cfg: TrainConfig, strategy: Strategy,
                 seed: int, quiet: bool = False):
        self.acc = accelerator
        self.encoder = encoder
        self.cfg = cfg
        self.strategy = strategy
        self.seed = seed
        self.quiet = quiet
        self.on_step = None  # called with (loss, lr) after every optimizer step (trackers)
        self.log_every = 10  # the loss curve's cadence in steps (the runner: tracker.log_every)
        # Writes a step checkpoint: (phase, step, {file stem: tensors}, meta) -> its directory
        # (RunDir.save_step). None: no step checkpoints, and signals are not deferred.
        self.save_step: Callable[[int, int, dict, dict], Any] | None = None
        # vision-language models: which parts train in each phase (everlearn.vision.training)
        self.vision = None
        # a text stream: AdamW's state by parameter name, carried from segment to segment
        self.carried: dict[str, dict[str, torch.Tensor]] = {}
        self._edit_frozen: list[torch.nn.Parameter] = []  # thawed when the phase ends

    def encode(self, stage: Stage, records: list) -> list[Encoded] | list[Pair]:
        """The stage's training examples from the records ``train_data`` returned (preference
        pairs for an align stage).

        ``Encoded.record`` indexes that list, so a strategy can tell which records a batch
        holds (``batch["record_index"]``).
        """
        if phase_kind([stage]) == "dpo":
            pairs = encode_pairs(self.encoder, records, stage.beta, stage.name)
            self.encoder.note_truncation(stage.name, "train", [
                p.chosen.truncated or p.rejected.truncated for p in pairs])
            return pairs
        examples = self.encoder.encode_stage(stage.kind, records)
        self.encoder.note_truncation(stage.name, "train", [e.truncated for e in examples])
        return [e for e in examples if any(lab != -100 for lab in e.labels)]

    def train_phase(self, model, stages: list[Stage], phase: int,
                    resume: dict[str, Any] | None = None,
                    segment: SegmentPlan | None = None) -> PhaseCost:
        """Train one phase; ``resume`` (a step checkpoint of this phase, as
        ``RunDir.load_step`` reads it) continues it from that step instead of its start.
        ``segment``: the phase is a segment of a text stream (everlearn.training.textstream): its
        blocks train once, in order, and the plan gets back how many did (the detector may end the
        segment early); segments take no step checkpoints."""
        try:
            return self._train_phase(model, stages, phase, resume, segment)
        finally:  # an edit phase froze the weights outside its layers: thaw them, also on error
            for p in self._edit_frozen:
                p.requires_grad_(True)
            self._edit_frozen = []
            if self.vision is not None:  # an alignment phase froze the language model
                self.vision.end_phase(phase)

    def _train_phase(self, model, stages: list[Stage], phase: int,
                     resume: dict[str, Any] | None, segment: SegmentPlan | None) -> PhaseCost:
        kind = phase_kind(stages)
        hooks = Stopwatch()  # the time inside strategy hooks
        with hooks:
            for st in stages:
                self.strategy.before_stage(st)
            records = {st.name: self.strategy.train_data(st, st.train) for st in stages}
        if self.vision is not None:  # after before_stage: a new adapter re-freezes the rest
            self.vision.begin_phase(model, stages)
        if kind == "edit" and (edited := apply_edits(self.strategy, stages, records, hooks,
                                                     self.acc.device)) is not None:
            return edited
        rng = random.Random(f"{self.seed}:{phase}:order")
        order = None  # a text-stream segment: the examples in training order
        if segment is not None:
            examples, order = segment_examples(self.encoder, stages[0], records[stages[0].name],
                                               rng)
        else:
            examples = [e for st in stages for e in self.encode(st, records[st.name])]
        total_steps = setup.step_count(stages, self.cfg, examples, order)
        backend = backend_for(model, self.acc)  # before the parameters: FSDP reshards
        plan = self._phase(model, stages, phase, kind, examples, order, total_steps, segment, rng)
        backend.start(plan.params, plan.optimizer, examples, plan.align, self.cfg.max_grad_norm)
        steps = (SegmentSteps(segment, examples, order, len(stages[0].train), self.cfg.batch_size)
                 if segment is not None else None)
        loop = StepLoop(self, model, plan, backend, hooks, steps)
        with recomputed_activations(model, self.cfg.gradient_checkpointing):
            steps_taken = loop.run(loop.prepare(resume))
        train_s = loop.counters.train_s()  # the loop (after_stage: strategy)
        if segment is not None:
            self._end_segment(model, plan, segment, steps)
        with hooks:
            for st in stages:
                self.strategy.after_stage(st)
        counters = loop.counters
        return PhaseCost(
            steps=steps_taken, train_time_s=train_s, tokens_trained=counters.tokens,
            padding_fraction=1.0 - counters.tokens / max(counters.cells, 1),
            examples=len(examples), final_loss=counters.loss, loss_curve=counters.loss_curve,
            peak_memory_mb=loop.memory.peak_mb, strategy_time_s=hooks.total,
            skipped_batches=counters.skipped, trainable_params=(
                sum(p.numel() for p in plan.params)
                if kind == "edit" or self.vision is not None else None))

    def _phase(self, model, stages: list[Stage], phase: int, kind: str, examples: list,
               order: list[int] | None, total_steps: int, segment: SegmentPlan | None,
               rng: random.Random) -> Phase:
        """The phase's trainable weights, AdamW, schedule and batches."""
        params = setup.trainable(model, stages)
        lr = setup.stage_lr(stages, self.cfg)
        bound = None
        if kind == "edit":
            params, self._edit_frozen, lr, bound = constrained_setup(model, stages, lr)
        optimizer, scheduler = setup.optimizer_and_schedule(
            model, params, lr, self.cfg, total_steps, segment, self.carried, order, stages,
            examples)
        batches = setup.batch_order(examples, kind == "dpo", order, self.cfg, rng)
        return Phase(phase, stages, kind, examples, order, total_steps, params, optimizer,
                     scheduler, bound, batches)

    def _end_segment(self, model, plan: Phase, segment: SegmentPlan,
                     steps: SegmentSteps) -> None:
        """Carry AdamW's moments to the next segment; tell the plan (and after_stage) what
        the segment trained on."""
        self.carried = moments(model, plan.optimizer)
        segment.blocks_trained = steps.done
        st = plan.stages[0]
        st.train = st.train[:steps.done]  # what the segment trained on, for after_stage
        st.last = segment.ends_stream and not segment.fired

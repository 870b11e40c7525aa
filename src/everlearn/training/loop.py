"""The step loop: micro-batches, loss, backward, the optimizer step, and the named points where
strategies, the shift detector, trackers and step checkpoints hook in.

One loop for every stage kind, strategy and parallel mode (compare Avalanche's
``training_epoch``): the parallel mode (everlearn.parallel.backend) decides how a batch splits,
how its loss is weighted and read, how gradients are summed and who steps; a text-stream
segment (everlearn.training.segments) adds the detector; step checkpoints
(everlearn.training.step_checkpoint) save the phase in progress.
"""

from __future__ import annotations

import logging
import math

import torch
from tqdm.auto import tqdm

from everlearn.data.encode import collate, image_inputs
from everlearn.errors import TrainingError
from everlearn.parallel.local import Local
from everlearn.stages.align import batch_loss, collate_pairs, fill_reference
from everlearn.training.interrupt import DeferredSignals
from everlearn.training.losses import labelled_token_loss, supports_logits_to_keep
from everlearn.training.phase import Phase
from everlearn.training.resources import PeakMemory, Stopwatch
from everlearn.training.segments import SegmentSteps
from everlearn.training.step_checkpoint import Counters, PhaseParts, StepCheckpoints

log = logging.getLogger("everlearn")


class StepLoop:
    """Trains one set-up phase (``Phase``) for its steps on ``backend``."""

    def __init__(self, trainer, model, phase: Phase, backend: Local, hooks: Stopwatch,
                 segment: SegmentSteps | None) -> None:
        self.trainer, self.model, self.phase, self.backend = trainer, model, phase, backend
        self.cfg, self.strategy, self.hooks, self.segment = (trainer.cfg, trainer.strategy,
                                                             hooks, segment)
        self.memory = PeakMemory(trainer.acc.device)
        model.train()
        self.counters = Counters()  # the clock starts here (the reference pass counts)
        self.quiet = trainer.quiet or not trainer.acc.is_local_main_process
        self.sparse_logits = False
        self.checkpoints: StepCheckpoints | None = None
        # a text-stream segment takes no step checkpoints (its batches are not a BatchStream)
        self.signals = DeferredSignals(active=trainer.save_step is not None and segment is None
                                       and backend.step_checkpoints)

    def prepare(self, resume: dict | None) -> int:
        """The DPO reference, the loss's logits, step checkpoints, and a resume; the first step."""
        phase, acc = self.phase, self.trainer.acc
        if phase.align:  # the reference: the model as it enters the stage, once, for every pair
            bar = tqdm(total=len(phase.examples), desc=f"reference {phase.label}",
                       disable=self.quiet, dynamic_ncols=True, leave=False)
            fill_reference(self.model, phase.examples, self.trainer.encoder.pad_id,
                           self.cfg.batch_size, acc.device, acc.autocast, bar.update)
            bar.close()
        # logits at labelled positions only, unless a strategy reads them all (or DPO, which
        # scores whole answers through its own loss)
        self.sparse_logits = (not phase.align and not self.strategy.needs_full_logits
                              and supports_logits_to_keep(self.model))
        names = {id(p): n for n, p in self.model.named_parameters()}
        info = {"phase": phase.index, "stages": [s.name for s in phase.stages],
                "total_steps": phase.total_steps, "params": [names[id(p)] for p in phase.params]}
        parts = PhaseParts(phase.params, phase.optimizer, phase.scheduler, phase.batches,
                           self.strategy, self.backend.sharded)
        self.checkpoints = StepCheckpoints(parts, info, self.trainer.save_step)
        if resume is None:
            return 0
        if self.backend.resume_refusal is not None:
            log.warning("phase %d: %s; training the phase from its start", phase.index,
                        self.backend.resume_refusal)
            return 0
        return self.checkpoints.resume(resume, self.counters, self.hooks)

    def run(self, first: int) -> int:
        """Take steps ``first``.. of the phase; the steps taken in all (a segment may end
        early when the detector fires)."""
        self.steps_taken = first
        self.bar = tqdm(total=self.phase.total_steps, initial=first,
                        desc=f"train {self.phase.label}", disable=self.quiet,
                        dynamic_ncols=True, leave=False)
        with self.signals, self.backend:
            for step in range(first, self.phase.total_steps):
                loss = self.accumulate(step)  # forward, loss and backward of the micro-batches
                if loss is None:  # the shift detector: this chunk starts the next segment
                    break
                self.optimizer_step()  # reduce; strategies' after_backward; clip, step
                self.after_step(step, loss)  # trackers, progress, step checkpoint, stop
        self.counters.flush_loss(self.steps_taken)  # the curve ends at the phase's last step
        self.bar.close()
        return self.steps_taken

    def accumulate(self, step: int) -> float | None:
        """The step's micro-batches; their mean loss, or None when the detector places a
        boundary before this step's chunk (its gradients are dropped)."""
        segment, cfg = self.segment, self.cfg
        micro = cfg.grad_accum if segment is None else segment.micro_batches(step, cfg.grad_accum)
        self.backend.begin_step()
        if segment is not None:
            segment.begin_step()
        step_loss = 0.0
        for _ in range(micro):
            idx = next(self.phase.batches)
            if segment is not None:
                segment.count(idx)
            value = self.micro_batch(idx, micro, step)
            if value is not None:
                step_loss += value / micro
        if segment is not None and segment.shift_before_step():  # hook: the shift detector
            self.phase.optimizer.zero_grad(set_to_none=True)
            return None
        return step_loss

    def micro_batch(self, idx: list[int], micro: int, step: int) -> float | None:
        """Forward and backward of one batch (this process's rows); its loss value, or None
        when it was not finite and is skipped (``train.nonfinite_loss: skip``)."""
        phase, backend, counters = self.phase, self.backend, self.counters
        rows, weight = backend.rows(idx)
        cpu_batch = (collate_pairs if phase.align else collate)(
            [phase.examples[i] for i in rows], self.trainer.encoder.pad_id)
        n_tokens, n_cells = backend.cost(idx, cpu_batch)
        counters.tokens, counters.cells = counters.tokens + n_tokens, counters.cells + n_cells
        batch = {k: v.to(self.trainer.acc.device) for k, v in cpu_batch.items()}
        loss, task = self.loss(batch)
        if self.segment is not None and self.segment.detecting:
            self.segment.task_loss += backend.task_value(task, weight) / micro
        loss, value = backend.weigh(loss, weight, self.signals.requested)
        if not math.isfinite(value):
            if self.cfg.nonfinite_loss == "stop":
                raise TrainingError(f"stage '{phase.label}': step {step + 1}: loss is {value}; "
                                    "earlier stages' results are kept (set "
                                    "train.nonfinite_loss=skip to skip such batches)")
            counters.skipped += 1
            return None  # no backward: this batch adds nothing to the step's gradient
        backend.backward(loss / micro)
        return value

    def loss(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """A micro-batch's training loss: the task loss (token loss, or DPO on pairs) times the
        strategies' task weight, plus their extra terms (hook: ``extra_loss``); and the task
        loss alone, detached (what a text stream's shift detector reads)."""
        model, align, strategy = self.model, self.phase.align, self.strategy
        pixels = image_inputs(batch)  # empty for text
        with self.trainer.acc.autocast():
            if self.sparse_logits:
                loss, outputs, batch["logit_positions"] = labelled_token_loss(
                    model, batch["input_ids"], batch["attention_mask"], batch["labels"],
                    **pixels)
            else:
                outputs = model(input_ids=batch["input_ids"],
                                attention_mask=batch["attention_mask"], use_cache=False,
                                labels=None if align else batch["labels"], **pixels)
                loss = batch_loss(outputs.logits, batch) if align else outputs.loss
            task = loss.detach()
            if strategy.task_loss_weight != 1.0:  # 0: distillation alone
                loss = loss * strategy.task_loss_weight
            with self.hooks:
                extra = strategy.extra_loss(model, batch, outputs)
            if extra is not None:
                loss = loss + extra
        return loss, task

    def optimizer_step(self) -> None:
        """Sum the gradients, let the strategies read or rewrite them (hook:
        ``after_backward``), clip and step, project an edit back into its ball."""
        phase = self.phase
        self.backend.reduce()
        with self.hooks:
            self.strategy.after_backward(self.model)
        self.backend.step()
        if phase.bound is not None:  # edit stage: back into the L-inf ball (Zhu et al. 2020)
            phase.bound.project()
        phase.scheduler.step()
        self.backend.zero_grad()
        self.memory.sample()

    def after_step(self, step: int, loss: float) -> None:
        """Hooks after an optimizer step: trackers (``on_step``), the progress bar, a step
        checkpoint every ``train.checkpoint_every`` steps or when a signal arrived, and the
        stop that signal asks for."""
        counters = self.counters
        counters.record_loss(step + 1, loss, self.trainer.log_every)
        if self.segment is not None:
            self.segment.end_step()
        self.steps_taken += 1
        if self.trainer.on_step is not None:
            self.trainer.on_step(loss, self.phase.scheduler.get_last_lr()[0])
        elapsed = counters.train_s() - counters.prior_s
        self.bar.set_postfix(loss=f"{loss:.3f}",
                             tok_s=f"{counters.tokens / max(elapsed, 1e-9):.0f}", refresh=False)
        self.bar.update(1)
        stop = self.backend.stop(self.signals.requested)
        every = self.cfg.checkpoint_every
        if self.signals.active and (stop or (every and (step + 1) % every == 0)):
            self.checkpoints.write(step + 1, counters.state(self.hooks.total))
        if stop:  # after the checkpoint: the held signal, or (another rank's) a stop
            self.bar.close()
            log.info("phase %d: interrupted after step %d of %d; step checkpoint written",
                     self.phase.index, step + 1, self.phase.total_steps)
            if not self.signals.deliver():
                raise KeyboardInterrupt

"""The one training loop: every stage kind, every strategy, through the same few lines.

Built on accelerate (mixed-precision autocast, backward, gradient clipping, process layout).
Per phase it builds a fresh AdamW and a re-warmed learning-rate schedule, iterates length-grouped
batches for a fixed number of optimizer steps, and returns the phase's cost. With a step
checkpoint writer it saves the phase in progress every ``train.checkpoint_every`` steps and when
Ctrl-C or SIGTERM arrives (at the end of the step), and it continues a phase from such a
checkpoint exactly (see everlearn.training.stepstate).
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import get_scheduler

from everlearn.config import TrainConfig
from everlearn.data.encode import IGNORE, Encoded, Encoder, collate, image_inputs
from everlearn.errors import ResumeError, TrainingError
from everlearn.parallel import distributed as dist
from everlearn.parallel import fsdp, zero
from everlearn.runs.environment import cpu_bf16
from everlearn.stages.align import Pair, batch_loss, collate_pairs, encode_pairs, fill_reference
from everlearn.stages.stream import Stage
from everlearn.strategies.base import Strategy
from everlearn.training import stepstate
from everlearn.training.interrupt import DeferredSignals
from everlearn.training.losses import labelled_token_loss, supports_logits_to_keep
from everlearn.training.resources import PeakMemory
from everlearn.training.textstream import SegmentPlan

log = logging.getLogger("everlearn")


def bf16_supported(device: torch.device) -> bool:
    """bf16 autocast pays off on CUDA with bf16 and on CPUs with native bf16 (AVX512-BF16, AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_bf16()
    return False


def resolve_precision(preference: str, device: torch.device) -> str:
    """accelerate's mixed_precision value for the configured ``train.precision``."""
    if preference == "fp32":
        return "no"
    if preference == "bf16" or bf16_supported(device):
        return "bf16"
    return "no"


@dataclass
class PhaseCost:
    """What training one phase cost (the evaluation time is added by the runner)."""

    steps: int
    train_time_s: float
    tokens_trained: int  # real tokens of the training batches (align: both answers' rows)
    padding_fraction: float
    examples: int  # training examples (align: pairs; their reference pass is in train_time_s)
    final_loss: float
    peak_memory_mb: float
    strategy_time_s: float = 0.0  # time inside strategy hooks (buffers, Fisher, projections)
    skipped_batches: int = 0  # batches whose loss was not finite (train.nonfinite_loss: skip)
    trainable_params: int | None = None  # edit phases: what the editor trained (else: the model)


def phase_steps(stages: list[Stage], cfg: TrainConfig, n_examples: int) -> int:
    """Optimizer steps for a phase: the sum of its stages' budgets (steps, else epochs)."""
    total = 0
    per_step = cfg.batch_size * cfg.grad_accum
    for st in stages:
        steps = st.steps if st.steps is not None else (None if st.epochs else cfg.steps)
        if steps is None:
            epochs = st.epochs if st.epochs is not None else cfg.epochs
            share = n_examples / max(1, len(stages))
            steps = max(1, math.ceil(epochs * share / per_step))
        total += steps
    return total


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
        # Writes a step checkpoint: (phase, step, {file stem: tensors}, meta) -> its directory
        # (RunDir.save_step). None: no step checkpoints, and signals are not deferred.
        self.save_step: Callable[[int, int, dict, dict], Any] | None = None
        # vision-language models: which parts train in each phase (everlearn.vision.training)
        self.vision = None
        # a text stream: AdamW's state by parameter name, carried from segment to segment
        self.carried: dict[str, dict[str, torch.Tensor]] = {}

    def encode(self, stage: Stage, records: list) -> list[Encoded] | list[Pair]:
        """The stage's training examples from the records ``train_data`` returned (preference
        pairs for an align stage).

        ``Encoded.record`` indexes that list, so a strategy can tell which records a batch
        holds (``batch["record_index"]``).
        """
        if stage.kind == "align":
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
        blocks
        train once, in order, and the plan gets back how many did (the detector may end the
        segment early); segments take no step checkpoints."""
        try:
            return self._train_phase(model, stages, phase, resume, segment)
        finally:  # an edit phase froze the weights outside its layers: thaw them, also on error
            for p in self._edit_frozen:
                p.requires_grad_(True)
            self._edit_frozen = []
            if self.vision is not None:  # an alignment phase froze the language model
                self.vision.end_phase(phase)

    _edit_frozen: list = []
    _edit_trained = 0

    def _edit_setup(self, model, stages: list[Stage], lr: float):
        """Constrained fine-tuning of an edit phase (see everlearn.stages.edit): the trainable MLP
        weights of ``edit.layers`` (the rest frozen until the phase ends), the learning rate
        (``edit.lr``, else the phase's ``lr``), and the L-inf bound around the weights entering
        the phase (or None)."""
        from everlearn.config import EditConfig
        from everlearn.stages.edit import ChangeBound, edit_parameters

        edit = stages[0].edit or EditConfig()
        params = [p for _, p in edit_parameters(model, edit.layers)]
        keep = {id(p) for p in params}
        self._edit_frozen = [p for p in model.parameters() if p.requires_grad and id(p) not in keep]
        for p in self._edit_frozen:
            p.requires_grad_(False)
        bound = ChangeBound(params, edit.max_change) if edit.max_change is not None else None
        return params, edit.lr if edit.lr is not None else lr, bound

    def _apply_edits(self, stages: list[Stage], records: dict, hooks) -> PhaseCost | None:
        """An editor strategy (``grace``) applies the phase's edits itself; None when none
        does, and the stages are fine-tuned."""
        memory = PeakMemory(self.acc.device)
        start = time.perf_counter()
        done = [self.strategy.apply_edits(st, records[st.name]) for st in stages]
        if all(d is None for d in done):
            return None
        if any(d is None for d in done):
            raise TrainingError(f"stages {', '.join(s.name for s in stages)}: an editor "
                                "strategy edited some of the phase's stages but not all")
        memory.sample()
        train_s = time.perf_counter() - start
        with hooks:
            for st in stages:
                self.strategy.after_stage(st)
        return PhaseCost(
            steps=sum(d.get("steps", 0) for d in done), train_time_s=train_s,
            tokens_trained=sum(d.get("tokens", 0) for d in done), padding_fraction=0.0,
            examples=sum(d.get("edits", 0) for d in done),
            final_loss=sum(d.get("loss", 0.0) for d in done) / len(done),
            peak_memory_mb=memory.peak_mb, strategy_time_s=hooks.total,
            trainable_params=sum(d.get("trainable_params", 0) for d in done))

    def _loss(self, model, batch: dict, align: bool, sparse_logits: bool, hooks
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """A micro-batch's training loss: the task loss (token loss, or DPO on pairs) times the
        strategies' task weight, plus their extra terms; and the task loss alone, detached
        (what a text stream's shift detector reads)."""
        pixels = image_inputs(batch)  # empty for text
        with self.acc.autocast():
            if sparse_logits:
                loss, outputs, batch["logit_positions"] = labelled_token_loss(
                    model, batch["input_ids"], batch["attention_mask"], batch["labels"],
                    **pixels)
            else:
                outputs = model(input_ids=batch["input_ids"],
                                attention_mask=batch["attention_mask"],
                                labels=None if align else batch["labels"], **pixels)
                loss = batch_loss(outputs.logits, batch) if align else outputs.loss
            task = loss.detach()
            if self.strategy.task_loss_weight != 1.0:  # 0: distillation alone
                loss = loss * self.strategy.task_loss_weight
            with hooks:
                extra = self.strategy.extra_loss(model, batch, outputs)
            if extra is not None:
                loss = loss + extra
        return loss, task

    def _train_phase(self, model, stages: list[Stage], phase: int,
                     resume: dict[str, Any] | None, segment: SegmentPlan | None) -> PhaseCost:
        cfg = self.cfg
        align = any(st.kind == "align" for st in stages)  # DPO on pairs instead of token loss
        if align and not all(st.kind == "align" for st in stages):
            raise TrainingError(f"stages {', '.join(s.name for s in stages)}: an align stage "
                                "cannot train in one phase with sft or cpt stages (a strategy "
                                "such as joint grouped them)")
        edit = any(st.kind == "edit" for st in stages)  # constrained fine-tuning or an editor
        if edit and not all(st.kind == "edit" for st in stages):
            raise TrainingError(f"stages {', '.join(s.name for s in stages)}: an edit stage "
                                "cannot train in one phase with other kinds of stages (a "
                                "strategy such as joint grouped them)")
        hooks = _Stopwatch()
        with hooks:
            for st in stages:
                self.strategy.before_stage(st)
            records = {st.name: self.strategy.train_data(st, st.train) for st in stages}
        if self.vision is not None:  # after before_stage: a new adapter re-freezes the rest
            self.vision.begin_phase(model, stages)
        if edit and (edited := self._apply_edits(stages, records, hooks)) is not None:
            return edited
        rng = random.Random(f"{self.seed}:{phase}:order")
        order = None  # a text-stream segment: the examples in training order
        if segment is not None:
            examples, order = _segment_examples(self.encoder, stages[0], records[stages[0].name],
                                                rng)
        else:
            examples = [e for st in stages for e in self.encode(st, records[st.name])]
        if not examples:
            raise TrainingError(f"stage '{stages[0].name}': no training examples after encoding")
        if order is not None:
            total_steps = max(1, math.ceil(len(order) / (cfg.batch_size * cfg.grad_accum)))
        else:
            total_steps = phase_steps(stages, cfg, len(examples))
        sharded = fsdp.is_sharded(model)  # FSDP: it reduces the gradients itself
        if sharded:
            fsdp.reshard(model)  # the sharded parameters, not weights an evaluation gathered
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise TrainingError(f"stage '{stages[0].name}': the model has no trainable weights")
        # a stage's own lr (the first one set among the phase's stages), else train.lr
        lr = next((st.lr for st in stages if st.lr is not None), cfg.lr)
        bound = None
        if edit:
            params, lr, bound = self._edit_setup(model, stages, lr)
            self._edit_trained = sum(p.numel() for p in params)
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
        if segment is not None:  # a boundary is no reason to forget the moment estimates
            _restore_moments(model, optimizer, self.carried)
        warmup = int(round(cfg.warmup_ratio * total_steps))
        name = {"constant": "constant_with_warmup"}.get(cfg.schedule, cfg.schedule)
        if segment is not None:  # one schedule over the whole stream, not per segment
            scheduler = _stream_scheduler(name, optimizer, cfg, segment, order,
                                          len(stages[0].train), examples)
        else:
            scheduler = get_scheduler(name, optimizer, num_warmup_steps=warmup,
                                      num_training_steps=total_steps)

        lengths = [e.length if align else len(e.input_ids) for e in examples]
        rank, world = self.acc.process_index, self.acc.num_processes
        # Several processes (torchrun / accelerate launch): every rank draws the batch plan of a
        # one-process run and trains on rows rank::world of each batch; the gradients are summed
        # across ranks by hand (distributed.all_reduce_gradients; under FSDP by its
        # reduce-scatter, see everlearn.parallel.fsdp) before the strategies' after_backward hooks
        # and
        # clipping. accelerate's prepare() (a DDP wrapper) does not fit:
        # strategies add adapters, prompts and blocks to the model between stages and read and
        # rewrite gradients themselves, and DDP would also sync each micro-batch.
        share = _ShardPlan(examples, align, rank, world) if world > 1 else None
        # DeepSpeed ZeRO 1/2 (everlearn.parallel.zero): its engine reduces, clips and steps; it
        # starts
        # every rank from rank 0's weights
        engine = (zero.Engine(model, optimizer, cfg.max_grad_norm, zero.settings())
                  if share is not None and zero.requested() else None)
        if share is not None and not sharded and engine is None:
            dist.broadcast_parameters(params)  # as DDP does: every rank starts from rank 0's

        if order is not None:  # a stream segment: consecutive batches, once
            batch_iter = iter([order[s:s + cfg.batch_size]
                               for s in range(0, len(order), cfg.batch_size)])
        else:  # epochs of freshly shuffled, length-grouped batches
            batch_iter = stepstate.BatchStream(lengths, cfg.batch_size, rng,
                                               cfg.group_by_length)
        tokens = cells = 0  # real and padded positions of the batches trained on
        skipped = 0
        loss_value = float("nan")
        memory = PeakMemory(self.acc.device)
        label = "+".join(s.name for s in stages)
        model.train()
        start = time.perf_counter()
        quiet = self.quiet or not self.acc.is_local_main_process
        if align:  # the reference: the model as it enters the stage, once, for every pair
            ref_bar = tqdm(total=len(examples), desc=f"reference {label}", disable=quiet,
                           dynamic_ncols=True, leave=False)
            fill_reference(model, examples, self.encoder.pad_id, cfg.batch_size, self.acc.device,
                           self.acc.autocast, ref_bar.update)
            ref_bar.close()
        # logits at labelled positions only, unless a strategy reads them all (or DPO, which
        # scores whole answers through its own loss)
        sparse_logits = (not align and not self.strategy.needs_full_logits
                         and supports_logits_to_keep(model))
        names = {id(p): n for n, p in model.named_parameters()}
        phase_info = {"phase": phase, "stages": [s.name for s in stages],
                      "total_steps": total_steps, "params": [names[id(p)] for p in params]}
        parts = _PhaseParts(params, optimizer, scheduler, batch_iter, self.strategy, sharded)
        first, prior_s = 0, 0.0
        if resume is not None and engine is not None:  # its AdamW state is DeepSpeed's now
            log.warning("phase %d: a step checkpoint is not resumed under DeepSpeed; training "
                        "the phase from its start", phase)
        elif resume is not None:
            try:
                first, counters = parts.restore(resume, phase_info)
            except ResumeError as err:
                log.warning("%s; training phase %d from its start", err, phase)
            else:
                tokens, cells, skipped = counters["tokens"], counters["cells"], counters["skipped"]
                loss = counters["loss"]
                loss_value = float("nan") if loss is None else loss
                prior_s = counters["train_s"]
                hooks.total += counters["strategy_s"]
                log.info("resumed phase %d at step %d of %d", phase, first, total_steps)
        bar = tqdm(total=total_steps, initial=first, desc=f"train {label}", disable=quiet,
                   dynamic_ncols=True, leave=False)
        every = cfg.checkpoint_every
        # a text-stream segment takes no step checkpoints (its batches are not a BatchStream)
        signals = DeferredSignals(active=self.save_step is not None and segment is None
                                  and engine is None)
        n_stream = len(stages[0].train) if segment is not None else 0
        n_batches = math.ceil(len(order) / cfg.batch_size) if order is not None else 0
        stream_done = stream_tokens = 0  # stream blocks and tokens in the steps taken
        steps_taken = first

        def checkpoint(done: int) -> None:
            counters = {"tokens": tokens, "cells": cells, "skipped": skipped,
                        "loss": loss_value if math.isfinite(loss_value) else None,
                        "train_s": prior_s + time.perf_counter() - start,
                        "strategy_s": hooks.total}
            tensors, meta = parts.snapshot(done, phase_info, counters)
            if tensors is None:  # not rank 0
                return
            try:
                where = self.save_step(phase, done, tensors, meta)
                log.info("phase %d: step checkpoint at step %d of %d: %s", phase, done,
                         total_steps, where)
            except OSError as err:  # a full disk loses this step checkpoint, not the run
                log.warning("phase %d: step %d: step checkpoint not written: %s", phase, done,
                            err)

        with signals, (contextlib.closing(engine) if engine is not None
                         else contextlib.nullcontext()):
            for step in range(first, total_steps):
                step_loss = 0.0
                stop_seen = False  # several processes: whether any rank holds a signal
                task_loss, step_blocks, step_tokens = 0.0, 0, 0  # the detector reads task_loss
                # a segment's last step may have fewer micro-batches
                micro = (cfg.grad_accum if order is None
                         else min(cfg.grad_accum, n_batches - step * cfg.grad_accum))
                for _ in range(micro):
                    idx = next(batch_iter)
                    if n_stream:
                        mine = [i for i in idx if i < n_stream]
                        step_blocks += len(mine)
                        step_tokens += sum(len(examples[i].input_ids) for i in mine)
                    weight = 1.0  # this rank's share of the batch's loss (its labelled tokens)
                    if share is not None:
                        n_tokens, n_cells = share.cost(idx)  # global: every rank knows the batch
                        tokens, cells = tokens + n_tokens, cells + n_cells
                        idx, weight = share.rows(idx)
                    cpu_batch = (collate_pairs if align else collate)(
                        [examples[i] for i in idx], self.encoder.pad_id)
                    if share is None:
                        tokens += int(cpu_batch["attention_mask"].sum())  # before .to(): no sync
                        cells += cpu_batch["attention_mask"].numel()
                    batch = {k: v.to(self.acc.device) for k, v in cpu_batch.items()}
                    loss, task = self._loss(model, batch, align, sparse_logits, hooks)
                    if segment is not None and segment.detector is not None:
                        task = task.float() * (weight if share is not None else 1.0)
                        task_loss += (dist.sum_values([task.item()])[0] if share is not None
                                      else task.item()) / micro
                    if share is not None:  # the batch's loss: the ranks' token-weighted sum
                        loss = loss * weight  # (the signal flags ride along: all ranks agree)
                        value, flags = dist.sum_values([loss.detach().float().item(),
                                                        float(signals.requested)])
                        stop_seen = stop_seen or flags > 0
                    else:
                        value = loss.item()  # the step's one device sync
                    if not math.isfinite(value):
                        if cfg.nonfinite_loss == "stop":
                            raise TrainingError(f"stage '{label}': step {step + 1}: loss is "
                                                f"{value}; earlier stages' results are kept (set "
                                                "train.nonfinite_loss=skip to skip such batches)")
                        skipped += 1
                        continue  # no backward: this batch adds nothing to the step's gradient
                    if engine is not None:
                        engine.backward(loss / micro)
                    else:
                        self.acc.backward(loss / micro)
                    step_loss += value / micro
                if (segment is not None and segment.detector is not None and step_blocks
                        and _shift_found(segment, task_loss, stream_done, stream_tokens)):
                    optimizer.zero_grad(set_to_none=True)  # this chunk starts the next segment
                    break
                if share is not None and not sharded and engine is None:
                    dist.all_reduce_gradients(params)  # the one-process gradient, on every rank
                with hooks:
                    self.strategy.after_backward(model)
                if engine is not None:  # reduce, clip, step and zero the gradients
                    engine.step()
                else:
                    if cfg.max_grad_norm is not None:
                        self.acc.clip_grad_norm_(params, cfg.max_grad_norm)
                    optimizer.step()
                if bound is not None:  # edit stage: back into the L-inf ball (Zhu et al. 2020)
                    bound.project()
                scheduler.step()
                if engine is None:
                    optimizer.zero_grad(set_to_none=True)
                memory.sample()
                loss_value = step_loss
                stream_done += step_blocks
                stream_tokens += step_tokens
                steps_taken += 1
                if self.on_step is not None:
                    self.on_step(loss_value, scheduler.get_last_lr()[0])
                elapsed = time.perf_counter() - start
                bar.set_postfix(loss=f"{loss_value:.3f}",
                                tok_s=f"{tokens / max(elapsed, 1e-9):.0f}", refresh=False)
                bar.update(1)
                stop = stop_seen if share is not None else signals.requested
                if signals.active and (stop or (every and (step + 1) % every == 0)):
                    checkpoint(step + 1)
                if stop:  # after the checkpoint: the held signal, or (another rank's) a stop
                    bar.close()
                    log.info("phase %d: interrupted after step %d of %d; step checkpoint "
                             "written", phase, step + 1, total_steps)
                    if not signals.deliver():
                        raise KeyboardInterrupt
        bar.close()
        train_s = prior_s + time.perf_counter() - start  # the loop (after_stage: strategy)
        if segment is not None:
            self.carried = _moments(model, optimizer)
            segment.blocks_trained = stream_done
            st = stages[0]
            st.train = st.train[:stream_done]  # what the segment trained on, for after_stage
            st.last = segment.ends_stream and not segment.fired
        with hooks:
            for st in stages:
                self.strategy.after_stage(st)
        return PhaseCost(
            steps=steps_taken, train_time_s=train_s, tokens_trained=tokens,
            padding_fraction=1.0 - tokens / max(cells, 1), examples=len(examples),
            final_loss=loss_value, peak_memory_mb=memory.peak_mb, strategy_time_s=hooks.total,
            skipped_batches=skipped, trainable_params=self._edit_trained if edit else (
                sum(p.numel() for p in params) if self.vision is not None else None),
        )


class _PhaseParts:
    """The parts of a phase in progress that a step checkpoint saves and restores: trainable
    weights, optimizer, schedule, batch position, the strategies' in-stage state and every
    RNG (per rank: ranks may draw different amounts, e.g. dropout on rows of other sizes).

    Under FSDP the weights and AdamW moments are sharded: every rank gathers whole tensors
    (collectives, in the same order everywhere) and rank 0 writes them, so a step checkpoint
    holds the one-process tensors; on restore every rank takes its shard of them again.
    """

    def __init__(self, params, optimizer, scheduler, batches, strategy, sharded: bool = False):
        self.params, self.optimizer, self.scheduler = params, optimizer, scheduler
        self.batches, self.strategy, self.sharded = batches, strategy, sharded

    def snapshot(self, step: int, info: dict[str, Any], counters: dict[str, Any]):
        """({group: tensors}, meta) on rank 0, (None, None) on the others (they send their
        RNG state, and under FSDP their shards)."""
        rng = dist.gather_objects(stepstate.global_rng_state())
        if self.sharded:  # every rank takes part in gathering the whole tensors
            weights = {n: fsdp.full(p.detach()).cpu()
                       for n, p in zip(info["params"], self.params)}
            opt_meta, opt_tensors = stepstate.optimizer_state(self.optimizer, info["params"],
                                                              whole=fsdp.full)
        if not dist.is_main():
            return None, None
        if not self.sharded:
            weights = {n: p.detach().cpu() for n, p in zip(info["params"], self.params)}
            opt_meta, opt_tensors = stepstate.optimizer_state(self.optimizer, info["params"])
        strat = self.strategy.step_state()
        state = {f"strategy/{k}": v for k, v in strat.get("tensors", {}).items()}
        for r, (_, tensors) in enumerate(rng):
            state.update({f"rng/{r}/{k}": v for k, v in tensors.items()})
        meta = {**info, "step": step, "counters": counters, "batches": self.batches.state(),
                "optimizer": opt_meta, "scheduler": stepstate.scheduler_state(self.scheduler),
                "rng": [m for m, _ in rng], "strategy": strat.get("meta", {})}
        return {"trainable": weights, "optimizer": opt_tensors, "state": state}, meta

    def restore(self, ckpt: dict[str, Any], info: dict[str, Any]) -> tuple[int, dict]:
        """Put a step checkpoint back; (its step, its counters). Everything is checked before
        anything changes, so a ResumeError leaves the phase at its start."""
        meta, tensors = ckpt["meta"], ckpt["tensors"]
        where = ckpt.get("where", "step checkpoint")
        for key in ("phase", "stages", "total_steps", "params"):
            if meta.get(key) != info[key]:
                raise ResumeError(f"{where}: {key}: the checkpoint has {meta.get(key)!r}, the "
                                  f"phase {info[key]!r}")
        weights = tensors.get("trainable", {})
        for name, p in zip(info["params"], self.params):
            if name not in weights or weights[name].shape != p.shape:
                raise ResumeError(f"{where}: state.safetensors: weight '{name}' missing or "
                                  "of another shape")
        self.batches.check(meta["batches"], where)
        with torch.no_grad():  # (fsdp.like: this rank's shard of a whole tensor under FSDP)
            for name, p in zip(info["params"], self.params):
                p.copy_(fsdp.like(p, weights[name]))

        def place(idx: int, key: str, value: torch.Tensor) -> torch.Tensor:
            """An AdamW moment laid out like its (maybe sharded) parameter."""
            p = self.params[idx]
            return fsdp.like(p, value) if key != "step" and value.shape == p.shape else value

        stepstate.load_optimizer_state(self.optimizer, meta["optimizer"],
                                       tensors.get("optimizer", {}), place)
        self.scheduler.load_state_dict(meta["scheduler"])
        self.batches.load(meta["batches"])
        state = tensors.get("state", {})
        self.strategy.load_step_state({
            "meta": meta["strategy"],
            "tensors": {k[len("strategy/"):]: v for k, v in state.items()
                        if k.startswith("strategy/")}})
        # this rank's generators (rank 0's when the checkpoint had fewer ranks)
        r = dist.rank() if dist.rank() < len(meta["rng"]) else 0
        prefix = f"rng/{r}/"
        stepstate.set_global_rng_state(meta["rng"][r], {k[len(prefix):]: v for k, v in
                                                        state.items() if k.startswith(prefix)})
        return meta["step"], meta["counters"]


def _segment_examples(encoder: Encoder, stage: Stage, records: list,
                      rng: random.Random) -> tuple[list[Encoded], list[int]]:
    """A stream segment's examples and their training order: the segment's blocks in stream
    order, with what strategies added (``train_data``: replay, general data) shuffled and
    spread evenly among them, so every chunk carries its share."""
    n = len(stage.train)
    if len(records) < n or any(a is not b for a, b in zip(records, stage.train)):
        raise TrainingError(f"stage '{stage.name}': a strategy's train_data dropped or "
                            "reordered the stream's blocks; in a text stream it may only add "
                            "records after them")
    blocks = encoder.encode_stage("cpt", stage.train)
    if len(blocks) != n:
        raise TrainingError(f"stage '{stage.name}': expected {n} stream blocks, encoded "
                            f"{len(blocks)}")
    extra = encoder.encode_stage("cpt", records[n:])
    shuffled = list(range(n, n + len(extra)))
    rng.shuffle(shuffled)
    order: list[int] = []
    placed = 0
    for i in range(n):
        order.append(i)
        due = round((i + 1) * len(extra) / n)
        order.extend(shuffled[placed:due])
        placed = due
    return blocks + extra, order


def _stream_scheduler(name: str, optimizer, cfg: TrainConfig, segment: SegmentPlan,
                      order: list[int], n_stream: int, examples: list[Encoded]):
    """The learning rate of a stream segment: the configured schedule over the whole stream,
    read at the segment's position (in chunks of the stream), so boundaries do not re-warm
    it. Step k of the segment uses the position of the stream tokens before it."""
    total = max(1.0, segment.total_tokens / segment.chunk_tokens)
    base = get_scheduler(name, torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0),
                         num_warmup_steps=int(round(cfg.warmup_ratio * total)),
                         num_training_steps=math.ceil(total)).lr_lambdas[0]
    per_step = cfg.batch_size * cfg.grad_accum
    before, seen = [], segment.start_token
    for s in range(0, len(order), per_step):
        before.append(seen / segment.chunk_tokens)
        seen += sum(len(examples[i].input_ids) for i in order[s:s + per_step] if i < n_stream)
    before.append(seen / segment.chunk_tokens)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda k: base(before[min(k, len(before) - 1)]))


def _moments(model, optimizer) -> dict[str, dict[str, torch.Tensor]]:
    """AdamW's per-parameter state (step, exp_avg, exp_avg_sq) by parameter name, on the CPU."""
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: {k: v.detach().cpu().clone() for k, v in st.items()}
            for p, st in optimizer.state.items() if id(p) in names and st}


def _restore_moments(model, optimizer, carried: dict[str, dict[str, torch.Tensor]]) -> None:
    """Give the parameters that trained before the boundary their AdamW state back (new ones,
    e.g. a new adapter, start fresh)."""
    if not carried:
        return
    for n, p in model.named_parameters():
        st = carried.get(n)
        if p.requires_grad and st is not None and st["exp_avg"].shape == p.shape:
            optimizer.state[p] = {k: v.clone().to(p.device) if v.dim() else v.clone()
                                  for k, v in st.items()}


def _shift_found(segment: SegmentPlan, loss: float, done: int, tokens: int) -> bool:
    """Feed one chunk's loss to the detector (``done`` blocks, ``tokens`` tokens of the segment
    trained before it); True when it places a boundary before the chunk (never before the
    segment trained anything)."""
    position = segment.start_token + tokens
    fired = segment.detector.update(loss)
    det = segment.detector
    segment.trace.append([position, loss, det.z, det.score,
                          det.score_down if det.direction == "both" else None])
    if fired and done > 0:
        segment.fired = True
        return True
    return False


class _ShardPlan:
    """How a batch of a multi-process run splits: rank r trains rows r::world.

    The loss of a batch is the mean over its labelled tokens (align: over its pairs). A rank
    scales its own mean by its share of the batch's labelled tokens, so the sum of the ranks'
    gradients is the one-process gradient (extra loss terms are weighted the same way: a
    term that does not depend on the rows, like EWC's penalty, adds up to itself).
    """

    def __init__(self, examples: list, align: bool, rank: int, world: int):
        self.rank, self.world = rank, world
        if align:  # DPO: a mean over pairs; a pair is two rows (chosen, rejected)
            self.weights = [1] * len(examples)
            self.tokens = [len(p.chosen.input_ids) + len(p.rejected.input_ids)
                           for p in examples]
            self.widths = [p.length for p in examples]
            self.per_item = 2
        else:  # positions whose next token is labelled (what the token loss averages over)
            self.weights = [sum(lab != IGNORE for lab in e.labels[1:]) for e in examples]
            self.tokens = [len(e.input_ids) for e in examples]
            self.widths = self.tokens
            self.per_item = 1

    def rows(self, idx: list[int]) -> tuple[list[int], float]:
        """This rank's rows of batch ``idx`` and its share of the batch's loss. A rank left
        without rows (a batch smaller than the world) runs the batch's first row at weight 0,
        so every rank calls the same hooks (and draws the same strategy RNG)."""
        mine = idx[self.rank::self.world]
        total = sum(self.weights[i] for i in idx)
        if not mine or not total:
            return idx[:1], 0.0
        return mine, sum(self.weights[i] for i in mine) / total

    def cost(self, idx: list[int]) -> tuple[int, int]:
        """Real tokens and padded positions of the whole batch as the ranks pad their rows."""
        tokens = sum(self.tokens[i] for i in idx)
        cells = 0
        for r in range(self.world):
            rows = idx[r::self.world]
            if rows:
                cells += self.per_item * len(rows) * max(self.widths[i] for i in rows)
        return tokens, cells


class _Stopwatch:
    """Accumulates the time spent inside ``with`` blocks (strategy hooks)."""

    def __init__(self) -> None:
        self.total = 0.0

    def __enter__(self):
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.total += time.perf_counter() - self._start

"""The one training loop: every stage kind, every strategy, through the same few lines.

Built on accelerate (mixed-precision autocast, backward, gradient clipping, process layout).
Per phase it builds a fresh AdamW and a re-warmed learning-rate schedule, iterates length-grouped
batches for a fixed number of optimizer steps, and returns the phase's cost.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import get_scheduler

from everlearn import distributed as dist
from everlearn import fsdp
from everlearn.config import TrainConfig
from everlearn.data.encode import IGNORE, Encoded, Encoder, collate, length_grouped_batches
from everlearn.errors import TrainingError
from everlearn.losses import labelled_token_loss, supports_logits_to_keep
from everlearn.preference import Pair, batch_loss, collate_pairs, encode_pairs, fill_reference
from everlearn.resources import PeakMemory
from everlearn.strategies.base import Strategy
from everlearn.stream import Stage
from everlearn.textstream import SegmentPlan


def bf16_supported(device: torch.device) -> bool:
    """bf16 autocast pays off on CUDA with bf16 and on CPUs with native bf16 (AVX512-BF16, AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            flags = open("/proc/cpuinfo", encoding="utf-8").read()
        except OSError:
            return False
        return "avx512_bf16" in flags or "amx_bf16" in flags
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
        # a text stream: AdamW's state by parameter name, carried from segment to segment
        self.carried: dict[str, dict[str, torch.Tensor]] = {}

    def encode(self, stage: Stage, records: list) -> list[Encoded] | list[Pair]:
        """The stage's training examples from the records ``train_data`` returned (preference
        pairs for an align stage).

        ``Encoded.record`` indexes that list, so a strategy can tell which records a batch
        holds (``batch["record_index"]``).
        """
        if stage.kind == "align":
            return encode_pairs(self.encoder, records, stage.beta, stage.name)
        examples = self.encoder.encode_stage(stage.kind, records)
        return [e for e in examples if any(lab != -100 for lab in e.labels)]

    def train_phase(self, model, stages: list[Stage], phase: int,
                    segment: SegmentPlan | None = None) -> PhaseCost:
        """Train one phase. ``segment``: the phase is a segment of a text stream
        (everlearn.textstream): its blocks train once, in order, and the plan gets back how many
        did (the detector may end the segment early)."""
        try:
            return self._train_phase(model, stages, phase, segment)
        finally:  # an edit phase froze the weights outside its layers: thaw them, also on error
            for p in self._edit_frozen:
                p.requires_grad_(True)
            self._edit_frozen = []

    _edit_frozen: list = []
    _edit_trained = 0

    def _edit_setup(self, model, stages: list[Stage]):
        """Constrained fine-tuning of an edit phase (see everlearn.editing): the trainable MLP
        weights of ``edit.layers`` (the rest frozen until the phase ends), the learning rate,
        and the L-inf bound around the weights entering the phase (or None)."""
        from everlearn.config import EditConfig
        from everlearn.editing import ChangeBound, edit_parameters

        edit = stages[0].edit or EditConfig()
        params = [p for _, p in edit_parameters(model, edit.layers)]
        keep = {id(p) for p in params}
        self._edit_frozen = [p for p in model.parameters() if p.requires_grad and id(p) not in keep]
        for p in self._edit_frozen:
            p.requires_grad_(False)
        bound = ChangeBound(params, edit.max_change) if edit.max_change is not None else None
        return params, edit.lr if edit.lr is not None else self.cfg.lr, bound

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

    def _train_phase(self, model, stages: list[Stage], phase: int,
                     segment: SegmentPlan | None) -> PhaseCost:
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
        lr, bound = cfg.lr, None
        if edit:
            params, lr, bound = self._edit_setup(model, stages)
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
        # reduce-scatter, see everlearn.fsdp) before the strategies' after_backward hooks and
        # clipping. accelerate's prepare() (a DDP wrapper) does not fit:
        # strategies add adapters, prompts and blocks to the model between stages and read and
        # rewrite gradients themselves, and DDP would also sync each micro-batch.
        share = _ShardPlan(examples, align, rank, world) if world > 1 else None
        if share is not None and not sharded:
            dist.broadcast_parameters(params)  # as DDP does: every rank starts from rank 0's

        def batches():
            if order is not None:  # a stream segment: consecutive batches, once
                yield from (order[s:s + cfg.batch_size]
                            for s in range(0, len(order), cfg.batch_size))
                return
            while True:  # epochs of freshly shuffled, length-grouped batches
                yield from length_grouped_batches(lengths, cfg.batch_size, rng,
                                                  cfg.group_by_length)

        batch_iter = batches()
        tokens = cells = 0  # real and padded positions of the batches trained on
        skipped = 0
        loss_value = float("nan")
        memory = PeakMemory(self.acc.device)
        label = "+".join(s.name for s in stages)
        bar = tqdm(total=total_steps, desc=f"train {label}", disable=self.quiet or not
                   self.acc.is_local_main_process, dynamic_ncols=True, leave=False)
        model.train()
        start = time.perf_counter()
        if align:  # the reference: the model as it enters the stage, once, for every pair
            ref_bar = tqdm(total=len(examples), desc=f"reference {label}", disable=bar.disable,
                           dynamic_ncols=True, leave=False)
            fill_reference(model, examples, self.encoder.pad_id, cfg.batch_size, self.acc.device,
                           self.acc.autocast, ref_bar.update)
            ref_bar.close()
        # logits at labelled positions only, unless a strategy reads them all (or DPO, which
        # scores whole answers through its own loss)
        sparse_logits = (not align and not self.strategy.needs_full_logits
                         and supports_logits_to_keep(model))
        n_stream = len(stages[0].train) if segment is not None else 0
        n_batches = math.ceil(len(order) / cfg.batch_size) if order is not None else 0
        stream_done = stream_tokens = 0  # stream blocks and tokens in the steps taken
        steps_taken = 0
        for step in range(total_steps):
            step_loss = 0.0
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
                cpu_batch = (collate_pairs if align else collate)([examples[i] for i in idx],
                                                                  self.encoder.pad_id)
                if share is None:
                    tokens += int(cpu_batch["attention_mask"].sum())  # before .to(): no sync
                    cells += cpu_batch["attention_mask"].numel()
                batch = {k: v.to(self.acc.device) for k, v in cpu_batch.items()}
                with self.acc.autocast():
                    if sparse_logits:
                        loss, outputs, batch["logit_positions"] = labelled_token_loss(
                            model, batch["input_ids"], batch["attention_mask"], batch["labels"])
                    else:
                        outputs = model(input_ids=batch["input_ids"],
                                        attention_mask=batch["attention_mask"],
                                        labels=None if align else batch["labels"])
                        loss = batch_loss(outputs.logits, batch) if align else outputs.loss
                    if segment is not None and segment.detector is not None:
                        task = loss.detach().float() * (weight if share is not None else 1.0)
                        task_loss += (dist.sum_values([task.item()])[0] if share is not None
                                      else task.item()) / micro
                    if self.strategy.task_loss_weight != 1.0:  # 0: distillation alone
                        loss = loss * self.strategy.task_loss_weight
                    with hooks:
                        extra = self.strategy.extra_loss(model, batch, outputs)
                    if extra is not None:
                        loss = loss + extra
                if share is not None:  # the batch's loss: the ranks' token-weighted sum
                    loss = loss * weight
                    value = dist.sum_values([loss.detach().float().item()])[0]
                else:
                    value = loss.item()  # the step's one device sync
                if not math.isfinite(value):
                    if cfg.nonfinite_loss == "stop":
                        raise TrainingError(f"stage '{label}': step {step + 1}: loss is {value}"
                                            "; earlier stages' results are kept (set "
                                            "train.nonfinite_loss=skip to skip such batches)")
                    skipped += 1
                    continue  # no backward: this batch adds nothing to the step's gradient
                self.acc.backward(loss / micro)
                step_loss += value / micro
            if (segment is not None and segment.detector is not None and step_blocks
                    and _shift_found(segment, task_loss, stream_done, stream_tokens)):
                optimizer.zero_grad(set_to_none=True)  # this chunk starts the next segment
                break
            if share is not None and not sharded:  # the one-process gradient, on every rank
                dist.all_reduce_gradients(params)
            with hooks:
                self.strategy.after_backward(model)
            if cfg.max_grad_norm is not None:
                self.acc.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            if bound is not None:  # edit stage: back into the L-inf ball (Zhu et al. 2020)
                bound.project()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            memory.sample()
            loss_value = step_loss
            stream_done += step_blocks
            stream_tokens += step_tokens
            steps_taken += 1
            if self.on_step is not None:
                self.on_step(loss_value, scheduler.get_last_lr()[0])
            elapsed = time.perf_counter() - start
            bar.set_postfix(loss=f"{loss_value:.3f}", tok_s=f"{tokens / max(elapsed, 1e-9):.0f}",
                            refresh=False)
            bar.update(1)
        bar.close()
        train_s = time.perf_counter() - start  # the loop; after_stage hooks count as strategy
        if segment is not None:
            self.carried = _moments(model, optimizer)
            segment.blocks_trained = stream_done
            st = stages[0]
            st.train = st.train[:stream_done]  # what the segment trained on, for after_stage
            st.last = segment.ends_stream and not segment.fired
        else:
            steps_taken = total_steps
        with hooks:
            for st in stages:
                self.strategy.after_stage(st)
        return PhaseCost(
            steps=steps_taken, train_time_s=train_s, tokens_trained=tokens,
            padding_fraction=1.0 - tokens / max(cells, 1), examples=len(examples),
            final_loss=loss_value, peak_memory_mb=memory.peak_mb, strategy_time_s=hooks.total,
            skipped_batches=skipped, trainable_params=self._edit_trained if edit else None,
        )


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


def carried_tensors(carried: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The carried AdamW state as flat tensors for a checkpoint (``name/exp_avg`` ...)."""
    return {f"{n}/{k}": v.contiguous() for n, st in carried.items() for k, v in st.items()}


def carried_from_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Inverse of :func:`carried_tensors`."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, v in tensors.items():
        name, _, k = key.rpartition("/")
        out.setdefault(name, {})[k] = v
    return out


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

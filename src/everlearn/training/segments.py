"""What a text-stream segment changes in a phase (everlearn.training.textstream plans them).

A segment trains its blocks once, in stream order, with what strategies add spread among them;
its learning rate follows one schedule over the whole stream; AdamW's moment estimates carry
over boundaries; and after every step's micro-batches the shift detector reads the chunk's task
loss and may end the segment before the chunk (the next segment starts with it).
"""

from __future__ import annotations

import math
import random

import torch
from transformers import get_scheduler

from everlearn.config import TrainConfig
from everlearn.data.encode import Encoded, Encoder
from everlearn.errors import TrainingError
from everlearn.stages.stream import Stage
from everlearn.training.textstream import SegmentPlan


def segment_examples(encoder: Encoder, stage: Stage, records: list,
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


def stream_scheduler(name: str, optimizer, cfg: TrainConfig, segment: SegmentPlan,
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


def moments(model, optimizer) -> dict[str, dict[str, torch.Tensor]]:
    """AdamW's per-parameter state (step, exp_avg, exp_avg_sq) by parameter name, on the CPU."""
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: {k: v.detach().cpu().clone() for k, v in st.items()}
            for p, st in optimizer.state.items() if id(p) in names and st}


def restore_moments(model, optimizer, carried: dict[str, dict[str, torch.Tensor]]) -> None:
    """Give the parameters that trained before the boundary their AdamW state back (new ones,
    e.g. a new adapter, start fresh)."""
    if not carried:
        return
    for n, p in model.named_parameters():
        st = carried.get(n)
        if p.requires_grad and st is not None and st["exp_avg"].shape == p.shape:
            optimizer.state[p] = {k: v.clone().to(p.device) if v.dim() else v.clone()
                                  for k, v in st.items()}


class SegmentSteps:
    """A segment's steps as the loop takes them: the stream blocks and tokens each step trains
    on, the chunk's task loss for the detector, and whether it ends the segment."""

    def __init__(self, segment: SegmentPlan, examples: list[Encoded], order: list[int],
                 n_stream: int, batch_size: int) -> None:
        self.plan, self.examples, self.n_stream = segment, examples, n_stream
        self.n_batches = math.ceil(len(order) / batch_size)
        self.done = self.tokens = 0  # stream blocks and tokens in the steps taken
        self.step_blocks = self.step_tokens = 0
        self.task_loss = 0.0

    @property
    def detecting(self) -> bool:
        """Whether a shift detector reads the task loss."""
        return self.plan.detector is not None

    def micro_batches(self, step: int, grad_accum: int) -> int:
        """A segment's last step may have fewer micro-batches."""
        return min(grad_accum, self.n_batches - step * grad_accum)

    def begin_step(self) -> None:
        self.task_loss, self.step_blocks, self.step_tokens = 0.0, 0, 0

    def count(self, idx: list[int]) -> None:
        """Note the stream blocks of batch ``idx``."""
        mine = [i for i in idx if i < self.n_stream]
        self.step_blocks += len(mine)
        self.step_tokens += sum(len(self.examples[i].input_ids) for i in mine)

    def shift_before_step(self) -> bool:
        """Whether the detector places a boundary before this step's chunk."""
        return (self.detecting and self.step_blocks > 0
                and shift_found(self.plan, self.task_loss, self.done, self.tokens))

    def end_step(self) -> None:
        self.done += self.step_blocks
        self.tokens += self.step_tokens


def shift_found(segment: SegmentPlan, loss: float, done: int, tokens: int) -> bool:
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


def batches(order: list[int], batch_size: int):
    """A segment's consecutive batches, once."""
    return iter([order[s:s + batch_size] for s in range(0, len(order), batch_size)])

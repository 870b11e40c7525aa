"""Data parallelism by hand: every process trains its rows of each batch of the one-process plan.

Several processes (torchrun / accelerate launch): every rank draws the batch plan of a
one-process run and trains on rows rank::world of each batch; the gradients are summed across
ranks by hand (everlearn.parallel.collectives.all_reduce_gradients) before the strategies'
after_backward hooks and clipping. accelerate's prepare() (a DDP wrapper) does not fit:
strategies add adapters, prompts and blocks to the model between stages and read and rewrite
gradients themselves, and DDP would also sync each micro-batch. FSDP (everlearn.parallel.fsdp)
and DeepSpeed ZeRO (everlearn.parallel.zero) keep this split and change the reduction.
"""

from __future__ import annotations

from everlearn.data.encode import IGNORE
from everlearn.parallel.collectives import (
    all_reduce_gradients,
    broadcast_parameters,
    sum_values,
)
from everlearn.parallel.local import Local


class ShardPlan:
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


class DataParallel(Local):
    """Replicated weights; each rank's share of the loss; gradients summed by hand."""

    def __init__(self, accelerator, model) -> None:
        super().__init__(accelerator, model)
        self.plan: ShardPlan | None = None
        self.stop_seen = False  # whether any rank held a signal during this step

    def start(self, params, optimizer, examples, align, max_grad_norm) -> None:
        super().start(params, optimizer, examples, align, max_grad_norm)
        self.plan = ShardPlan(examples, align, self.acc.process_index, self.acc.num_processes)
        self.start_from_rank_zero()

    def start_from_rank_zero(self) -> None:
        """As DDP does: every rank starts from rank 0's weights."""
        broadcast_parameters(self.params)

    def begin_step(self) -> None:
        self.stop_seen = False

    def rows(self, idx):
        return self.plan.rows(idx)

    def cost(self, idx, batch):
        return self.plan.cost(idx)  # global: every rank knows the batch

    def weigh(self, loss, weight, stop_requested):
        """The batch's loss: the ranks' token-weighted sum (the signal flags ride along, so all
        ranks agree on stopping)."""
        loss = loss * weight
        value, flags = sum_values([loss.detach().float().item(), float(stop_requested)])
        self.stop_seen = self.stop_seen or flags > 0
        return loss, value

    def task_value(self, task, weight):
        return sum_values([(task.float() * weight).item()])[0]

    def reduce(self) -> None:
        all_reduce_gradients(self.params)  # the one-process gradient, on every rank

    def stop(self, requested):
        return self.stop_seen  # (another rank's) signal: every rank stops at the same step

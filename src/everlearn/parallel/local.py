"""One process: the parallel-mode interface the training loop calls, and its plain meaning.

A parallel mode (everlearn.parallel.backend chooses one per phase) decides how a batch splits
over processes, how a micro-batch's loss is weighted and read, how gradients are summed, and who
clips and steps. The loop calls these methods the same way in every mode; this class is the
one-process run (accelerate's backward and clipping, torch's AdamW step), and the other modes
override what they change: everlearn.parallel.data_parallel (by hand), everlearn.parallel.fsdp
(sharded weights) and everlearn.parallel.zero (DeepSpeed ZeRO 1/2).
"""

from __future__ import annotations

import torch


class Local:
    """The one-process run: every row of every batch, the step's gradient as backward left it."""

    sharded = False  # the weights and AdamW moments are FSDP shards (step checkpoints gather)
    step_checkpoints = True  # whether the phase may take step checkpoints
    resume_refusal: str | None = None  # why a step checkpoint cannot be resumed (None: it can)

    def __init__(self, accelerator, model) -> None:
        self.acc, self.model = accelerator, model
        self.params: list[torch.nn.Parameter] = []
        self.optimizer: torch.optim.Optimizer | None = None
        self.max_grad_norm: float | None = None

    def start(self, params: list, optimizer: torch.optim.Optimizer, examples: list, align: bool,
              max_grad_norm: float | None) -> None:
        """The phase's trainable weights, AdamW and examples (``align``: preference pairs)."""
        self.params, self.optimizer, self.max_grad_norm = params, optimizer, max_grad_norm

    def __enter__(self) -> Local:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release what the phase held (DeepSpeed: its engine)."""

    def begin_step(self) -> None:
        """A new optimizer step starts (forget what the last one saw)."""

    def rows(self, idx: list[int]) -> tuple[list[int], float]:
        """This process's rows of batch ``idx`` and its share of the batch's loss."""
        return idx, 1.0

    def cost(self, idx: list[int], batch: dict) -> tuple[int, int]:
        """Real tokens and padded positions of the whole batch (``batch``: this process's rows,
        collated on the CPU, so counting them costs no device sync)."""
        mask = batch["attention_mask"]
        return int(mask.sum()), mask.numel()

    def weigh(self, loss: torch.Tensor, weight: float, stop_requested: bool
              ) -> tuple[torch.Tensor, float]:
        """This process's loss for backward and the batch's loss value (the step's one device
        sync); ``stop_requested``: whether a signal waits here (see :meth:`stop`)."""
        return loss, loss.item()

    def task_value(self, task: torch.Tensor, weight: float) -> float:
        """The batch's task loss (what a text stream's shift detector reads)."""
        return (task.float() * 1.0).item()

    def backward(self, loss: torch.Tensor) -> None:
        self.acc.backward(loss)

    def reduce(self) -> None:
        """Make the step's gradient the one-process gradient on every process."""

    def step(self) -> None:
        """Clip (``train.max_grad_norm``) and take the optimizer step."""
        if self.max_grad_norm is not None:
            self.acc.clip_grad_norm_(self.params, self.max_grad_norm)
        self.optimizer.step()

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def stop(self, requested: bool) -> bool:
        """Whether the phase stops after this step (``requested``: a signal waits here)."""
        return requested

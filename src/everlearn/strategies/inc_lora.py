"""Incremental LoRA: a new LoRA adapter per stage; earlier adapters frozen but still active.

For stage t the model computes ``W x + sum_{i<=t} B_i A_i x * (alpha / r)``: every earlier
stage's delta stays in the forward pass (so what stage t learns is learned on top of them), and
only ``(A_t, B_t)`` trains. This is the "IncLoRA" baseline of Wang et al. (2023): incremental
learning of new LoRA parameters on a sequence of tasks, without regularisation or replay. Every
adapter has the rank, alpha, dropout and target modules of ``model.lora``; at test time all of
them stay active (the sum), so no task id is needed.

Built on PEFT's named adapters (one per stage, ``stage<i>``; see ``_adapters``). Needs
``model.finetune: lora``.
"""

from __future__ import annotations

from everlearn.strategies.common.adapters import StageAdapters


class IncLoRA(StageAdapters):
    name = "inc_lora"
    summary = "a new LoRA adapter per stage; earlier ones frozen but active (their deltas add up)"
    unsupported_parallel = {"fsdp": "it adds a LoRA adapter per stage"}
    paper = ("IncLoRA baseline in Wang et al. 2023, Orthogonal Subspace Learning for Language "
             "Model Continual Learning (EMNLP Findings); LoRA: Hu et al. 2022")

    stack_frozen = True  # the frozen deltas add up: one LoRA pass per layer while a stage trains

    def training_active(self, new: str) -> list[str]:
        return self.names  # earlier adapters first, the new one last

    def resting_active(self) -> list[str]:
        return self.names

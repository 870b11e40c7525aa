"""Progressive Prompts (Razdaibiedina et al., ICLR 2023): one new soft prompt per stage, earlier
prompts frozen and kept in front of the input, the language model itself frozen.

Stage t learns a prompt P_t of ``num_virtual_tokens`` embedding vectors. The input embeddings
become ``[P_t; P_{t-1}; ...; P_1; x]``: the newest prompt first, then the frozen earlier ones
newest to oldest. That is the authors' order: their code prepends the trainable prompt to
``previous_prompts`` and, when a task ends, updates ``previous_prompts = [P_t; previous]``.
Only P_t trains; every model weight is frozen, so earlier stages' behaviour can only change
through the prompts later stages put in front of them (the paper's forward-transfer mechanism).
Each prompt starts as copies of the embeddings of ``num_virtual_tokens`` vocabulary tokens drawn at
random (the authors' ``init_new_prompt``), from a generator seeded by the run seed and the stage.

Engine fit:

* **Needs ``model.finetune: full``** (``requires_finetune``; validation names ``model.finetune``
  otherwise). "Full" here only means the model is not wrapped by PEFT: the strategy freezes every
  model weight itself. Under LoRA the engine's ``default`` adapter would have to be frozen at
  B = 0, a dead adapter computed on every forward pass for nothing, so it is refused instead.
  Also refused (a ConfigError names the field): another strategy that makes model weights
  trainable (``strategies``), and prompts that push positions past the model's
  ``max_position_embeddings`` (``train.max_length``).
* **Prompts are model parameters.** They live in a small module attached to the model
  (``everlearn_prompts``, one parameter ``stage<i>`` per stage), so the trainer's optimiser finds
  the trainable P_t and the stage checkpoint stores it by name. Every prompt is also in the
  strategy state (the frozen ones are not in the checkpoint's trainable weights), and
  ``load_state_dict`` rebuilds the module before the engine loads the weights (resume is exact).
* **Injection** is a forward pre-hook (with a matching post-hook) on the Hugging Face causal LM:
  ``input_ids`` become ``inputs_embeds`` with the prompts in front, ``attention_mask`` gets ones
  and ``labels`` get -100 for the prompt positions, and ``position_ids`` are recomputed from the
  extended mask (left padding stays consistent). When a KV cache already holds the prompt (the
  decoding steps of ``generate``), only the mask and positions are extended. The post-hook strips
  the prompt positions from ``logits`` and ``hidden_states`` so callers that align logits with
  their own labels (accuracy scoring, distillation) see the input's length. The loss is computed
  inside the model on the extended labels. ``detach()`` removes the hooks and the module.

Not implemented: the optional residual MLP reparameterisation of the prompt (the authors' T5 code
defaults to none) and the per-task early stopping on validation data. Sequences grow by
``num_virtual_tokens`` per stage beyond ``train.max_length`` (the authors truncate the input
instead, which here would cut the answer). Prompt tuning wants a much larger learning rate than
LoRA (the authors use 0.3 for T5); the engine has one ``train.lr`` for all trainable weights.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch
from torch import nn

from everlearn.errors import ConfigError, ResumeError
from everlearn.models.kvcache import cache_in
from everlearn.strategies.base import Strategy
from everlearn.strategies.common.adapters import stable_seed

ATTR = "everlearn_prompts"
TENSOR_PREFIX = "prompt/"


@dataclass
class ProgressivePromptsOptions:
    num_virtual_tokens: int = field(default=10, metadata={
        "help": "Soft-prompt tokens learned per stage (P: inputs grow by P per stage)."})
    init_vocab: int | None = field(default=None, metadata={
        "help": "Initialise prompts from embeddings of the first N vocabulary ids (default: the "
                "whole vocabulary)."})

    def check(self) -> tuple[str, str] | None:
        if self.num_virtual_tokens < 1:
            return "num_virtual_tokens", f"expected an integer >= 1, got {self.num_virtual_tokens}"
        if self.init_vocab is not None and self.init_vocab < 1:
            return "init_vocab", f"expected an integer >= 1 or null, got {self.init_vocab}"
        return None


# --- pure pieces --------------------------------------------------------------------------
def prompt_order(indices: list[int]) -> list[int]:
    """Stage indices in the order their prompts precede the input: newest first."""
    return sorted(indices, reverse=True)


def init_prompt(embedding: torch.Tensor, n_tokens: int, seed: int,
                vocab: int | None = None) -> torch.Tensor:
    """``n_tokens`` rows of the embedding matrix of random vocabulary ids (a detached copy)."""
    gen = torch.Generator().manual_seed(seed)
    limit = min(vocab or embedding.shape[0], embedding.shape[0])
    ids = torch.randint(limit, (n_tokens,), generator=gen)
    return embedding.detach()[ids.to(embedding.device)].clone()


def extend_inputs(prompt: torch.Tensor, embeds: torch.Tensor, mask: torch.Tensor | None,
                  labels: torch.Tensor | None, past: int) -> dict:
    """The model inputs with ``prompt`` (P, H) in front of ``embeds`` (B, L, H).

    ``past`` is the number of positions already in the KV cache (which then hold the prompt):
    the embeddings are left as they are and only the mask and positions account for it.
    """
    b, n = embeds.shape[:2]
    p = prompt.shape[0]
    device = embeds.device
    if past == 0:
        embeds = torch.cat([prompt.to(embeds.dtype).unsqueeze(0).expand(b, -1, -1), embeds], 1)
        if labels is not None:
            labels = torch.cat([labels.new_full((b, p), -100), labels], 1)
    if mask is None:
        mask = torch.ones(b, past + n if past else p + n, dtype=torch.long, device=device)
    else:
        if mask.dim() != 2:
            raise ValueError("progressive_prompts needs a 2-D attention mask")
        mask = torch.cat([mask.new_ones((b, p)), mask], 1)
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)[:, -embeds.shape[1]:]
    return {"inputs_embeds": embeds, "attention_mask": mask, "labels": labels,
            "position_ids": positions}


class PromptBank(nn.Module):
    """The prompts of every stage so far, one parameter ``stage<i>`` each."""

    def indices(self) -> list[int]:
        return sorted(int(n[5:]) for n, _ in self.named_parameters(recurse=False))

    def add(self, index: int, value: torch.Tensor, trainable: bool) -> nn.Parameter:
        param = nn.Parameter(value.detach().clone(), requires_grad=trainable)
        self.register_parameter(f"stage{index}", param)
        return param

    def get(self, index: int) -> nn.Parameter:
        return getattr(self, f"stage{index}")

    def joint(self) -> torch.Tensor | None:
        """[P_t; ...; P_1] as one (sum of P, H) tensor, or None before the first stage."""
        order = prompt_order(self.indices())
        return torch.cat([self.get(i) for i in order], 0) if order else None


# --- the strategy -------------------------------------------------------------------------
class ProgressivePrompts(Strategy):
    name = "progressive_prompts"
    summary = ("a new soft prompt per stage in front of the frozen earlier ones; the model frozen "
               "(needs finetune: full)")
    unsupported_parallel = {"fsdp": "it adds prompt parameters per stage"}
    needs_full_logits = True  # puts its soft prompt in front of the input
    paper = ("Razdaibiedina et al. 2023, Progressive Prompts: Continual Learning for Language "
             "Models (ICLR)")
    Options = ProgressivePromptsOptions
    requires_finetune = "full"

    def __init__(self, options=None):
        super().__init__(options)
        self.stages: list[int] = []  # stage indices with a prompt, in training order
        self._saved: dict[str, torch.Tensor] = {}  # prompt tensors held while there is no model
        self._handles: list = []
        self._pending: list = []  # per forward call: (prompt length, input length) or None

    # --- hooks ----------------------------------------------------------------------------
    def setup(self, ctx) -> None:
        super().setup(ctx)
        finetune = getattr(getattr(ctx.config, "model", None), "finetune", "full")
        if finetune != "full" or hasattr(ctx.model, "peft_config"):
            raise ConfigError("config: model.finetune: progressive_prompts freezes the whole "
                              f"model and trains prompts only; expected 'full', got {finetune!r}")
        self._attach()

    def before_stage(self, stage) -> None:
        if stage.index in self.stages:
            raise ResumeError(f"stage '{stage.name}': progressive_prompts: a prompt for stage "
                              f"{stage.index} already exists")
        model, bank = self.ctx.model, self.bank
        for p in model.parameters():  # the whole model frozen, earlier prompts included
            p.requires_grad_(False)
        emb = self.ctx.model.get_input_embeddings().weight
        seed = stable_seed(self.ctx.seed, stage.index, self.name, "init")
        value = init_prompt(emb, self.options.num_virtual_tokens, seed, self.options.init_vocab)
        bank.add(stage.index, value, trainable=True)
        self.stages.append(stage.index)
        self._check_positions()

    def train_data(self, stage, records):
        # Called after every strategy's before_stage: nothing else may have become trainable.
        current = self.bank.get(self.stages[-1]) if self.stages else None
        for n, p in self.ctx.model.named_parameters():
            if p.requires_grad and p is not current:
                raise ConfigError(f"config: strategies: progressive_prompts trains only its "
                                  f"prompt, but another strategy made '{n}' trainable")
        return records

    # --- state ----------------------------------------------------------------------------
    def state_dict(self):
        if self.ctx is None:
            tensors = dict(self._saved)
        else:
            bank = self.bank
            tensors = {f"{TENSOR_PREFIX}stage{i}": bank.get(i).detach().cpu().clone()
                       for i in self.stages}
        return {"meta": {"stages": list(self.stages),
                         "num_virtual_tokens": self.options.num_virtual_tokens},
                "tensors": tensors}

    def load_state_dict(self, state):
        meta, tensors = state.get("meta", {}), state.get("tensors", {})
        self.stages = [int(i) for i in meta.get("stages", [])]
        self._saved = {k: v for k, v in tensors.items() if k.startswith(TENSOR_PREFIX)}
        if self.ctx is None:
            return
        bank = self.bank
        emb = self.ctx.model.get_input_embeddings().weight
        for p in self.ctx.model.parameters():
            p.requires_grad_(False)
        for i in self.stages:
            saved = self._saved.get(f"{TENSOR_PREFIX}stage{i}")
            if saved is None or saved.shape[-1] != emb.shape[-1]:
                raise ResumeError(f"strategy '{self.name}': the prompt of stage {i} is missing "
                                  "from the saved state or has another width")
            if hasattr(bank, f"stage{i}"):
                delattr(bank, f"stage{i}")
            # The newest prompt is trainable, as it was when its stage checkpoint was written.
            bank.add(i, saved.to(emb.device, emb.dtype), trainable=i == self.stages[-1])
        self._saved = {}

    # --- model plumbing -------------------------------------------------------------------
    @property
    def bank(self) -> PromptBank:
        return getattr(self.ctx.model, ATTR)

    def _attach(self) -> None:
        """Attach the prompt module and the hooks (once per model)."""
        model = self.ctx.model
        if getattr(model, ATTR, None) is not None:
            raise ConfigError("config: strategies: progressive_prompts is configured twice")
        model.add_module(ATTR, PromptBank())
        # Hooks on the causal LM itself: the trainer's, the evaluator's and generate's forward
        # calls all go through its __call__.
        self._handles = [
            model.register_forward_pre_hook(self._pre_hook, with_kwargs=True),
            model.register_forward_hook(self._post_hook, with_kwargs=True),
        ]
        self._signature = inspect.signature(model.forward)

    def detach(self) -> None:
        """Remove the hooks and the prompt module: the model computes as before ``setup``."""
        for h in self._handles:
            h.remove()
        self._handles = []
        model = self.ctx.model if self.ctx is not None else None
        if model is not None and getattr(model, ATTR, None) is not None:
            delattr(model, ATTR)

    def _check_positions(self) -> None:
        config = getattr(self.ctx.model, "config", None)
        limit = getattr(config, "max_position_embeddings", None)
        total = self.options.num_virtual_tokens * len(self.stages)
        max_length = self.ctx.config.train.max_length if self.ctx.config is not None else 0
        if limit and total + max_length > limit:
            raise ConfigError(
                f"config: train.max_length: {max_length} plus {total} prompt tokens exceeds the "
                f"model's {limit} positions; lower it or strategies.progressive_prompts."
                "options.num_virtual_tokens")

    def _pre_hook(self, module, args, kwargs):
        prompt = self.bank.joint() if getattr(self.ctx.model, ATTR, None) is not None else None
        if prompt is None:
            self._pending.append(None)
            return None
        bound = self._signature.bind_partial(*args, **kwargs).arguments
        kw = dict(bound.pop("kwargs", {}), **bound)
        embeds = kw.get("inputs_embeds")
        if embeds is None:
            embeds = module.get_input_embeddings()(kw["input_ids"])
        cache = cache_in(kw)
        past = cache.get_seq_length() if cache is not None and hasattr(
            cache, "get_seq_length") else 0
        new = extend_inputs(prompt, embeds, kw.get("attention_mask"), kw.get("labels"), past)
        kw.update(new, input_ids=None)
        if new["labels"] is None:
            kw.pop("labels")
        self._pending.append((prompt.shape[0] if past == 0 else 0, embeds.shape[1]))
        return (), kw

    def _post_hook(self, module, args, kwargs, output):
        pending = self._pending.pop() if self._pending else None
        if not pending or not pending[0]:
            return output
        p, n = pending
        logits = getattr(output, "logits", None)
        if logits is not None and logits.shape[1] == p + n:
            output["logits"] = logits[:, p:]
        hidden = getattr(output, "hidden_states", None)
        if hidden is not None:
            output["hidden_states"] = tuple(h[:, p:] if h.shape[1] == p + n else h
                                            for h in hidden)
        return output

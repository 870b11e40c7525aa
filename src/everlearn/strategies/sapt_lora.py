"""SAPT-LoRA (Zhao et al., ACL 2024): per-stage LoRA adapters mixed per input by a learned
selector, which pseudo-samples of earlier stages keep from forgetting how to select.

"SAPT: A Shared Attentive Framework for Parameter-Efficient Continual Learning of Large Language
Models". Two modules, as the authors' code (circle-hit/SAPT, ``src/llama_prompt.py``) builds them:

* **Shared attentive learning and selection (SALS).** Stage t adds LoRA adapter t and a key
  ``k_t`` (one vector of the hidden size, uniform in [-1, 1]); earlier adapters and keys are
  frozen. An input's query is its token embeddings (the frozen model's) max-pooled over the
  prompt, through a small trainable network (Linear h->d, Linear d->h, SiLU, LayerNorm: the
  authors' ``trans_input``); the attention over stages is ``a = softmax(K q / sqrt(h))``. Every
  adapted layer adds ``sum_i a_i s_i B_i A_i x`` (per example) instead of PEFT's plain sum: the
  same weights pick the adapters for training (learning) and at test time (selection), so no
  task id is needed. The query network and the new key train with the new adapter on the task
  loss alone.
* **Attentive reflection (ARM).** When a stage ends, the selector's mean attention over that
  stage's training prompts is kept as its target distribution. Before each later stage the
  current model writes pseudo-inputs of every earlier stage (``pseudo_replay``'s prompt: the
  task's name and seed inputs, top-k sampling, the task's template around the result); every
  step a batch of them is drawn and ``reflection_weight * KL(target || softmax(K q))`` is added
  to the loss (the target padded with zeros for the newer keys): the authors' ``memory_replay``
  (KL on the attention logits of pseudo-inputs against stored attention labels).

Deviations: (1) the authors generate pseudo samples with a separately trained generator and
store them as files (``generated_data``); here the model being trained writes them at the start
of each stage, LAMOL-style, as ``pseudo_replay`` does (no generation objective is trained).
(2) The stored attention label of a stage is its mean attention over its own training prompts
when it ends; the authors' files do not say how theirs were formed. (3) Where the authors run
the frozen adapters under ``torch.no_grad`` (no gradient through their outputs to earlier
layers), the mixture here is differentiated exactly. (4) LoRA targets follow ``model.lora``
(the authors adapt q and v only). (5) The query pools the prompt without the chat template's own
tokens (the same for every stage; they would pull every query together, as routed_lora notes
for its features). At evaluation it pools what the model is given: the prompt for generation;
for option scoring, prompt plus option.
Reported: after each stage, the selection accuracy per trained stage (percent of its test
records whose largest attention weight is on its own adapter), ``strategy_metrics.sapt_lora``.
"""

from __future__ import annotations

import math
import types
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from everlearn.data.encode import IGNORE
from everlearn.data.records import Record
from everlearn.strategies.common.adapters import StageAdapters, adapter_name, stable_seed
from everlearn.strategies.common.buffer import (
    device_of,
    generate,
    seeded_torch,
    stage_rng,
    torch_seed,
)
from everlearn.strategies.pseudo_replay import describe_stage, even_split, generation_prompt

try:
    from peft.tuners.lora.layer import Linear as LoraLinear
except ImportError:  # pragma: no cover - peft is a dependency
    LoraLinear = None


@dataclass
class SAPTLoRAOptions:
    query_dim: int = field(default=100, metadata={
        "help": "Inner width of the query network (the authors' trans_hidden_dim)."})
    reflection_weight: float = field(default=1.0, metadata={
        "help": "Weight of the attentive-reflection KL term on pseudo-inputs."})
    pseudo_per_stage: int = field(default=16, metadata={
        "help": "Pseudo-inputs written per earlier stage at the start of each stage."})
    replay_batch: int = field(default=4, metadata={
        "help": "Pseudo-inputs in the reflection term of each training step."})
    seeds: int = field(default=3, metadata={
        "help": "Seed inputs kept per stage for its generation prompt."})
    top_k: int = field(default=20, metadata={"help": "Top-k sampling of pseudo-inputs."})
    max_input_tokens: int = field(default=48, metadata={
        "help": "Longest generated pseudo-input, in tokens."})

    def check(self) -> tuple[str, str] | None:
        for name in ("query_dim", "pseudo_per_stage", "replay_batch", "seeds", "top_k",
                     "max_input_tokens"):
            if getattr(self, name) < 1:
                return name, f"expected an integer >= 1, got {getattr(self, name)}"
        if not (self.reflection_weight >= 0 and math.isfinite(self.reflection_weight)):
            return "reflection_weight", f"expected a number >= 0, got {self.reflection_weight}"
        return None


class Selector(nn.Module):
    """SALS's query network and per-stage keys: attention logits of pooled input embeddings."""

    def __init__(self, hidden: int, inner: int):
        super().__init__()
        self.hidden = hidden
        self.query = nn.Sequential(nn.Linear(hidden, inner, bias=False),
                                   nn.Linear(inner, hidden, bias=False), nn.SiLU(),
                                   nn.LayerNorm(hidden))
        self.keys = nn.ParameterDict()

    def logits(self, pooled: torch.Tensor, names: list[str]) -> torch.Tensor:
        """(B x stages) attention logits ``K q / sqrt(h)`` of pooled embeddings (B x h)."""
        q = self.query(pooled.to(self.query[0].weight.dtype))
        k = torch.stack([self.keys[n] for n in names])
        return (q @ k.T).float() / math.sqrt(self.hidden)


def template_frame(encoder) -> tuple[int, int]:
    """Tokens the chat template puts before and after every prompt (the same for every stage)."""
    a = encoder.prompt_inputs(Record(prompt="x"))[0]
    b = encoder.prompt_inputs(Record(prompt="y z"))[0]
    head = 0
    while head < min(len(a), len(b)) and a[head] == b[head]:
        head += 1
    tail = 0
    while tail < min(len(a), len(b)) - head and a[-1 - tail] == b[-1 - tail]:
        tail += 1
    return head, tail


def content_positions(keep: torch.Tensor, head: int, tail: int) -> torch.Tensor:
    """``keep`` (B x L, the prompt's positions) without each row's first ``head`` and last
    ``tail`` kept positions; a row left with none keeps them all."""
    rank = keep.long().cumsum(dim=1) - 1
    count = keep.long().sum(dim=1, keepdim=True)
    inner = keep & (rank >= head) & (rank < count - tail)
    return torch.where(inner.any(dim=1, keepdim=True), inner, keep)


def max_pool(embeds: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Max over the kept positions (B x L) of embeddings (B x L x h); a row with none kept
    pools all its positions."""
    keep = keep.bool()
    keep = torch.where(keep.any(dim=1, keepdim=True), keep, torch.ones_like(keep))
    return embeds.masked_fill(~keep.unsqueeze(-1), float("-inf")).max(dim=1).values


def _mixed_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """A PEFT LoRA Linear adding ``sum_i a_i s_i B_i A_i x`` with per-example weights ``a``."""
    owner = self._everlearn_sapt
    alpha, names = owner.alpha, owner.names
    if (alpha is None or self.disable_adapters or self.merged
            or kwargs.get("adapter_names") is not None):
        return type(self).forward(self, x, *args, **kwargs)
    result = self.base_layer(x, *args, **kwargs)
    if alpha.shape[0] != x.shape[0]:
        alpha = alpha.mean(0, keepdim=True)
    mixed = 0
    for i, name in enumerate(names):
        if name not in self.lora_A:
            continue
        lora_A, lora_B = self.lora_A[name], self.lora_B[name]
        xi = self._cast_input_dtype(x, lora_A.weight.dtype)
        delta = lora_B(lora_A(self.lora_dropout[name](xi))) * self.scaling[name]
        weight = alpha[:, i].view(-1, *([1] * (delta.dim() - 1))).to(delta.dtype)
        mixed = mixed + weight * delta
    return (result + mixed).to(result.dtype)


class SAPTLoRA(StageAdapters):
    name = "sapt_lora"
    summary = ("SAPT: per-stage LoRA adapters mixed per input by a shared attentive selector, "
               "kept from forgetting by pseudo-inputs of earlier stages")
    paper = ("Zhao et al. 2024, SAPT: A Shared Attentive Framework for Parameter-Efficient "
             "Continual Learning of Large Language Models (ACL)")
    Options = SAPTLoRAOptions
    details = """
One LoRA adapter and one key per stage (earlier ones frozen). SALS: an input's query is its
frozen token embeddings max-pooled over the prompt (chat-template tokens left out), through a
trainable Linear-Linear-SiLU-LayerNorm network; the attention over stages is
`softmax(K q / sqrt(h))`, and every adapted layer adds `sum_i a_i s_i B_i A_i x` per example, in
training and at test time (no task id). ARM: when a stage ends its mean attention over its
training prompts is stored; before each later stage the model writes `pseudo_per_stage`
pseudo-inputs of every earlier stage (pseudo_replay's generation prompt, top-k sampling) and each
step adds `reflection_weight * KL(stored || softmax(K q))` on `replay_batch` of them (the authors'
`memory_replay`). Deviations: the authors' pseudo samples come from a separately trained
generator; the stored label is the stage's mean attention (the authors' files do not say how
theirs were formed); the frozen adapters' outputs are differentiated (the authors run them under
no_grad); LoRA targets follow `model.lora` (the authors: q and v); at evaluation the query pools
what the model is given (for option scoring, prompt plus option). Reported: selection accuracy
per stage after each stage (`strategy_metrics.sapt_lora.selection_accuracy`). Needs
`model.finetune: lora`.
"""
    needs_full_logits = True  # the query pools the prompt: the loop must pass the labels
    unsupported_parallel = {"fsdp": "it adds a LoRA adapter per stage"}

    def __init__(self, options=None):
        super().__init__(options)
        self.selector: Selector | None = None
        self.alpha: torch.Tensor | None = None  # the current forward's weights (B x stages)
        self.targets: dict[str, torch.Tensor] = {}  # adapter -> its stored attention label
        self.pseudo: list[tuple[str, list[int]]] = []  # (adapter of the stage, prompt ids)
        self.selection: list[dict] = []
        self._rng = stage_rng(None, 0, self.name, "reflect")
        self._hook = None
        self._pending: dict[str, torch.Tensor] = {}  # selector weights loaded before setup
        self._frame = (0, 0)  # the chat template's tokens before and after a prompt

    def training_active(self, new: str) -> list[str]:
        return list(self.names)

    def resting_active(self) -> list[str]:
        return list(self.names)

    # --- set-up ---------------------------------------------------------------------------
    def setup(self, ctx) -> None:
        super().setup(ctx)
        model = ctx.model
        hf = model.get_base_model()
        self._frame = template_frame(ctx.encoder)
        self.selector = Selector(hf.config.hidden_size, self.options.query_dim)
        self.selector.to(device_of(ctx))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(stable_seed(ctx.seed, self.name, "query"))
            for m in self.selector.query:
                if isinstance(m, nn.Linear):
                    m.reset_parameters()
        model.sapt_selector = self.selector  # trained (and checkpointed) with the adapters
        self._hook = hf.register_forward_pre_hook(self._select, with_kwargs=True)
        self._install()
        if self._pending:
            self._restore_selector()

    def _install(self) -> None:
        for module in self.model.modules():
            if LoraLinear is not None and isinstance(module, LoraLinear) and not hasattr(
                    module, "_everlearn_sapt"):
                module._everlearn_sapt = self
                module.forward = types.MethodType(_mixed_forward, module)

    def _add_key(self, name: str, index: int) -> None:
        gen = torch.Generator().manual_seed(stable_seed(self.ctx.seed, index, self.name, "key"))
        key = torch.rand(self.selector.hidden, generator=gen) * 2 - 1
        self.selector.keys[name] = nn.Parameter(key.to(device_of(self.ctx)))

    # --- selection ------------------------------------------------------------------------
    def pooled(self, input_ids: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Max-pooled frozen token embeddings of the prompt positions ``keep``, without the
        chat template's own tokens."""
        keep = content_positions(keep.bool(), *self._frame)
        with torch.no_grad():
            embeds = self.model.get_base_model().get_input_embeddings()(input_ids)
        return max_pool(embeds.float(), keep)

    def _select(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        names = [n for n in self.names if n in self.selector.keys]
        if ids is None or not names:
            self.alpha = None
            return
        past = kwargs.get("past_key_values", kwargs.get("cache"))  # transformers 5 takes `cache`
        if (past is not None and hasattr(past, "get_seq_length") and past.get_seq_length() > 0
                and self.alpha is not None and self.alpha.shape[0] == ids.shape[0]):
            return  # generation: the prompt's selection holds for every new token
        mask = kwargs.get("attention_mask")
        keep = mask.bool() if mask is not None else torch.ones_like(ids, dtype=torch.bool)
        labels = kwargs.get("labels")
        if labels is not None:
            keep = keep & (labels == IGNORE)  # the prompt only, as the authors' input_ids_wo_label
        self.alpha = torch.softmax(self.selector.logits(self.pooled(ids, keep), names), dim=-1)

    @torch.no_grad()
    def attention(self, prompts: list[list[int]]) -> torch.Tensor:
        """Attention weights (N x stages) of prompts given as token ids."""
        if not prompts:
            return torch.zeros(0, len(self.names))
        rows = []
        for s in range(0, len(prompts), 16):
            rows.append(torch.softmax(self.selector.logits(self._pool_ids(prompts[s:s + 16]),
                                                           self.names), dim=-1).cpu())
        return torch.cat(rows)

    def _pool_ids(self, prompts: list[list[int]]) -> torch.Tensor:
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.ctx.encoder.pad_id, dtype=torch.long)
        keep = torch.zeros((len(prompts), width), dtype=torch.bool)
        for j, p in enumerate(prompts):
            ids[j, :len(p)] = torch.tensor(p)
            keep[j, :len(p)] = True
        device = device_of(self.ctx)
        return self.pooled(ids.to(device), keep.to(device))

    def prompt_ids(self, record: Record) -> list[int]:
        enc = self.ctx.encoder
        ids = enc.prompt_inputs(record)[0]
        return enc.fit_prompt(record, ids, enc.max_length, None) or [enc.pad_id]

    # --- hooks ----------------------------------------------------------------------------
    def before_stage(self, stage) -> None:
        self.pseudo = self._write_pseudo(stage)  # by the model as the earlier stages left it
        self._rng = stage_rng(self.ctx, stage.index, self.name, "reflect")
        super().before_stage(stage)
        name = adapter_name(stage.index)
        for key in self.selector.keys.values():
            key.requires_grad_(False)
        self._add_key(name, stage.index)
        self.selector.query.requires_grad_(True)
        self._install()

    def extra_loss(self, model, batch, outputs):
        if not self.pseudo or self.options.reflection_weight == 0 or not model.training:
            return None
        picked = [self.pseudo[i] for i in self._rng.sample(
            range(len(self.pseudo)), min(self.options.replay_batch, len(self.pseudo)))]
        logits = self.selector.logits(self._pool_ids([ids for _, ids in picked]), self.names)
        target = torch.stack([self._padded_target(name) for name, _ in picked]).to(logits.device)
        kl = F.kl_div(F.log_softmax(logits, dim=-1), target, reduction="batchmean")
        return self.options.reflection_weight * kl

    def _padded_target(self, name: str) -> torch.Tensor:
        stored = self.targets[name]
        return F.pad(stored, (0, len(self.names) - stored.numel()))

    def after_stage(self, stage) -> None:
        super().after_stage(stage)
        name = adapter_name(stage.index)
        prompts = [self.prompt_ids(r) for r in stage.train if r.answers]
        if prompts:
            self.targets[name] = self.attention(prompts).mean(0).float()
        self.pseudo = []
        measured = self._measure(stage.name)
        if measured["per_stage"]:
            self.selection.append(measured)

    def _write_pseudo(self, stage) -> list[tuple[str, list[int]]]:
        """Pseudo-inputs of every earlier stage, written by the current model (seeded)."""
        earlier = [a for a in self.adapters if a["name"] in self.targets]
        stages = {s.index: s for s in self.ctx.stream.stages} if self.ctx.stream else {}
        infos = [describe_stage(stages[a["stage"]], self.options.seeds)
                 for a in earlier if a["stage"] in stages]
        if not infos:
            return []
        counts = even_split(self.options.pseudo_per_stage * len(infos), len(infos))
        plan = [(info, adapter_name(info["index"])) for info, c in zip(infos, counts)
                for _ in range(c)]
        asks = [Record(prompt=generation_prompt(i["task"], i["seeds"], "sft")) for i, _ in plan]
        with seeded_torch(torch_seed(self.ctx, stage.index, self.name, "pseudo"),
                          device_of(self.ctx)):
            drawn = generate(self.ctx, self.model, asks, self.options.max_input_tokens,
                             sample=True, top_k=self.options.top_k,
                             batch_size=self.ctx.config.eval.batch_size)
        out = []
        for (info, name), text in zip(plan, drawn):
            text = text.strip() or (info["seeds"][0].strip() if info["seeds"] else "")
            record = Record(prompt=info["prefix"] + text + info["suffix"], system=info["system"])
            out.append((name, self.prompt_ids(record)))
        return out

    def _measure(self, after: str) -> dict:
        stages = {s.name: s for s in self.ctx.stream.stages} if self.ctx.stream else {}
        per_stage = {}
        for i, a in enumerate(self.adapters):
            stage = stages.get(a["stage_name"])
            if stage is None or not stage.test:
                continue
            weights = self.attention([self.prompt_ids(r) for r in stage.test])
            per_stage[a["stage_name"]] = 100.0 * float((weights.argmax(-1) == i).float().mean())
        mean = sum(per_stage.values()) / len(per_stage) if per_stage else 0.0
        return {"after": after, "per_stage": per_stage, "mean": mean}

    def metrics(self):
        return {"selection_accuracy": [dict(r, per_stage=dict(r["per_stage"]))
                                       for r in self.selection]} if self.selection else {}

    # --- state ----------------------------------------------------------------------------
    def extra_meta(self):
        return {"selection": [dict(r, per_stage=dict(r["per_stage"])) for r in self.selection]}

    def extra_tensors(self):
        if self.selector is None:  # loaded without a model (a state round trip)
            out = {f"selector/{k}": v for k, v in self._pending.items()}
        else:
            out = {f"selector/{k}": v.detach().cpu().clone().contiguous()
                   for k, v in self.selector.state_dict().items()}
        out.update({f"target/{n}": t.clone().contiguous() for n, t in self.targets.items()})
        return out

    def load_extra(self, meta, tensors):
        self.selection = [dict(r, per_stage=dict(r["per_stage"]))
                          for r in meta.get("selection", [])]
        self.targets = {k[len("target/"):]: v.float() for k, v in tensors.items()
                        if k.startswith("target/")}
        self._pending = {k[len("selector/"):]: v for k, v in tensors.items()
                         if k.startswith("selector/")}
        if self.selector is not None:
            self._restore_selector()

    def _restore_selector(self) -> None:
        """Re-create the saved keys (frozen) and load the selector's saved weights."""
        saved, self._pending = self._pending, {}
        for k, v in saved.items():
            if k.startswith("keys.") and k[5:] not in self.selector.keys:
                self.selector.keys[k[5:]] = nn.Parameter(v.clone().to(device_of(self.ctx)),
                                                         requires_grad=False)
        if saved:
            self.selector.load_state_dict(saved)
        self._install()

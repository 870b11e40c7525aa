"""MoE-LoRA: a mixture of LoRA experts per layer with a learned router, one new expert per stage.

The layer of LoRAMoE (Dou et al. 2024, "LoRAMoE: Alleviating World Knowledge Forgetting in Large
Language Models via MoE-Style Plugin", ACL; its Eq. 3-4, equation numbers of this module not
checked against the paper's text): a frozen linear layer plus LoRA experts
mixed by a router over the layer's input,

    y = W x + sum_i G(x)_i * (alpha / r) * B_i A_i x ,   G(x) = softmax(W_g x)

with a dense softmax (every expert computes, weighted), a bias-free linear router per layer
(``W_g``: one row per expert, PyTorch's Linear initialisation). Continual expansion, as the
mixture-of-experts family does it (Lifelong-MoE, Chen et al. 2023; DEMix, Gururangan et al.
2022): stage t adds an expert (a PEFT LoRA adapter ``stage<t>`` with ``model.lora``'s rank) to
every adapted layer and a router row for it; the earlier experts and their router rows are frozen,
and only the new expert and its row train. No task id is needed at test time: the router mixes.

Reported (``strategy_metrics.moe_lora.router_load``): after every stage, the router load on each
trained stage's test records: per expert, the mean gate G(x)_i over the records' real tokens and
all adapted layers (each row sums to 1: the experts' shares of the mixture).

Deviations, and why:

* LoRAMoE trains all its experts at once, in two groups kept apart by a localized balancing
  constraint (its Eq. 6-9); here experts arrive one per stage and the earlier ones are frozen, so
  there is no group to balance and no balancing loss (the brief is Lifelong-MoE's expansion, with
  LoRAMoE's layer). Like Lifelong-MoE's old gating dimensions, the earlier router rows are frozen
  (``train_old_router: true`` trains the whole router instead).
* Experts are adapted wherever ``model.lora.target_modules`` says; LoRAMoE adapts the FFN only.
* The experts' LoRA pass is one stacked pair of matmuls (the gates scale each expert's rank
  block), so LoRA dropout, when configured, draws one mask per call for all experts.
* ``everlearn export`` writes the experts as PEFT adapters without the router (PEFT has no such
  layer); the run's checkpoints hold the router.
"""

from __future__ import annotations

import math
import types
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from everlearn.strategies.common.adapters import StageAdapters, adapters_parameters, stable_seed
from everlearn.strategies.common.buffer import eval_mode, record_batch

try:
    from peft.tuners.lora.layer import Linear as LoraLinear
except ImportError:  # pragma: no cover - peft is a dependency
    LoraLinear = None

ROUTER = "lora_router"  # a "lora_" name: the adapter machinery treats rows as the expert's


def _moe_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    shared = self.everlearn_moe
    experts = [n for n in shared["experts"] if n in self.lora_A]
    if self.disable_adapters or self.merged or kwargs.get("adapter_names") is not None:
        return type(self).forward(self, x, *args, **kwargs)
    result = self.base_layer(x, *args, **kwargs)
    if not experts:
        return result
    x = self._cast_input_dtype(x, self.lora_A[experts[0]].weight.dtype)
    router = getattr(self, ROUTER)
    gates = torch.softmax(F.linear(x, torch.cat([router[n] for n in experts])), dim=-1)
    if shared["sink"] is not None:
        shared["sink"](gates)
    a = torch.cat([self.lora_A[n].weight for n in experts])
    b = torch.cat([self.lora_B[n].weight * self.scaling[n] for n in experts], dim=1)
    ranks = torch.tensor([self.lora_A[n].weight.shape[0] for n in experts], device=x.device)
    h = F.linear(self.lora_dropout[experts[-1]](x), a)
    h = h * gates.repeat_interleave(ranks, dim=-1)
    return (result + F.linear(h, b)).to(result.dtype)


def moe_layers(model) -> dict[str, torch.nn.Module]:
    return {n: m for n, m in model.named_modules()
            if LoraLinear is not None and isinstance(m, LoraLinear)}


@dataclass
class MoELoRAOptions:
    train_old_router: bool = field(default=False, metadata={
        "help": "Train every router row at every stage (false: only the new expert's row, the "
                "earlier rows frozen with their experts)."})
    load_examples: int = field(default=64, metadata={
        "help": "Test records per trained stage the reported router load averages over."})

    def check(self) -> tuple[str, str] | None:
        if self.load_examples < 1:
            return "load_examples", f"expected an integer >= 1, got {self.load_examples}"
        return None


class MoELoRA(StageAdapters):
    name = "moe_lora"
    summary = ("a mixture of LoRA experts per layer with a learned softmax router; a new expert "
               "per stage, earlier experts frozen (router load reported)")
    unsupported_parallel = {"fsdp": "it adds a LoRA expert per stage"}
    paper = ("Dou et al. 2024, LoRAMoE: Alleviating World Knowledge Forgetting in Large Language "
             "Models via MoE-Style Plugin (ACL); expansion: Chen et al. 2023, Lifelong Language "
             "Pretraining with Distribution-Specialized Experts (ICML)")
    Options = MoELoRAOptions
    details = """
Every adapted layer computes y = W x + sum_i softmax(W_g x)_i (alpha/r) B_i A_i x (LoRAMoE's
layer: dense softmax router, bias-free, one row per expert). Each stage adds one LoRA expert (a
PEFT adapter with `model.lora`'s rank) and its router row; earlier experts and their rows are
frozen (Lifelong-MoE's expansion; `train_old_router: true` trains the whole router). Reported
(`strategy_metrics.moe_lora.router_load`): after every stage, per trained stage's test records
(at most `load_examples`), each expert's mean gate over real tokens and adapted layers (sums to 1).
Deviations: no localized balancing constraint (LoRAMoE's Eq. 6-9, not checked, balance two
groups of experts trained together; here experts arrive one per stage); experts on every adapted
Linear (LoRAMoE: the FFN); one dropout mask per call for all experts; `everlearn export` writes
the experts as PEFT adapters without the router.
"""

    def __init__(self, options=None):
        super().__init__(options)
        self.shared = {"experts": [], "sink": None}
        self.load: dict[str, dict[str, dict[str, float]]] = {}  # after stage -> on stage -> share

    def training_active(self, new: str) -> list[str]:
        return self.names

    def resting_active(self) -> list[str]:
        return self.names

    def setup(self, ctx) -> None:
        super().setup(ctx)
        for module in moe_layers(ctx.model).values():
            if not hasattr(module, ROUTER):
                setattr(module, ROUTER, torch.nn.ParameterDict())
            module.everlearn_moe = self.shared
            module.forward = types.MethodType(_moe_forward, module)

    def _add(self, name: str) -> None:
        super()._add(name)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(stable_seed(self.ctx.seed, name, self.name, "router"))
            for module in moe_layers(self.model).values():
                weight = module.lora_A[name].weight
                row = torch.empty(1, weight.shape[1], dtype=weight.dtype, device=weight.device)
                torch.nn.init.kaiming_uniform_(row, a=math.sqrt(5))  # nn.Linear's default
                getattr(module, ROUTER)[name] = torch.nn.Parameter(row)
        self.shared["experts"] = [*self.shared["experts"], name]

    def before_stage(self, stage) -> None:
        super().before_stage(stage)
        if self.options.train_old_router:
            for params in adapters_parameters(self.model, self.names).values():
                for pname, p in params.items():
                    if f".{ROUTER}." in pname:
                        p.requires_grad_(True)

    def after_stage(self, stage) -> None:
        super().after_stage(stage)
        stages = {s.name: s for s in self.ctx.stream.stages}
        row = {}
        for a in self.adapters:
            s = stages.get(a["stage_name"])
            if s is not None and s.test:
                row[a["stage_name"]] = self.router_load(list(s.test)[: self.options.load_examples])
        self.load[stage.name] = row

    @torch.no_grad()
    def router_load(self, records: list) -> dict[str, float]:
        """Mean gate per expert over ``records``' real tokens and every adapted layer."""
        total = torch.zeros(len(self.names), dtype=torch.float64)
        mask: dict[str, torch.Tensor] = {}

        def sink(gates: torch.Tensor) -> None:
            nonlocal total
            total = total + gates[mask["now"]].double().sum(0).cpu()

        self.shared["sink"] = sink
        bs = getattr(getattr(self.ctx.config, "eval", None), "batch_size", 16)
        try:
            with eval_mode(self.model):
                for s in range(0, len(records), bs):
                    batch = record_batch(self.ctx, records[s:s + bs])
                    mask["now"] = batch["attention_mask"].bool()
                    with self.ctx.autocast():
                        self.model(input_ids=batch["input_ids"],
                                   attention_mask=batch["attention_mask"])
        finally:
            self.shared["sink"] = None
        shares = total / total.sum()
        return dict(zip(self.names, shares.tolist()))

    def load_state_dict(self, state) -> None:
        self.shared["experts"] = []
        super().load_state_dict(state)  # re-adds every expert (and its router rows) by _add
        self.shared["experts"] = list(self.names)
        self.load = {k: {s: dict(v) for s, v in row.items()}
                     for k, row in state.get("meta", {}).get("router_load", {}).items()}

    def metrics(self):
        """After every stage: the router load (experts' mean gate) on each trained stage."""
        return {"router_load": {k: {s: dict(v) for s, v in row.items()}
                                for k, row in self.load.items()}} if self.load else {}

    def extra_meta(self):
        return {"router_load": {k: {s: dict(v) for s, v in row.items()}
                                for k, row in self.load.items()}}

"""Model merging: after each stage, combine the weights before and after it into one model.

Methods (``method``), with theta_0 the base model, theta_bar_t the merged model after stage t,
theta_t the weights stage t's training ended at and ``tau_t = theta_t - start_t`` its task vector:

- ``interpolate``: ``theta_bar_t = (1 - ratio) * theta_bar_{t-1} + ratio * theta_t`` (weight
  averaging: model soups, Wortsman et al. 2022; model averaging against the alignment tax,
  Lin et al. 2024). ratio 0 keeps the old model, 1 takes the new one.
- ``task_arithmetic`` (Ilharco et al. 2023): ``theta_bar_t = theta_0 + scale * sum_{s<=t} tau_s``
  (computed incrementally as ``theta_bar_{t-1} + scale * tau_t``, the same sum).
- ``ties`` (Yadav et al. 2023): ``theta_bar_t = theta_0 + scale * tau_m`` where ``tau_m`` is the
  TIES merge of ``tau_1..tau_t``: each task vector trimmed to its top ``density`` share of
  magnitudes (over the whole task vector, as the authors' code, or per tensor with
  ``trim_scope: tensor``), per-parameter sign elected by total mass, disjoint mean of the values
  agreeing with it. The trimmed task vectors are kept (sparse) because TIES is not incremental.

Where a stage starts (``train_from``): ``merged`` trains stage t from theta_bar_{t-1}, so
``tau_t = theta_t - theta_bar_{t-1}`` is the stage's own increment; ``base`` trains every stage
from theta_0, so ``tau_t = theta_t - theta_0`` are independent experts as in the task-arithmetic
and TIES papers. ``auto`` (default) is ``merged`` for interpolate, ``base`` for the other two.

Full fine-tuning: the merge acts on every trainable weight; theta_0 and theta_bar_{t-1} are CPU
fp32 snapshots taken from the model (the base on ``setup``, which also runs on resume, so it is
never stored); the merged weights are written back into the model, so the stage checkpoint holds
theta_bar_t. Only TIES needs strategy state: the trimmed task vectors (flat indices + values).

LoRA: the merge acts on the *dense* delta of each adapted Linear, ``dW = scaling * B @ A``
(PEFT's own delta, in the base weight's layout: transposed for ``fan_in_fan_out`` layers such as
GPT-2's ``Conv1D``, weight (in, out)), never on the factors A and B separately (TIES or
averaging over factors is a different, non-equivalent operation). Every stage trains a freshly
initialised adapter (A kaiming-uniform from a generator seeded by run seed and stage index,
B = 0, like PEFT), so ``tau_t = scaling * B_t @ A_t`` exactly. The merged delta D_t (not low-rank in
general: TIES trimming makes it full rank) is held densely, outside the adapter, and added to
the output of each adapted layer's frozen base Linear by a forward hook; the base weights
themselves are never written. After stage t the hook holds ``D_t - tau_t`` and the stage's
trained adapter stays in place, so the model computes ``W_0 + D_t`` and the stage checkpoint
keeps the stage's own adapter; before the next stage the hook holds ``D_t`` (train_from merged)
or nothing (base) and the adapter is re-initialised. The strategy state stores every stage's
factors (r * (in + out) per layer and stage, smaller than one dense delta); D is recomputed from
them on resume, by the same operations in the same order, so a resumed run is bit-identical.
Memory: one dense delta per adapted layer (the size of the adapted base weights) plus, for TIES,
the trimmed deltas.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from everlearn.errors import ConfigError, TrainingError
from everlearn.strategies.base import Strategy
from everlearn.strategies.common import merging as M

METHODS = ("interpolate", "task_arithmetic", "ties")


@dataclass
class MergeOptions:
    method: str = field(default="interpolate", metadata={
        "help": "'interpolate' (weight averaging), 'task_arithmetic' or 'ties' (TIES-Merging)."})
    ratio: float = field(default=0.5, metadata={
        "help": "interpolate: weight of the newly trained model (0 keeps the old one)."})
    scale: float = field(default=1.0, metadata={
        "help": "task_arithmetic and ties: lambda, the factor on the (merged) task vectors."})
    density: float = field(default=0.2, metadata={
        "help": "ties: share of each task vector kept by magnitude (TIES' k = 20%)."})
    trim_scope: str = field(default="model", metadata={
        "help": "ties: rank magnitudes over the whole task vector ('model') or per 'tensor'."})
    train_from: str = field(default="auto", metadata={
        "help": "Where each stage starts: 'merged' (previous merged model), 'base' (the base "
                "model: independent task vectors), 'auto' (merged for interpolate, else base)."})

    def check(self) -> tuple[str, str] | None:
        """(field, message) for the first invalid option, else None."""
        if self.method not in METHODS:
            return "method", f"expected one of {', '.join(METHODS)}, got {self.method!r}"
        if not 0 <= self.ratio <= 1:
            return "ratio", f"expected 0 <= x <= 1, got {self.ratio}"
        if not (math.isfinite(self.scale) and self.scale > 0):
            return "scale", f"expected a number > 0, got {self.scale}"
        if not 0 < self.density <= 1:
            return "density", f"expected 0 < x <= 1, got {self.density}"
        if self.trim_scope not in ("model", "tensor"):
            return "trim_scope", f"expected 'model' or 'tensor', got {self.trim_scope!r}"
        if self.train_from not in ("auto", "merged", "base"):
            return "train_from", f"expected 'auto', 'merged' or 'base', got {self.train_from!r}"
        return None

    @property
    def start(self) -> str:
        """The resolved ``train_from``."""
        if self.train_from != "auto":
            return self.train_from
        return "merged" if self.method == "interpolate" else "base"


def _snapshot(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {n: p.detach().to("cpu", torch.float32, copy=True) for n, p in params.items()}


def _seed(*parts) -> int:
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class Merge(Strategy):
    name = "merge"
    summary = "merge old and new weights after each stage (interpolation, task arithmetic, TIES)"
    unsupported_parallel = {"fsdp": "it averages whole weights"}
    paper = ("Wortsman et al. 2022 (model soups); Lin et al. 2024 (model averaging, alignment "
             "tax); Ilharco et al. 2023 (task arithmetic); Yadav et al. 2023 (TIES-Merging)")
    Options = MergeOptions

    def __init__(self, options=None):
        super().__init__(options)
        self.stages: list[int] = []
        self.lora_meta: dict[str, list] = {}  # module -> [scaling, fan_in_fan_out]
        self.tensors: dict[str, torch.Tensor] = {}  # LoRA factors or TIES trimmed vectors
        self._merged: dict[str, torch.Tensor] | None = None  # LoRA: D after self.stages
        self._trimmed: list[dict[str, tuple]] = []  # ties: per stage {key: (idx, values)}
        self._held: dict[str, torch.Tensor | None] = {}
        self._lora = False

    # --- setup -------------------------------------------------------------------------------
    def setup(self, ctx):
        super().setup(ctx)
        model = ctx.model
        self._lora = hasattr(model, "peft_config")
        if self._lora:
            from peft.tuners.lora import Linear as LoraLinear
            from peft.tuners.lora import LoraLayer

            self.adapter = model.active_adapter
            self._modules = {}
            for name, module in model.named_modules():
                if not isinstance(module, LoraLayer) or self.adapter not in module.lora_A:
                    continue
                if not isinstance(module, LoraLinear):
                    raise ConfigError("config: model.lora.target_modules: merge supports "
                                      f"LoRA on Linear layers only; '{name}' is a "
                                      f"{type(module).__name__}")
                self._modules[name] = module
                module.base_layer.register_forward_hook(self._hook(name))
        else:
            self._params = {n: p for n, p in model.named_parameters() if p.requires_grad}
            need_base = self.options.method == "ties" or self.options.start == "base"
            self._base = _snapshot(self._params) if need_base else None
        if self.stages:  # state restored before setup: rebuild what it implies
            self._restore()

    def _hook(self, name: str):
        def add_merged_delta(module, args, output):
            held = self._held.get(name)
            return None if held is None else output + F.linear(args[0], held)
        return add_merged_delta

    # --- hooks ---------------------------------------------------------------------------------
    def before_stage(self, stage):
        if self._lora:
            self._hold(self._merged if self.options.start == "merged" else None)
            self._reset_adapter(stage)
            return
        self._check_params()
        need_prev = self.options.method != "ties" or self.options.start == "merged"
        self._prev = _snapshot(self._params) if need_prev else None
        if self.options.start == "base":
            self._write(self._base)

    def after_stage(self, stage):
        if self._lora:
            for name, module in self._modules.items():
                self.tensors[f"{stage.index}/{name}/A"] = (
                    module.lora_A[self.adapter].weight.detach().to("cpu", copy=True))
                self.tensors[f"{stage.index}/{name}/B"] = (
                    module.lora_B[self.adapter].weight.detach().to("cpu", copy=True))
                self.lora_meta[name] = [float(module.scaling[self.adapter]),
                                        bool(module.fan_in_fan_out)]
            self.stages.append(stage.index)
            tau = self._advance_lora(stage.index)
            self._hold({k: v - tau[k] for k, v in self._merged.items()})
            return
        self._check_params()
        opts = self.options
        theta = _snapshot(self._params)
        start = self._prev if opts.start == "merged" else self._base
        if opts.method == "ties":
            tau = {k: theta[k] - start[k] for k in theta}
            del theta
            self._add_trimmed(stage.index, tau)
            new = self._ties_result(self._base)
        else:
            new = {}
            for k in theta:  # per tensor: no extra full copy of the model
                if opts.method == "interpolate":
                    new[k] = M.interpolate({k: self._prev[k]}, {k: theta[k]}, opts.ratio)[k]
                else:
                    tau_k = theta[k] - start[k]
                    new[k] = M.task_arithmetic({k: self._prev[k]}, [{k: tau_k}], opts.scale)[k]
        self.stages.append(stage.index)
        self._write(new)
        self._prev = None

    # --- LoRA helpers --------------------------------------------------------------------------
    def _lora_tau(self, index: int) -> dict[str, torch.Tensor]:
        """Stage ``index``'s dense task vector: ``scaling * B @ A`` per adapted layer (CPU)."""
        out = {}
        for name, (scaling, fifo) in sorted(self.lora_meta.items()):
            out[name] = M.lora_delta(self.tensors[f"{index}/{name}/A"],
                                     self.tensors[f"{index}/{name}/B"], scaling, fifo)
        return out

    def _advance_lora(self, index: int) -> dict[str, torch.Tensor]:
        """Fold stage ``index`` into the merged delta D; returns its task vector."""
        opts = self.options
        tau = self._lora_tau(index)
        prev = self._merged
        if opts.method == "ties":
            self._add_trimmed(index, tau)
            self._merged = self._ties_result(None)
        elif opts.method == "interpolate":
            start = prev if opts.start == "merged" else None
            new = tau if start is None else {k: start[k] + tau[k] for k in tau}
            self._merged = M.interpolate(prev, new, opts.ratio)
        else:
            self._merged = M.task_arithmetic(prev, [tau], opts.scale)
        return tau

    def _hold(self, deltas: dict[str, torch.Tensor] | None) -> None:
        """Put ``deltas`` (or nothing) into the forward hooks, on each layer's device/dtype.

        The deltas are in the base weight's layout (PEFT's ``get_delta_weight``); the hook's
        ``F.linear`` wants (out, in), so a ``fan_in_fan_out`` layer's (a GPT-2 ``Conv1D``,
        weight (in, out)) is transposed back with PEFT's own ``transpose``."""
        from peft.utils.other import transpose

        for name, module in self._modules.items():
            if deltas is None:
                self._held[name] = None
                continue
            w = module.base_layer.weight
            held = transpose(deltas[name], module.fan_in_fan_out)
            self._held[name] = held.to(w.device, w.dtype).contiguous()

    def _reset_adapter(self, stage) -> None:
        """A fresh adapter, initialised like PEFT (A kaiming-uniform, B = 0), seeded per stage."""
        gen = torch.Generator().manual_seed(_seed(self.ctx.seed, stage.index, self.name))
        with torch.no_grad():
            for name in sorted(self._modules):
                module = self._modules[name]
                a = module.lora_A[self.adapter].weight
                fresh = torch.empty(a.shape, dtype=torch.float32)
                torch.nn.init.kaiming_uniform_(fresh, a=math.sqrt(5), generator=gen)
                a.copy_(fresh)
                module.lora_B[self.adapter].weight.zero_()

    # --- full fine-tuning helpers ----------------------------------------------------------------
    def _check_params(self) -> None:
        now = [n for n, p in self.ctx.model.named_parameters() if p.requires_grad]
        if now != list(self._params):
            raise TrainingError("merge: the set of trainable weights changed since setup; merge "
                                "cannot combine models of different shapes")

    def _write(self, weights: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for n, p in self._params.items():
                p.copy_(weights[n])

    # --- TIES --------------------------------------------------------------------------------
    def _add_trimmed(self, index: int, tau: dict[str, torch.Tensor]) -> None:
        trimmed = M.trim_top_k(tau, self.options.density, self.options.trim_scope)
        sparse = {k: M.to_sparse(v) for k, v in trimmed.items()}
        self._trimmed.append({k: (i, v, tau[k].shape) for k, (i, v) in sparse.items()})
        if not self._lora:  # LoRA recomputes them from the stored factors
            for k, (i, v) in sparse.items():
                self.tensors[f"{index}/{k}/idx"] = i
                self.tensors[f"{index}/{k}/val"] = v

    def _ties_result(self, base: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
        """``base + scale * ties_merge(trimmed so far)``, one tensor at a time."""
        out = {}
        for k in self._trimmed[0]:
            values = [M.from_sparse(i, v, shape) for i, v, shape in
                      (t[k] for t in self._trimmed)]
            merged = M.ties_merge([{k: v} for v in values])[k]
            out[k] = (base[k] if base is not None else 0) + self.options.scale * merged
        return out

    # --- state -------------------------------------------------------------------------------
    def state_dict(self):
        return {"meta": {"stages": list(self.stages),
                         "lora": {k: list(v) for k, v in self.lora_meta.items()}},
                "tensors": dict(self.tensors)}

    def load_state_dict(self, state):
        meta = state.get("meta", {})
        self.stages = [int(i) for i in meta.get("stages", [])]
        self.lora_meta = {k: [float(v[0]), bool(v[1])] for k, v in meta.get("lora", {}).items()}
        self.tensors = dict(state.get("tensors", {}))
        if self.ctx is not None:
            self._restore()

    def _restore(self) -> None:
        """Rebuild the merged delta (LoRA) or the trimmed vectors (full) from the state."""
        self._merged, self._trimmed = None, []
        if not self.stages:
            return
        if self._lora:
            if set(self.lora_meta) != set(self._modules):
                raise TrainingError("merge: the saved LoRA layers do not match the model's")
            tau = None
            for index in self.stages:
                tau = self._advance_lora(index)
            if tau is not None:  # as after_stage left it: the last adapter is loaded next
                self._hold({k: v - tau[k] for k, v in self._merged.items()})
            return
        if self.options.method == "ties":
            shapes = {n: p.shape for n, p in self._params.items()}
            for index in self.stages:
                self._trimmed.append({k: (self.tensors[f"{index}/{k}/idx"],
                                          self.tensors[f"{index}/{k}/val"], shapes[k])
                                      for k in shapes})

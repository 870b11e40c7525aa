"""MIGU (Du et al. 2024): update only the weights whose linear-layer outputs are large.

"Unlocking Continual Learning Abilities in Language Models" (EMNLP Findings 2024). No memory,
no task labels, no extra parameters: during the forward passes of an optimizer step every linear
layer's output magnitudes are summed per output dimension, ``m_j = sum_tokens |y_j|``, and
L1-normalised, ``m_j / sum_i m_i`` (the paper's normalised magnitude distribution).
Before the optimizer step, the gradient rows (the weight row and bias of output ``j``) of the
dimensions at or below the ``threshold`` quantile of that distribution are zeroed, so a step
updates only the top ``1 - threshold`` share of each layer's outputs (the paper's threshold
ratio T; ``threshold: 0.7`` keeps the top 30%). Equation numbers are not cited here: the
method is stated as the authors' code computes it (below), which this follows step for step.

Which output masks which weight, as in the authors' code (wenyudu/MIGU,
``src/accelerate_local.py``): under full fine-tuning each ``nn.Linear``'s own output; under
LoRA the rows of ``lora_A`` by ``lora_A``'s output, and the rows of ``lora_B`` by the output of
the adapted layer it writes into (base plus delta; ``lora_B`` starts at zero, so its own output
would carry no signal). The magnitudes accumulate over the micro-batches of a step and restart
after it; under data parallelism they are summed over the processes first, so every rank masks
alike. Like the authors' scripts (``--is_first_task True`` trains the first task unmasked),
the first stage trains without masks unless ``mask_first_stage`` is set.

Deviations: an output head tied to the input embeddings (SmolLM2, the tiny test model) is
not masked, since its gradient rows are also the token embeddings' (the authors' T5 and
Llama-2 have untied heads, which are masked like any linear layer). Like the authors' code,
every position of the padded batch counts (padding rows are part of the layer's output as the
model computes it). Masking acts on gradients: with Adam, a row masked this step still moves
by its momentum from earlier steps (as in the authors' implementation); on a fresh optimizer
exactly the kept rows change. Stacked with a strategy that runs its own training-mode forward
passes (``agem``, ``gem`` on their memories), those passes count toward the magnitudes too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from everlearn.strategies.base import Strategy


@dataclass
class MIGUOptions:
    threshold: float = field(
        default=0.7, metadata={"help": "Quantile of each layer's L1-normalised output magnitudes "
                                       "at or below which gradient rows are zeroed (the paper's "
                                       "T; 0.7 updates the top 30%; the authors' scripts take "
                                       "it as an argument)."})
    mask_first_stage: bool = field(
        default=False, metadata={"help": "Mask the first stage too (the authors train it "
                                         "unmasked)."})

    def check(self) -> tuple[str, str] | None:
        if not 0.0 <= self.threshold < 1.0:
            return "threshold", f"expected a number in [0, 1), got {self.threshold}"
        return None


def magnitude_mask(magnitudes: torch.Tensor, threshold: float) -> torch.Tensor:
    """The kept output dimensions: L1-normalised magnitudes above their ``threshold`` quantile."""
    share = magnitudes.float() / magnitudes.float().sum().clamp_min(1e-30)
    return share > torch.quantile(share, threshold)


def mask_targets(model) -> list[tuple[str, nn.Module, nn.Linear]]:
    """(name, module whose output decides, linear layer whose gradient rows are masked) for
    every linear layer with a trainable weight; ``lora_B`` is decided by its adapted layer."""
    modules = dict(model.named_modules())
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    tied = getattr(embeddings, "weight", None)
    out = []
    for name, module in modules.items():
        if not isinstance(module, nn.Linear) or not module.weight.requires_grad:
            continue
        if module.weight is tied:  # a tied output head: its rows are token embeddings too
            continue
        decider = module
        parts = name.split(".")
        if len(parts) >= 3 and parts[-2] == "lora_B":  # <layer>.lora_B.<adapter>
            decider = modules[".".join(parts[:-2])]
        out.append((name, decider, module))
    return out


class MIGU(Strategy):
    name = "migu"
    summary = "MIGU: update only the gradient rows of each linear layer's largest outputs"
    paper = ("Du et al. 2024, Unlocking Continual Learning Abilities in Language Models "
             "(EMNLP Findings)")
    Options = MIGUOptions
    unsupported_parallel = {
        "fsdp": "it masks rows of whole weight gradients (not known to work sharded)",
        "zero": "it masks rows of per-weight gradients, which ZeRO keeps in flat partitions",
    }
    details = """
During an optimizer step's forward passes each linear layer's output magnitudes are summed per
output dimension and L1-normalised; before the step, the gradient rows (weight row and bias) of
the outputs at or below the `threshold` quantile (the paper's threshold ratio T) are zeroed, so
only the top 1 - T of each layer's outputs update. No memory, no task labels. As in the
authors' code (wenyudu/MIGU): under LoRA, lora_A's rows follow lora_A's output and lora_B's rows
the adapted layer's output; the first stage trains unmasked (`mask_first_stage`); magnitudes are
summed over data-parallel processes. Deviations: an output head tied to the input embeddings is
not masked (its rows are also the token embeddings). Masks act on gradients, so with AdamW a row
masked now still moves by its earlier momentum. Reported: the mean kept share of rows per stage
(`strategy_metrics.migu.kept_share`).
"""

    def __init__(self, options=None):
        super().__init__(options)
        self.sums: dict[str, torch.Tensor] = {}
        self.handles: list = []
        self.targets: list[tuple[str, nn.Module, nn.Linear]] = []
        self.kept: dict[str, list[float]] = {}  # stage -> [masked steps, sum of kept shares]
        self._stage = 0

    def before_stage(self, stage):
        self._remove_hooks()
        self._stage = stage.index
        first = stage.index == 0 or (self.ctx is not None and self.ctx.stream is not None
                                     and stage.index == self.ctx.stream.stages[0].index)
        if first and not self.options.mask_first_stage:
            return
        self.targets = mask_targets(self.ctx.model)
        for name, decider, _ in self.targets:
            self.handles.append(decider.register_forward_hook(self._recorder(name)))

    def _recorder(self, name: str):
        def record(module, args, output):
            if not (module.training and torch.is_grad_enabled()):
                return  # evaluation and generation do not decide the mask
            y = output.detach()
            mag = y.reshape(-1, y.shape[-1]).abs().sum(0, dtype=torch.float32)
            self.sums[name] = self.sums[name] + mag if name in self.sums else mag
        return record

    def _reduced(self) -> dict[str, torch.Tensor]:
        """The step's magnitudes, summed over data-parallel processes."""
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return self.sums
        names = sorted(self.sums)
        flat = torch.cat([self.sums[n] for n in names])
        dist.all_reduce(flat)
        sizes = [self.sums[n].numel() for n in names]
        return dict(zip(names, flat.split(sizes)))

    def after_backward(self, model):
        if not self.handles:
            return
        sums, self.sums = self._reduced(), {}
        kept_total, rows = 0, 0
        for name, _, linear in self.targets:
            if name not in sums:
                continue
            keep = magnitude_mask(sums[name], self.options.threshold)
            kept_total += int(keep.sum())
            rows += keep.numel()
            for p in (linear.weight, linear.bias):
                if p is not None and p.grad is not None:
                    shape = (-1,) + (1,) * (p.grad.dim() - 1)
                    p.grad.mul_(keep.to(p.grad.device, p.grad.dtype).view(shape))
        if rows:
            counts = self.kept.setdefault(str(self._stage), [0, 0.0])
            counts[0] += 1
            counts[1] += kept_total / rows

    def after_stage(self, stage):
        self._remove_hooks()

    def _remove_hooks(self):
        for h in self.handles:
            h.remove()
        self.handles, self.targets, self.sums = [], [], {}

    def metrics(self):
        return {"kept_share": {k: v[1] / v[0] for k, v in self.kept.items() if v[0]}}

    def state_dict(self):
        return {"meta": {"kept": self.kept}, "tensors": {}}

    def load_state_dict(self, state):
        self.kept = {k: [int(v[0]), float(v[1])] for k, v in state["meta"].get("kept", {}).items()}

    def step_state(self):
        """The kept-share counters move every step (the magnitudes restart each step)."""
        state = super().step_state()
        state["meta"]["kept"] = self.kept
        return state

    def load_step_state(self, state):
        super().load_step_state(state)
        self.load_state_dict(state)

"""InfLoRA: each stage's LoRA reads only input directions the earlier stages left free.

Liang & Li (2024), "InfLoRA: Interference-Free Low-Rank Adaptation for Continual Learning" (CVPR);
the authors' code: liangyanshuo/InfLoRA ``methods/inflora.py``. As in ``inc_lora``, stage t adds
a LoRA adapter and the earlier ones stay frozen and active (their deltas add up; no task id at
test time). What InfLoRA changes is the new adapter's down-projection (the paper's B_t, PEFT's
``lora_A``, r x in): it is *designed*, not trained, and only the up-projection (PEFT's ``lora_B``,
zero at the start) trains, so the stage fine-tunes the base weight W inside the row space of that
down-projection (the paper's reparameterisation, W + A_t B_t).

Before stage t trains, every adapted layer's inputs over the stage's training records give the
uncentred covariance C_t (the code's ``cur_matrix``); the earlier stages' input space is a
DualGPM memory (``common.subspace_memory``, with the code's thresholds). The new down-projection
is the top-r left singular vectors of C_t with the earlier space projected out (the paper's
H_t projected by (I - M M^T), its interference-free design), divided by sqrt(3) as the code does:

    lora_A_t = U_r^T / sqrt(3),   U S V^T = svd((I - M M^T) C_t)   (``retain``: M M^T C_t)

Its rows are orthogonal to the earlier space, so for an input x there, lora_A_t x = 0 and the new
update B_t lora_A_t leaves the layer's output unchanged (the paper's Proposition: no interference
with earlier tasks). After stage t trains, the memory takes the inputs again (the trained model,
as the code collects them) with the threshold ``lamb + (lame - lamb) * t / T`` (t = stages done
before this one, T = stages in the stream; the code's defaults for CIFAR-100: 0.95 and 1.0).

Deviations, and why:

* The covariance is over the response-masked tokens of the stage's training records (prompt and
  response, padding excluded), at most ``design_examples`` of them (a seeded sample); the code
  uses every image token of the training set.
* The layers are ``model.lora.target_modules`` (every adapted Linear); the paper adapts the
  attention key and value projections of a ViT.
* Earlier adapters stay separate PEFT adapters that add up, not merged into W (the same function).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from everlearn.strategies.common import subspace_memory
from everlearn.strategies.common.adapters import adapter_parameters
from everlearn.strategies.common.buffer import eval_mode, record_batch, stage_rng
from everlearn.strategies.common.subspace_memory import LayerSpace
from everlearn.strategies.inc_lora import IncLoRA

try:
    from peft.tuners.lora.layer import Linear as LoraLinear
except ImportError:  # pragma: no cover - peft is a dependency
    LoraLinear = None


def lora_layers(model) -> dict[str, torch.nn.Module]:
    """Every PEFT LoRA Linear of the model by module name."""
    return {n: m for n, m in model.named_modules()
            if LoraLinear is not None and isinstance(m, LoraLinear)}


@torch.no_grad()
def input_covariances(ctx, records: list, layers: dict[str, torch.nn.Module],
                      batch_size: int) -> dict[str, torch.Tensor]:
    """Per layer, the mean of x x^T (float64) over the real tokens of ``records``' inputs."""
    sums: dict[str, torch.Tensor] = {}
    mask: dict[str, torch.Tensor] = {}
    count = 0

    def hook(key):
        def take(module, args):
            x = args[0][mask["now"]].double()
            sums[key] = sums[key] + x.T @ x if key in sums else x.T @ x
        return take

    model = ctx.model
    handles = [m.register_forward_pre_hook(hook(k)) for k, m in layers.items()]
    try:
        with eval_mode(model):
            for s in range(0, len(records), batch_size):
                batch = record_batch(ctx, records[s:s + batch_size])
                mask["now"] = batch["attention_mask"].bool()
                count += int(mask["now"].sum())
                with ctx.autocast():
                    model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    finally:
        for h in handles:
            h.remove()
    return {k: (v / max(count, 1)).cpu() for k, v in sums.items()}


def designed_down_projection(cov: torch.Tensor, space: LayerSpace | None, r: int) -> torch.Tensor:
    """The new adapter's ``lora_A`` (r x in): top-r left singular vectors of the covariance
    outside the earlier space, over sqrt(3) (the authors' code)."""
    free = cov if space is None else space.free_part(cov)
    u = torch.linalg.svd(free, full_matrices=False)[0]
    return (u[:, :r].T / math.sqrt(3)).contiguous()


@dataclass
class InfLoRAOptions:
    lamb: float = field(default=0.95, metadata={
        "help": "Energy threshold of the subspace memory after the first stage (the authors' "
                "CIFAR-100 setting; 0.98 for ImageNet-R)."})
    lame: float = field(default=1.0, metadata={
        "help": "Threshold the memory's grows toward over the stream: lamb + (lame - lamb) t/T."})
    design_examples: int | None = field(default=256, metadata={
        "help": "Training records per stage whose inputs design the adapter and grow the memory "
                "(a seeded sample; null: all)."})

    def check(self) -> tuple[str, str] | None:
        for name in ("lamb", "lame"):
            if not 0 < getattr(self, name) <= 1:
                return name, f"expected 0 < x <= 1, got {getattr(self, name)}"
        if self.design_examples is not None and self.design_examples < 1:
            return "design_examples", f"expected an integer >= 1 or null, got " \
                                      f"{self.design_examples}"
        return None


class InfLoRA(IncLoRA):
    name = "inflora"
    summary = ("per-stage LoRA whose down-projection is designed from the stage's inputs "
               "outside the earlier stages' input subspace (DualGPM memory); only B trains")
    unsupported_parallel = {"fsdp": "it adds a LoRA adapter per stage"}
    paper = ("Liang & Li 2024, InfLoRA: Interference-Free Low-Rank Adaptation for Continual "
             "Learning (CVPR); code: github.com/liangyanshuo/InfLoRA")
    Options = InfLoRAOptions
    details = """
As `inc_lora`, but each new adapter's down-projection (PEFT's `lora_A`, the paper's B_t) is
designed and frozen, and only `lora_B` trains: before a stage, each adapted layer's input
covariance C over the stage's training records (at most `design_examples`) is projected out of
the earlier stages' input subspace M (a DualGPM memory: `(I - M M^T) C`, or `M M^T C` when the
memory stores the complement), and `lora_A` = top-r left singular vectors / sqrt(3) (the authors'
code). Its rows are orthogonal to M, so the new update leaves outputs on inputs in M unchanged.
After a stage the memory grows with the trained model's inputs under the threshold
`lamb + (lame - lamb) t/T` (GPM's energy rule as the authors' `update_DualGPM` counts it).
Deviations: the covariance is over the records' real tokens (the code: every image token of the
training set); every adapted Linear is designed (the paper: a ViT's key and value projections);
a first-stage memory over half the dimensions is stored as its complement (the code's own final
conversion; its first-stage branch mislabels it). Reported: `protected_share`, the mean share of
input dimensions the memory protects.
"""

    def __init__(self, options=None):
        super().__init__(options)
        self.memory: dict[str, LayerSpace] = {}
        self.stages_done = 0

    def _records(self, stage) -> list:
        records = list(stage.train)
        n = self.options.design_examples
        if n is None or len(records) <= n:
            return records
        picked = sorted(stage_rng(self.ctx, stage.index, self.name, "design")
                        .sample(range(len(records)), n))
        return [records[i] for i in picked]

    def _covariances(self, stage) -> dict[str, torch.Tensor]:
        bs = getattr(getattr(self.ctx.config, "eval", None), "batch_size", 16)
        return input_covariances(self.ctx, self._records(stage), lora_layers(self.model), bs)

    def before_stage(self, stage) -> None:
        covs = self._covariances(stage)  # the model as the earlier stages left it
        super().before_stage(stage)
        new = self.names[-1]
        layers = lora_layers(self.model)
        with torch.no_grad():
            for key, cov in covs.items():
                weight = layers[key].lora_A[new].weight
                a = designed_down_projection(cov, self.memory.get(key), weight.shape[0])
                weight.copy_(a.to(weight.dtype))
        for pname, p in adapter_parameters(self.model, new).items():
            if ".lora_A." in pname:
                p.requires_grad_(False)  # designed, not trained: only lora_B learns

    def after_stage(self, stage) -> None:
        super().after_stage(stage)
        if self.is_last_stage(stage):
            self.stages_done += 1
            return  # no later stage reads the memory
        o = self.options
        total = max(len(self.ctx.stream.stages), 1)
        threshold = o.lamb + (o.lame - o.lamb) * self.stages_done / total
        for key, cov in self._covariances(stage).items():
            self.memory[key] = subspace_memory.update(self.memory.get(key), cov, threshold)
        self.stages_done += 1

    def metrics(self):
        """Per layer kind count and the mean share of input dimensions the memory protects."""
        if not self.memory:
            return {}
        shares = [(s.basis.shape[1] if s.kind == "remove"
                   else s.basis.shape[0] - s.basis.shape[1]) / s.basis.shape[0]
                  for s in self.memory.values()]
        return {"protected_share": sum(shares) / len(shares)}

    def extra_meta(self):
        return {"memory_kinds": {k: s.kind for k, s in self.memory.items()},
                "stages_done": self.stages_done}

    def extra_tensors(self):
        return {f"memory/{k}": s.basis.contiguous() for k, s in self.memory.items()}

    def load_extra(self, meta, tensors):
        kinds = meta.get("memory_kinds", {})
        self.memory = {k: LayerSpace(tensors[f"memory/{k}"].double(), kind)
                       for k, kind in kinds.items()}
        self.stages_done = int(meta.get("stages_done", 0))

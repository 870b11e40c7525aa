"""OSF: orthogonal subspace full fine-tuning, on PEFT's own OSF tuner (``peft.tuners.osf``).

Nayak et al. 2025, "Sculpting Subspaces: Constrained Full Fine-Tuning in LLMs for Continual
Learning" (adaptive SVD). Before each stage every targeted weight is decomposed,
``W = U_h S_h V_h + U_l S_l V_l``; the top ``effective_rank`` singular directions (the "high"
subspace, what earlier learning relies on) are frozen and only the low part trains, its
gradients projected orthogonal to the high subspace (``dU_l <- dU_l - U_h U_h^T dU_l``,
``dV_l <- dV_l - dV_l V_h^T V_h``: the paper's projected update). After the stage the low part
is merged back into the weight (a full-rank model again, no parameters added per stage), so
the next stage decomposes the updated weights and preserves a larger share of them.

Everything above is PEFT's implementation (``OSFModel``: the decomposition, the gradient hooks,
``merge_and_unload``); this module only applies it per stage, in place on the model being
trained, and restores the model's own trainable flags after the merge.

Deviations: the paper allocates the preserved rank per layer from a layer-importance score
(its adaptive rank selection); PEFT's tuner takes one ``effective_rank`` share for every
targeted layer (optionally per pattern), so the preserved share here follows one schedule per
stage, rising linearly from ``first_share`` on the first stage to ``last_share`` on the last
(the schedule of PEFT's continual-learning example, 0.3 / 0.5 / 0.7 for three tasks). PEFT's
OSF freezes every weight it does not target (embeddings, norms, the output head), as the
tuner's ``_mark_only_adapters_as_trainable`` does. The projection acts on gradients; AdamW then
rescales them per weight, so the update is orthogonal to the preserved subspace to first order
(exactly under SGD), as in PEFT and the authors' training code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from everlearn.errors import ConfigError
from everlearn.strategies.base import Strategy


@dataclass
class OSFOptions:
    first_share: float = field(
        default=0.3, metadata={"help": "Share of each targeted weight's singular directions "
                                       "frozen on the first stage."})
    last_share: float = field(
        default=0.7, metadata={"help": "Share frozen on the last stage (linear in between)."})
    target_modules: list[str] | None = field(
        default=None, metadata={"help": "Linear layers to constrain (default: PEFT's OSF "
                                        "mapping for the architecture, else all linear)."})

    def check(self) -> tuple[str, str] | None:
        for name in ("first_share", "last_share"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                return name, f"expected a number in (0, 1), got {value}"
        if self.last_share < self.first_share:
            return "last_share", (f"expected >= first_share ({self.first_share}), "
                                  f"got {self.last_share}")
        return None


def preserved_share(position: int, count: int, first: float, last: float) -> float:
    """The frozen share on the ``position``-th of ``count`` stages (0-based), linear."""
    if count <= 1:
        return first
    return first + (last - first) * min(position, count - 1) / (count - 1)


class OSF(Strategy):
    name = "osf"
    summary = "OSF: full fine-tuning orthogonal to each weight's top singular subspace (PEFT)"
    paper = ("Nayak et al. 2025, Sculpting Subspaces: Constrained Full Fine-Tuning in LLMs "
             "for Continual Learning")
    Options = OSFOptions
    details = """
PEFT's own OSF tuner (`peft.tuners.osf.OSFModel`), applied per stage in place: before a stage each
targeted weight is decomposed by SVD, the top share of its singular directions is frozen and only
the rest trains, with gradients projected orthogonal to the frozen subspace; after the stage PEFT's
`merge_and_unload` folds the update back (a plain full-rank model; nothing added per stage) and the
model's own trainable flags return. Needs `model.finetune: full`. Deviations: the paper picks the
preserved rank per layer from a layer-importance score; PEFT takes one share for all targeted
layers, so the share follows a schedule, linear from `first_share` (first stage) to `last_share`
(last stage) as in PEFT's continual-learning example (0.3 / 0.5 / 0.7). PEFT's tuner freezes the
weights it does not target (embeddings, norms, head). AdamW rescales the projected gradients, so
the update is orthogonal to the frozen subspace to first order (exactly under SGD). Reported: the
preserved share per stage (`strategy_metrics.osf.preserved_share`).
"""
    requires_finetune = "full"
    unsupported_parallel = {"fsdp": "PEFT's OSF decomposes whole weight matrices"}

    def __init__(self, options=None):
        super().__init__(options)
        self.tuner = None
        self.trainable: dict[str, bool] = {}
        self.shares: dict[str, float] = {}  # stage index -> frozen share used

    def _position(self, stage) -> tuple[int, int]:
        stages = self.ctx.stream.stages if self.ctx.stream is not None else [stage]
        indices = [s.index for s in stages]
        return (indices.index(stage.index) if stage.index in indices else len(indices) - 1,
                len(indices))

    def setup(self, ctx):
        """Refuse, in one line, a PEFT without its OSF tuner (nothing here re-implements it)."""
        try:
            import peft.tuners.osf  # noqa: F401
        except ImportError:
            import peft

            raise ConfigError(f"strategies: osf runs on PEFT's OSF tuner (peft.tuners.osf), which "
                              f"the installed peft {peft.__version__} lacks; upgrade peft "
                              "(requirements.lock pins one that has it)") from None
        super().setup(ctx)

    def before_stage(self, stage):
        from peft import OSFConfig
        from peft.tuners.osf import OSFModel

        model = self.ctx.model
        self._unload()
        position, count = self._position(stage)
        share = preserved_share(position, count, self.options.first_share,
                                self.options.last_share)
        self.shares[str(stage.index)] = share
        self.trainable = {n: p.requires_grad for n, p in model.named_parameters()}
        config = OSFConfig(effective_rank=share, target_modules=self.options.target_modules)
        self.tuner = OSFModel(model, config, "osf")  # replaces the layers in place

    def after_stage(self, stage):
        self._unload()

    def _unload(self) -> None:
        """Merge the trained low part into the weights and give back plain layers."""
        if self.tuner is None:
            return
        self.tuner.merge_and_unload()
        for name, p in self.ctx.model.named_parameters():
            p.requires_grad_(self.trainable.get(name, True))
        self.tuner = None

    def metrics(self):
        return {"preserved_share": dict(self.shares)}

    def state_dict(self):
        return {"meta": {"shares": self.shares}, "tensors": {}}

    def load_state_dict(self, state):
        self.shares = {k: float(v) for k, v in state["meta"].get("shares", {}).items()}

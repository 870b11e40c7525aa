"""One named PEFT LoRA adapter per stage: the machinery shared by inc_lora, olora and routed_lora.

PEFT does the LoRA (``add_adapter``, ``set_adapter``, ``delete_adapter``, ``disable_adapter``);
this module only decides which adapters exist, which ones compute (are *active*: their deltas add
up in every adapted layer) and which one trains, and carries every finished adapter's tensors in
the strategy state. The stage checkpoint stores only the weights that have ``requires_grad`` when
it is written, which is not all adapters (and, after routed evaluation, not even a fixed one), so
a resumed run rebuilds every adapter from the strategy state first and the engine then loads its
trainable weights on top (the same values).

Adapters are named ``stage<index>`` (PEFT adapter names must be valid module keys, stage names
need not be). The adapter the engine adds before ``setup`` (``default``) is replaced by stage 1's
own adapter at the first ``before_stage``: until then it is untrained (LoRA's B is zero), so the
base row of the matrix is the base model either way.
"""

from __future__ import annotations

import contextlib
import copy
import zlib
from typing import Any

import torch

from everlearn.errors import ConfigError, ResumeError
from everlearn.strategies.base import Strategy
from everlearn.strategies.common.stacked_lora import stacked

TENSOR_PREFIX = "adapter/"


def adapter_name(stage_index: int) -> str:
    return f"stage{stage_index}"


def stable_seed(*parts: Any) -> int:
    """A seed from the run seed and a stage, the same in every process and Python run."""
    return zlib.crc32(":".join(map(str, parts)).encode())


def adapter_parameters(model, name: str) -> dict[str, torch.nn.Parameter]:
    """The parameters of adapter ``name`` by full name (``...q_proj.lora_A.<name>.weight``)."""
    return adapters_parameters(model, [name]).get(name, {})


def adapters_parameters(model, names) -> dict[str, dict[str, torch.nn.Parameter]]:
    """:func:`adapter_parameters` of every adapter in ``names`` in one pass over the model's
    parameters (one pass per adapter would cost adapters^2 on a long stream)."""
    wanted = set(names)
    out: dict[str, dict[str, torch.nn.Parameter]] = {}
    for pname, p in model.named_parameters():
        parts = pname.split(".")
        for a, b in zip(parts, parts[1:]):
            if a.startswith("lora_") and b in wanted:
                out.setdefault(b, {})[pname] = p
                break
    return out


def lora_A_matrices(model, name: str) -> dict[str, torch.nn.Parameter]:
    """Adapter ``name``'s down-projections ``lora_A`` (r x in_features) by adapted module."""
    marker = f".lora_A.{name}."
    return {pname.split(marker)[0]: p for pname, p in adapter_parameters(model, name).items()
            if marker in pname}


def arrange(model, active: list[str], trainable: list[str]) -> None:
    """Make every adapter in ``active`` compute (deltas add up) and only ``trainable`` ones train.

    ``PeftModel.set_adapter`` takes one name and records it on the wrapper (which looks up its
    config by that name); the tuner's ``set_adapter`` takes a list, which is what the layers use.
    Both mark what they activate as trainable, so ``requires_grad`` is set last, explicitly.
    """
    model.set_adapter(active[-1])
    model.base_model.set_adapter(list(active))
    for name, params in adapters_parameters(model, list(model.peft_config)).items():
        for p in params.values():
            p.requires_grad_(name in trainable)


@contextlib.contextmanager
def base_model_only(model):
    """The base model alone (PEFT's ``disable_adapter``), leaving every ``requires_grad`` flag and
    the train/eval mode as they were (leaving the context re-marks active adapters trainable)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    model.eval()
    try:
        with model.disable_adapter():
            yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def require_lora(config, strategy: str) -> None:
    finetune = getattr(getattr(config, "model", None), "finetune", "lora")
    if finetune != "lora":
        raise ConfigError(f"config: model.finetune: strategy '{strategy}' trains one LoRA adapter "
                          f"per stage and needs 'lora', got {finetune!r}")


class StageAdapters(Strategy):
    """Base of the per-stage adapter strategies: adds ``stage<i>`` before stage *i* trains.

    Subclasses say which adapters compute while a stage trains (``training_active``) and between
    stages (``resting_active``); only the newest adapter ever trains. Where the frozen adapters
    simply add up while a stage trains (``stack_frozen``), each layer computes them and the new
    one in a single LoRA pass (``_stacked_lora``) instead of one pass per adapter.
    """

    requires_finetune = "lora"
    stack_frozen = False

    def __init__(self, options=None):
        super().__init__(options)
        # One entry per stage trained so far, in order: name, stage index, stage name, task id.
        self.adapters: list[dict[str, Any]] = []
        self._saved: dict[str, torch.Tensor] = {}  # adapter tensors held while there is no model
        self._lora = None  # the engine's LoRA config, copied for every new adapter
        self._engine_adapters: list[str] = []
        self._stacking = contextlib.ExitStack()

    # --- what subclasses decide -----------------------------------------------------------
    def training_active(self, new: str) -> list[str]:
        """Adapters that compute while ``new`` trains (``new`` last)."""
        raise NotImplementedError

    def resting_active(self) -> list[str]:
        """Adapters that compute between stages (after a resume)."""
        raise NotImplementedError

    # --- hooks ----------------------------------------------------------------------------
    def setup(self, ctx) -> None:
        super().setup(ctx)
        require_lora(ctx.config, self.name)
        model = ctx.model
        if not hasattr(model, "peft_config") or not hasattr(model, "add_adapter"):
            raise ConfigError(f"config: model.finetune: strategy '{self.name}' needs the model "
                              "wrapped by PEFT (finetune: lora)")
        owner = getattr(model, "_everlearn_adapter_owner", None)
        if owner is not None and owner != id(self):
            raise ConfigError(f"config: strategies: '{self.name}' and another per-stage adapter "
                              "strategy both manage the model's adapters; use one of them")
        model._everlearn_adapter_owner = id(self)
        self._engine_adapters = [n for n in model.peft_config if not self._ours(n)]
        self._lora = copy.deepcopy(model.peft_config[model.active_adapter])

    def before_stage(self, stage) -> None:
        name = adapter_name(stage.index)
        if name in self.names:  # a stage is trained once; never stack two adapters on it
            raise ResumeError(f"stage '{stage.name}': adapter {name} already exists")
        self._add(name)
        self.adapters.append({"name": name, "stage": stage.index, "stage_name": stage.name,
                              "task_id": stage.task_id or stage.name})
        active = self.training_active(name)
        arrange(self.model, active, [name])
        self._drop_engine_adapters()
        if self.stack_frozen and active[-1] == name:
            self._stacking.enter_context(stacked(self.model, active[:-1], name))

    def after_stage(self, stage) -> None:
        self._stacking.close()  # PEFT's own forward again, for evaluation and the next stage

    # --- state ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        meta = {"adapters": [dict(a) for a in self.adapters], **self.extra_meta()}
        return {"meta": meta, "tensors": {**self._adapter_tensors(), **self.extra_tensors()}}

    def load_state_dict(self, state) -> None:
        meta, tensors = state.get("meta", {}), state.get("tensors", {})
        self.adapters = [dict(a) for a in meta.get("adapters", [])]
        self._saved = {k: v for k, v in tensors.items() if k.startswith(TENSOR_PREFIX)}
        self.load_extra(meta, {k: v for k, v in tensors.items()
                               if not k.startswith(TENSOR_PREFIX)})
        if self.model is not None and self.adapters:
            self._rebuild()

    def extra_meta(self) -> dict[str, Any]:
        return {}

    def extra_tensors(self) -> dict[str, torch.Tensor]:
        return {}

    def load_extra(self, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        """Restore what ``extra_meta`` / ``extra_tensors`` returned."""

    # --- helpers --------------------------------------------------------------------------
    @property
    def model(self):
        return self.ctx.model if self.ctx is not None else None

    @property
    def names(self) -> list[str]:
        return [a["name"] for a in self.adapters]

    def _ours(self, name: str) -> bool:
        return name.startswith("stage") and name[5:].isdigit()

    def _add(self, name: str) -> None:
        # PEFT initialises lora_A from the global RNG: fork it, seeded by the run and the stage,
        # so the new adapter is the same in a resumed run and nothing else's randomness moves.
        index = int(name[5:])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(stable_seed(self.ctx.seed, index, self.name, "adapter"))
            self.model.add_adapter(name, copy.deepcopy(self._lora))

    def _drop_engine_adapters(self) -> None:
        for name in self._engine_adapters:
            if name in self.model.peft_config:
                self.model.delete_adapter(name)
        self._engine_adapters = []

    def _adapter_tensors(self) -> dict[str, torch.Tensor]:
        if self.model is None:
            return dict(self._saved)
        out = {}
        by_name = adapters_parameters(self.model, self.names)
        for name in self.names:
            for pname, p in by_name.get(name, {}).items():
                out[TENSOR_PREFIX + pname] = p.detach().cpu().clone().contiguous()
        return out

    def _rebuild(self) -> None:
        """Re-create every saved adapter and fill it, before the engine loads trainable weights."""
        model = self.model
        for name in self.names:
            if name not in model.peft_config:
                self._add(name)
        by_name = adapters_parameters(model, self.names)
        for name in self.names:
            params = by_name.get(name, {})
            with torch.no_grad():
                for pname, p in params.items():
                    saved = self._saved.get(TENSOR_PREFIX + pname)
                    if saved is None or saved.shape != p.shape:
                        raise ResumeError(f"strategy '{self.name}': adapter {name}: weight "
                                          f"'{pname}' missing from the saved state or reshaped")
                    p.copy_(saved)
        self._saved = {}
        arrange(model, self.resting_active(), [])
        self._drop_engine_adapters()

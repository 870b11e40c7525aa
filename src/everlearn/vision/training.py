"""Which parts of a vision-language model train in each phase, and which a checkpoint keeps.

LLaVA's recipe, per stage:

* an alignment stage (``freeze_lm: true``, on captions) trains the vision tower and the
  projector while the language model stays frozen (LLaVA freezes the tower too, but the
  default model's tower starts random and must learn to see);
* an instruction stage trains the language model (LoRA or every weight, ``model.finetune``) and
  the projector (``model.vision.train_projector``); the vision tower stays frozen unless
  ``model.vision.train_vision_tower`` is set.

Between phases a part is marked trainable (``requires_grad``) once some finished phase has
trained it, so the phase checkpoint (the trainable weights) holds every part that differs from
the base model, and a resumed run restores it; a part that never trains (a real LLaVA's CLIP
tower) never enters a checkpoint.
"""

from __future__ import annotations

from everlearn.errors import ConfigError, TrainingError
from everlearn.vision.parts import find_parts


class VisionTraining:
    """The per-phase policy for one model (see the module docs)."""

    def __init__(self, model, vision_cfg, phases: list[list]):
        parts = find_parts(model)
        if parts is None:
            raise ConfigError("model.name: a vision-language model without a recognisable "
                              "vision tower, projector and language model (expected "
                              "LLaVA-style module names)")
        self.parts = parts
        self.cfg = vision_cfg
        self.phases = phases
        self._tower = parts.tower_parameters()
        self._projector = parts.projector_parameters()
        self._vision_ids = {id(p) for p in self._tower + self._projector}
        self._held: list = []  # language-model weights frozen for an alignment phase

    def trains(self, stages) -> tuple[bool, bool, bool]:
        """(vision tower, projector, language model) train in a phase of ``stages``."""
        align = [st.freeze_lm for st in stages]
        if any(align) and not all(align):
            raise TrainingError(f"stages {', '.join(s.name for s in stages)}: an alignment "
                                "stage (freeze_lm) cannot train in one phase with other stages "
                                "(a strategy such as joint grouped them)")
        if all(align):
            return True, True, False
        return self.cfg.train_vision_tower, self.cfg.train_projector, True

    def begin_phase(self, model, stages) -> None:
        tower, projector, language = self.trains(stages)
        for p in self._tower:
            p.requires_grad_(tower)
        for p in self._projector:
            p.requires_grad_(projector)
        if not language:
            self._held = [p for p in model.parameters()
                          if p.requires_grad and id(p) not in self._vision_ids]
            for p in self._held:
                p.requires_grad_(False)

    def end_phase(self, phase: int) -> None:
        """After phase ``phase`` (1-based): language weights back, parts marked as trained."""
        for p in self._held:
            p.requires_grad_(True)
        self._held = []
        self.mark_trained(phase)

    def mark_trained(self, done: int) -> None:
        """Mark the parts trained by phases 1..``done`` trainable (what checkpoints keep)."""
        done_phases = [self.trains(stages) for stages in self.phases[:done]]
        tower = any(t for t, _, _ in done_phases)
        projector = any(p for _, p, _ in done_phases)
        for p in self._tower:
            p.requires_grad_(tower)
        for p in self._projector:
            p.requires_grad_(projector)


def plan_vision(model, cfg, stream, phases: list[list]) -> VisionTraining | None:
    """The per-phase policy of a vision-language model (None for a text model), after checking
    that a text model meets no image records and no alignment stage."""
    from everlearn.vision import is_vision_model

    if is_vision_model(model):
        vision = VisionTraining(model, cfg.model.vision, phases)
        for stages in phases:  # an alignment stage grouped with others fails here, not later
            vision.trains(stages)
        vision.mark_trained(0)
        return vision
    for st in stream.stages:
        if st.freeze_lm:
            raise ConfigError(f"stage '{st.name}': freeze_lm: an alignment stage needs a "
                              f"vision-language model; model.name '{cfg.model.name}' is a text "
                              "model (e.g. use smollm2-135m-llava)")
        if any(r.image for r in st.train + st.test):
            raise ConfigError(f"stage '{st.name}': its records carry images but model.name "
                              f"'{cfg.model.name}' is a text model; use a vision-language model "
                              "(e.g. smollm2-135m-llava, docs/multimodal.md)")
    return None

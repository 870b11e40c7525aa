"""`everlearn eval`: score a model, optionally with a stage checkpoint, on a stream.

A checkpoint directory (``RUN_DIR/checkpoints/phase-NN``) is restored the way ``--resume`` does
it: the run's strategies are rebuilt from the config and given their saved state first (they
may re-create adapters and route test records), then the trainable weights are loaded.
Preference accuracy (align stages) is scored against the base model as reference (a run scores
each stage against the model that entered it), so the base model alone scores 50. Edit
locality compares with the base model's predictions, as in a run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file

from everlearn.config import RunConfig
from everlearn.data.encoders import make_encoder
from everlearn.errors import ResumeError
from everlearn.evaluation.matrix import Evaluator
from everlearn.models.loading import (
    load_base_model,
    load_trainable_state,
    trainable_on_device,
)
from everlearn.parallel import distributed as dist
from everlearn.runs.run_dir import RunDir
from everlearn.runs.session import make_accelerator, routes, seed_everything
from everlearn.stages.stream import build_stream
from everlearn.strategies import build_strategy
from everlearn.strategies.base import RunContext
from everlearn.vision.training import plan_vision


def evaluate_config(cfg: RunConfig, weights: str | None = None, quiet: bool = False,
                    source: str = "config") -> dict[str, dict[str, Any]]:
    """{stage name: {metric, score, n}} for the configured model (plus checkpoint weights)."""
    stream = build_stream(cfg, source)
    seed_everything(cfg.seed)
    acc = make_accelerator(cfg.train.precision)
    with dist.main_first():  # several processes: rank 0 fills a model cache first
        model, tok = load_base_model(cfg.model, source)
    model = trainable_on_device(model, cfg.model, acc.device,
                                acc.mixed_precision == "bf16", source)
    encoder = make_encoder(tok, cfg.train.max_length, cfg.model.chat_template == "auto",
                           cfg.edit.format)
    plan_vision(model, cfg, stream, [])  # a text model refuses image records
    evaluator = Evaluator(acc, encoder, cfg.eval, quiet)
    evaluator.prepare_edits(model, stream.stages)  # edit locality: against the base model
    for st in stream:  # preference pairs are scored against the base model, scored here first
        if st.metric == "preference_accuracy" and weights is not None:
            evaluator.score(model, st)
    router = (load_weights(cfg, weights, model, encoder, stream, evaluator, acc, source)
              if weights is not None else None)
    out = {}
    for st in stream:
        s = evaluator.score(model, st, router)
        out[st.name] = {"metric": st.metric, "score": s.score, "n": s.n}
    return out


def load_weights(cfg: RunConfig, weights: str, model, encoder, stream, evaluator, acc,
                 source: str):
    """Load ``--weights`` into ``model``: a run's phase checkpoint (its strategies rebuilt
    and given their state first) or a bare trainable.safetensors; the strategies' router
    (None when they do not route)."""
    router = None
    path = Path(weights)
    if path.is_dir() and (path / "done.json").exists():
        strategy = build_strategy(cfg.strategies, source)
        strategy.setup(RunContext(model=model, tokenizer=encoder.tok, encoder=encoder,
                                  config=cfg, stream=stream, seed=cfg.seed, accelerator=acc))
        phase = json.loads((path / "done.json").read_text())["phase"]
        tensors, state = RunDir(path.parent.parent).load_phase(phase, need_weights=True)
        strategy.load_state_dict(state)
        router = strategy.route if routes(strategy) else None
        evaluator.activate = strategy.activate
    else:
        f = path / "trainable.safetensors" if path.is_dir() else path
        if not f.is_file():
            raise ResumeError(f"{weights}: trainable.safetensors: not found")
        try:
            tensors = load_file(f)
        except Exception as exc:  # safetensors raises its own errors on a damaged file
            raise ResumeError(f"{f}: not a valid safetensors checkpoint "
                              f"({type(exc).__name__})") from None
    load_trainable_state(model, tensors, str(path))
    return router

"""`everlearn eval`: score a model, optionally with a stage checkpoint's weights, on a stream."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safetensors.torch import load_file

from everlearn.config import RunConfig
from everlearn.data.encode import Encoder
from everlearn.errors import ResumeError
from everlearn.evaluate import Evaluator
from everlearn.models import load_base_model, load_trainable_state, make_trainable
from everlearn.runner import make_accelerator, seed_everything
from everlearn.stream import build_stream


def evaluate_config(cfg: RunConfig, weights: str | None = None, quiet: bool = False,
                    source: str = "config") -> dict[str, dict[str, Any]]:
    """{stage name: {metric, score, n}} for the configured model (plus checkpoint weights)."""
    stream = build_stream(cfg, source)
    seed_everything(cfg.seed)
    acc = make_accelerator(cfg.train.precision)
    model, tok = load_base_model(cfg.model)
    model = make_trainable(model, cfg.model)
    if weights is not None:
        path = Path(weights)
        f = path / "trainable.safetensors" if path.is_dir() else path
        if not f.is_file():
            raise ResumeError(f"{weights}: trainable.safetensors: not found")
        load_trainable_state(model, load_file(f), str(f))
    model.to(acc.device)
    evaluator = Evaluator(acc, Encoder(tok, cfg.train.max_length,
                                       cfg.model.chat_template == "auto"), cfg.eval, quiet)
    out = {}
    for st in stream:
        s = evaluator.score(model, st)
        out[st.name] = {"metric": st.metric, "score": s.score, "n": s.n}
    return out

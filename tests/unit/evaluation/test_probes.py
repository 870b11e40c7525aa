"""General-ability probes (``evaluation.probes``): zero drift for an unchanged model, and the
results sections and their round trip."""

from __future__ import annotations

import json

from everlearn.config import EvalConfig
from everlearn.data.encode import Encoder
from everlearn.evaluation.matrix import Evaluator
from everlearn.evaluation.probes import (
    CACHE_FILE,
    GENERAL_PROMPTS,
    LABELLED_QUESTIONS,
    GeneralProbes,
    general_sections,
    rows_from_results,
)
from everlearn.models.loading import build_tiny_model, build_tiny_tokenizer
from everlearn.runs.session import make_accelerator


def _probes(tmp_path, model, tok):
    acc = make_accelerator("fp32")
    cfg = EvalConfig(batch_size=16, general_probes=["kl", "labelled"], general_max_new_tokens=6)
    encoder = Encoder(tok, 64)
    return GeneralProbes.prepare(cfg, tmp_path, model, encoder,
                                 Evaluator(acc, encoder, cfg, quiet=True), acc)


def test_unchanged_model_has_zero_kl_and_full_agreement(tmp_path):
    tok = build_tiny_tokenizer()
    model = build_tiny_model(tok)
    probes = _probes(tmp_path, model, tok)
    cache = json.loads((tmp_path / CACHE_FILE).read_text())
    assert len(cache["kl"]["answers"]) == len(GENERAL_PROMPTS) == 48
    assert cache["labelled"]["kept"] == probes.kept
    assert all(0 <= i < len(LABELLED_QUESTIONS) for i in probes.kept)
    out = probes.measure(model)
    assert out["kl"] == 0.0 and out["agreement"] == 100.0
    assert out["labelled"] == (100.0 if probes.kept else None)  # kept = answered correctly
    info = probes.info()
    assert info["kl_prompts"] == 48 and info["kl_tokens"] >= 48  # >= one position per prompt
    # a changed model drifts: KL grows from zero
    import torch
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    assert probes.measure(model)["kl"] > 0.0


def test_sections_and_their_round_trip():
    rows = [{"kl": 0.0, "agreement": 100.0, "labelled": 100.0},
            {"kl": 0.25, "agreement": 75.0, "labelled": 90.0},
            {"kl": 0.5, "agreement": 50.0, "labelled": None}]
    info = {"kl_prompts": 48, "kl_tokens": 300, "labelled_kept": 10, "labelled_total": 40}
    out = general_sections(rows, info)
    assert out["general"]["agreement"] == {"scores": [100.0, 75.0, 50.0],
                                           "delta": [0.0, -25.0, -50.0], "n": 48}
    assert out["general"]["labelled"]["delta"] == [0.0, -10.0, None]
    assert out["general"]["labelled"]["n"] == 10 and out["general"]["labelled"]["total"] == 40
    assert out["general_kl"]["scores"] == [0.0, 0.25, 0.5]
    assert rows_from_results(out, 2) == rows[:2]

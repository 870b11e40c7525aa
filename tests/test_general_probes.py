"""General-ability probes: zero drift for an unchanged model, drift after training, the results
sections, and a resumed run that reuses the cached base answers instead of recomputing them."""

from __future__ import annotations

import json

import pytest

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
from everlearn.report.tables import format_summary
from everlearn.runs.runner import resume_run, start_run
from everlearn.runs.session import make_accelerator
from everlearn.validation import build_config
from tests.conftest import killed_at_phase, tiny_config

PROBES = {"batch_size": 16, "max_new_tokens": 8, "general_probes": ["kl", "labelled"],
          "general_max_new_tokens": 6}


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


def _run(tmp_path, stages, name):
    cfg = build_config(tiny_config(tmp_path, stages, eval=dict(PROBES)))
    return start_run(cfg, tmp_path / name, quiet=True)


def test_training_moves_the_model_away_from_the_base(tmp_path, three_stages):
    _, res = _run(tmp_path, three_stages[:1], "one")
    kl = res["general_kl"]["scores"]
    assert kl[0] == 0.0 and kl[1] > 0.0
    agreement = res["general"]["agreement"]
    assert agreement["scores"][0] == 100.0 and agreement["delta"][0] == 0.0
    assert agreement["delta"][1] == pytest.approx(agreement["scores"][1] - 100.0)
    labelled = res["general"]["labelled"]
    assert labelled["total"] == len(LABELLED_QUESTIONS)
    if labelled["n"]:
        assert labelled["scores"][0] == 100.0
    text = format_summary(res)
    assert "General ability against the base model" in text and "KL(base||cur)" in text


def test_resume_reuses_the_cached_probe_answers(tmp_path, three_stages, monkeypatch):
    stages = three_stages[:2]
    _, full = _run(tmp_path, stages, "full")

    with killed_at_phase(monkeypatch, 2):
        _run(tmp_path, stages, "crashed")
    cache = tmp_path / "crashed" / CACHE_FILE
    before = cache.read_text()

    def must_not_run(*args, **kwargs):
        raise AssertionError("the base answers were recomputed instead of read from the cache")

    monkeypatch.setattr(GeneralProbes, "base_answers", must_not_run)
    monkeypatch.setattr(GeneralProbes, "base_correct", must_not_run)
    _, resumed = resume_run(tmp_path / "crashed", quiet=True)
    assert cache.read_text() == before
    assert resumed["general"] == full["general"]
    assert resumed["general_kl"] == full["general_kl"]

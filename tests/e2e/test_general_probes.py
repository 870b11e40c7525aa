"""General-ability probes in runs: drift after training, and a resumed run that reuses the cached
base answers instead of recomputing them."""

from __future__ import annotations

import pytest

from everlearn.evaluation.probes import CACHE_FILE, LABELLED_QUESTIONS, GeneralProbes
from everlearn.report.tables import format_summary
from everlearn.runs.runner import resume_run, start_run
from everlearn.validation import build_config
from tests.conftest import killed_at_phase, tiny_config

PROBES = {"batch_size": 16, "max_new_tokens": 8, "general_probes": ["kl", "labelled"],
          "general_max_new_tokens": 6}


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

"""Text streams in runs on the tiny model: fixed boundaries, detector boundaries at the shifts,
resume, and the budget."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from everlearn.report.tables import format_summary
from everlearn.runs.runner import Run, resume_run, start_run
from everlearn.validation import build_config
from tests.conftest import killed_at_phase
from tests.helpers.crash_resume import comparable
from tests.helpers.text_stream import stream_config


def test_fixed_boundaries_fall_every_n_tokens_and_strategies_act_there(tmp_path):
    cfg = stream_config(tmp_path, {"mode": "fixed", "every_tokens": 5120},
                        strategies=[{"name": "ewc", "ewc_lambda": 10.0, "fisher_samples": 4}])
    run = Run(build_config(cfg), tmp_path / "run", quiet=True)
    res = run.execute()
    ts = res["text_stream"]
    total = ts["tokens"]
    assert total > 20000 and ts["chunk_tokens"] == 256 and ts["block_tokens"] == 64
    assert [b["position"] for b in ts["boundaries"]] == list(range(5120, total, 5120))
    assert {b["reason"] for b in ts["boundaries"]} == {"fixed"}
    segments = ts["segments"]
    assert segments[-1]["end"] == total and segments[-1]["reason"] == "end"
    assert all(a["end"] == b["start"] for a, b in zip(segments, segments[1:]))
    # one row of R per segment; every stage (domain) is a column
    assert len(res["R"]) == len(segments) + 1 == len(res["rows"])
    assert res["rows"][1:] == [s["name"] for s in segments]
    # the true shifts are where the digits and the second words start
    assert ts["shifts"] == [d["start"] for d in ts["domains"][1:]]
    # EWC consolidated at every boundary (not after the last segment)
    ewc = run.strategy.members[0]
    assert [idx for idx, _, _ in ewc.terms] == list(range(1, len(segments)))
    # each segment trained its own tokens once
    assert sum(c["tokens_trained"] for c in res["cost"]) == total
    # AdamW's state went on over the boundaries: its step count is the whole stream's; only
    # the last phase keeps it (with its weights: keep_stage_weights is "last" for full)
    last = run.dir.phase_dir(len(segments))
    moments = load_file(last / "optimizer.safetensors")
    steps = {float(v) for k, v in moments.items() if k.endswith("/step")}
    assert steps == {float(sum(c["steps"] for c in res["cost"]))}
    assert not (run.dir.phase_dir(1) / "optimizer.safetensors").exists()
    # digits are learned while the stream is on them: its perplexity falls below base
    digits = next(p for p in ts["per_stage"] if p["name"] == "digits")
    assert digits["after"] < digits["base"] / 5
    assert res["metrics"]["perplexity"]["stages"] == ["words", "digits", "words2"]
    text = format_summary(res)
    assert "fixed, every 5,120 tokens" in text and "true shifts: " in text


def test_detector_places_boundaries_at_the_shifts(tmp_path):
    # threshold 8, not the default 5: the detector reads the loss of the mixed batch, and the
    # replayed blocks made the stationary words2 part reach 5.07 on AVX-512 kernels (4.2 on
    # AVX2); the two real shifts score 17-22, so 8 leaves room on both sides.
    cfg = stream_config(tmp_path, {"mode": "detector", "threshold": 8.0},
                        strategies=[{"name": "replay", "buffer_size": 40, "mix_ratio": 0.2}])
    path, res = start_run(build_config(cfg), tmp_path / "run", quiet=True)
    ts = res["text_stream"]
    shifts = ts["shifts"]
    assert len(shifts) == 2
    boundaries = [b["position"] for b in ts["boundaries"]]
    assert {b["reason"] for b in ts["boundaries"]} == {"detector"}
    # one boundary near each shift (within two chunks), none in the stationary parts
    assert len(boundaries) == 2
    for b, s in zip(boundaries, shifts):
        assert -ts["chunk_tokens"] < b - s <= 2 * ts["chunk_tokens"], (b, s)
    assert ts["detection"]["missed"] == 0 and ts["detection"]["false_alarms"] == 0
    # the detector's trace: the chunk it fired on is where the next segment starts
    last = ts["segments"][0]["detector_trace"][-1]
    assert last[0] == boundaries[0] and last[3] > 5.0
    # replay mixed earlier blocks into later segments: more tokens trained than the stream
    assert sum(c["tokens_trained"] for c in res["cost"]) > ts["tokens"]
    text = format_summary(res)
    assert "detector: found 2 of 2 shifts" in text and "0 false alarm" in text
    from everlearn.report import write_report

    page = write_report(path).read_text()
    assert 'class="text-stream"' in page and "true shift at token" in page


def test_resumed_detector_stream_equals_uninterrupted(tmp_path, monkeypatch):
    cfg = stream_config(tmp_path, "detector", budget=16000)
    _, full = start_run(build_config(cfg), tmp_path / "full", quiet=True)
    assert len(full["text_stream"]["segments"]) == 3
    with killed_at_phase(monkeypatch, 2):
        start_run(build_config(cfg), tmp_path / "cut", quiet=True)
    partial = json.loads((tmp_path / "cut" / "results.json").read_text())
    assert partial["status"] == "running" and len(partial["text_stream"]["segments"]) == 1
    _, resumed = resume_run(tmp_path / "cut", quiet=True)
    assert comparable(resumed) == comparable(full)


def test_boundaries_change_nothing_for_seqft(tmp_path):
    """Training does not notice a boundary (one learning-rate schedule, AdamW's state carried
    over): seqft with fixed boundaries ends where seqft without any does."""
    results = []
    for mode in ({"mode": "fixed", "every_tokens": 1280}, "none"):
        cfg = stream_config(tmp_path, mode, budget=6000)
        cfg["train"].update(warmup_ratio=0.2, schedule="cosine")
        _, res = start_run(build_config(cfg), tmp_path / f"run-{len(results)}", quiet=True)
        results.append(res)
    fixed, none = results
    assert len(fixed["R"]) == 6 and len(none["R"]) == 2
    assert fixed["R"][-1] == pytest.approx(none["R"][-1], rel=1e-5)


def test_budget_cuts_the_stream_and_none_mode_makes_one_segment(tmp_path):
    cfg = stream_config(tmp_path, "none", budget=9000)
    run = Run(build_config(cfg), tmp_path / "run", quiet=True)
    res = run.execute()
    ts = res["text_stream"]
    assert ts["tokens"] == 9000 and ts["boundaries"] == []
    assert [s["reason"] for s in ts["segments"]] == ["end"]
    assert ts["domains"][2]["start"] == ts["domains"][2]["end"] == 9000  # never reached
    assert len(ts["shifts"]) == 1 and len(res["R"]) == 2
    assert ts["per_stage"][2]["after"] is None

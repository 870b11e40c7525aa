"""A stream without task boundaries (everlearn.training.textstream): fixed boundaries, the shift
detector,
the stream's metrics, and whole runs on the tiny model."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from safetensors.torch import load_file

from everlearn.errors import ConfigError
from everlearn.evaluation.metrics import summarize_stream
from everlearn.report.tables import format_summary
from everlearn.runs.runner import Run, resume_run, start_run
from everlearn.training.textstream import ShiftDetector, match_shifts
from everlearn.validation import build_config, load_config
from tests.conftest import killed_at_phase, tiny_config, write_jsonl
from tests.test_crash_resume import comparable

# --- the detector, by hand -----------------------------------------------------------------


def test_detector_fires_on_a_hand_computed_rise():
    d = ShiftDetector(window=3, threshold=2.0, drift=0.5, min_std=0.1)
    assert [d.update(x) for x in (1.0, 1.0, 1.0)] == [False] * 3  # filling the window
    assert d.z is None and d.score == 0.0
    assert not d.update(1.0)  # z = 0 / 0.1 (sd floored) = 0; S = max(0, 0 - 0.5) = 0
    assert d.z == 0.0 and d.score == 0.0
    assert d.update(1.3)  # z = (1.3 - 1.0) / 0.1 = 3; S = 0 + 3 - 0.5 = 2.5 > 2
    assert d.z == pytest.approx(3.0) and d.score == pytest.approx(2.5)


def test_detector_sums_evidence_over_chunks():
    d = ShiftDetector(window=4, threshold=1.8, drift=0.5, min_std=0.01)
    for x in (1.0, 1.2, 1.0, 1.2):
        d.update(x)
    # mu = 1.1, sd = 0.1: z = 1.5, S = 1.0 (below 1.8)
    assert not d.update(1.25)
    assert d.z == pytest.approx(1.5) and d.score == pytest.approx(1.0)
    # window 1.2, 1.0, 1.2, 1.25: mu = 1.1625, sd = sqrt(0.036875 / 4) = 0.0960143
    # z = 0.1375 / 0.0960143 = 1.43208, S = 1.0 + 1.43208 - 0.5 = 1.93208 > 1.8
    assert d.update(1.3)
    assert d.z == pytest.approx(1.43208, abs=1e-4)
    assert d.score == pytest.approx(1.93208, abs=1e-4)


def test_detector_both_directions_fires_on_a_sudden_fall():
    up = ShiftDetector(window=3, threshold=2.0, drift=0.5, min_std=0.1)
    both = ShiftDetector(window=3, threshold=2.0, drift=0.5, min_std=0.1, direction="both")
    for d in (up, both):
        for x in (2.0, 2.0, 2.0):
            d.update(x)
    # z = (1.7 - 2.0) / 0.1 = -3: S stays 0, D = 0 + 3 - 0.5 = 2.5 > 2
    assert not up.update(1.7) and up.score == 0.0
    assert both.update(1.7) and both.score_down == pytest.approx(2.5)


def test_detector_ignores_noise_on_a_flat_loss_and_a_falling_one():
    flat = ShiftDetector(window=4, threshold=5.0, drift=0.5, min_std=0.05)
    for x in (2.0, 2.0, 2.0, 2.0):
        flat.update(x)
    assert not flat.update(2.01)  # z = 0.01 / 0.05 (floor) = 0.2
    assert flat.z == pytest.approx(0.2)
    falling = ShiftDetector()
    assert not any(falling.update(5.0 * 0.97 ** t) for t in range(200))
    falling.reset()
    assert falling.score == 0.0 and not falling.ref


def test_detector_finds_a_simulated_switch_and_only_it():
    """Chunk losses from one distribution then another (gaussian noise), three times over: the
    detector, reset at each boundary as the run does, fires within three chunks of each switch
    and never in the stationary parts."""
    rng = random.Random(0)
    levels = [2.0, 2.6, 2.0, 2.6]
    losses = [rng.gauss(level, 0.05) for level in levels for _ in range(60)]
    d, fired = ShiftDetector(), []
    for t, x in enumerate(losses):
        if d.update(x):
            fired.append(t)
            d.reset()
            d.update(x)  # the chunk it fired on starts the next segment
    # downward switches (2.6 -> 2.0) are not shifts this test looks for: the loss falls
    assert fired[0] in range(60, 63) and fired[1] in range(180, 183)
    assert len(fired) == 2


def test_match_shifts_counts_hits_delays_misses_and_false_alarms():
    got = match_shifts([1000, 3000, 5000], [900, 2000, 3100, 3200], chunk_tokens=256)
    assert [f["boundary"] for f in got["shifts"]] == [900, 3100, None]
    assert [f["delay_tokens"] for f in got["shifts"]] == [-100, 100, None]
    assert got["missed"] == 1 and got["false_alarms"] == 2  # 2000 and 3200
    assert match_shifts([], [500], 256)["false_alarms"] == 1


def test_stream_metrics_by_hand():
    # 3 rows after the base (boundaries), 2 stages; stage 0 trained at row 1, stage 1 at row 3
    R = [[50.0, 40.0], [80.0, 42.0], [70.0, 60.0], [60.0, 90.0]]
    m = summarize_stream(R, [0, 1], trained_rows=[1, 3], before_rows=[0, 2])
    assert m["ap"] == [80.0, 70.0, 75.0] and m["final_ap"] == 75.0
    assert m["la"] == pytest.approx((80 + 90) / 2)
    assert m["bwt"] == pytest.approx(60 - 80)  # only stage 0 was trained before the last row
    assert m["bwt_trace"] == pytest.approx((60 - 80) / 2)
    assert m["forgetting"] == pytest.approx(max(80 - 60, 70 - 60))
    assert m["fwt"] == pytest.approx(60 - 40)  # stage 1 before training (row 2) vs base
    ppl = summarize_stream(R, [0], [1, 3], [0, 2], higher_is_better=False)
    assert ppl["bwt"] == pytest.approx(-(60 - 80)) and ppl["final_ap"] == 60.0


# --- whole runs on the tiny model -----------------------------------------------------------

WORDS = "the cat sat on a mat and the dog ran to the red barn while birds sang".split()


def _words(rng: random.Random, n: int) -> list[dict]:
    return [{"text": " ".join(rng.choice(WORDS) for _ in range(30))} for _ in range(n)]


def _digits(rng: random.Random, n: int) -> list[dict]:
    return [{"text": " ".join(str(rng.randrange(1000, 9999)) for _ in range(25))}
            for _ in range(n)]


def _domain(tmp: Path, name: str, make, n: int = 60) -> dict:
    rng = random.Random(name)
    return {"name": name, "kind": "cpt",
            "train": str(write_jsonl(tmp / f"{name}_train.jsonl", make(rng, n))),
            "test": str(write_jsonl(tmp / f"{name}_test.jsonl", make(rng, 6)))}


def stream_config(tmp: Path, boundaries, budget: int | None = None, **overrides) -> dict:
    """Words, then digits, then words again (two clearly different byte distributions), about
    7,400 tokens each for the byte-level tiny model; chunks of 4 x 64 tokens."""
    stages = [_domain(tmp, "words", _words), _domain(tmp, "digits", _digits),
              _domain(tmp, "words2", _words)]
    cfg = tiny_config(tmp, stages, text_stream={"boundaries": boundaries,
                                                "token_budget": budget}, **overrides)
    cfg["train"].update(batch_size=4)
    return cfg


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


@pytest.mark.parametrize("change, where", [
    ({"text_stream": {"boundaries": {"mode": "fixed"}}}, "text_stream.boundaries.every_tokens"),
    ({"text_stream": {"boundaries": {"mode": "fixed", "every_tokens": 100}}},
     "text_stream.boundaries.every_tokens"),
    ({"text_stream": {"boundaries": {"mode": "detector", "every_tokens": 128}}},
     "text_stream.boundaries.every_tokens"),
    ({"text_stream": {"boundaries": {"mode": "sometimes"}}}, "text_stream.boundaries.mode"),
    ({"text_stream": {"boundaries": {"mode": "detector", "window": 1}}},
     "text_stream.boundaries.window"),
    ({"text_stream": {"boundaries": {"windw": 4}}}, "text_stream.boundaries.windw"),
    ({"text_stream": {"token_budget": 1, "boundaries": "none"}}, "text_stream.token_budget"),
    ({"eval": {"every": 2}}, "eval.every"),
    ({"train": {"checkpoint_every": 5}}, "train.checkpoint_every"),
    ({"stage_steps": 5}, "stages.1.steps"),
    ({"sft_stage": True}, "stages.1.kind"),
])
def test_bad_text_stream_config_names_file_and_field(tmp_path, change, where):
    cfg = stream_config(tmp_path, "detector")
    if change.pop("stage_steps", None):
        cfg["stages"][1]["steps"] = 5
    if change.pop("sft_stage", None):
        cfg["stages"][1]["kind"] = "sft"
    cfg.update(change)
    path = tmp_path / "bad.yaml"
    import yaml

    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert message.startswith(f"{path}: {where}:") and "\n" not in message


def test_joint_is_refused_in_a_text_stream(tmp_path):
    cfg = stream_config(tmp_path, "none", strategies=["joint"])
    with pytest.raises(ConfigError, match="strategies: 'joint' groups stages"):
        Run(build_config(cfg, "stream.yaml"), tmp_path / "run", quiet=True,
            source="stream.yaml")


def test_text_stream_is_refused_under_fsdp(tmp_path, monkeypatch):
    from everlearn.parallel import fsdp

    monkeypatch.setattr(fsdp, "requested", lambda: True)
    cfg = stream_config(tmp_path, "none")
    with pytest.raises(ConfigError, match="stream.yaml: text_stream: not supported under FSDP"):
        Run(build_config(cfg, "stream.yaml"), tmp_path / "run", quiet=True,
            source="stream.yaml")

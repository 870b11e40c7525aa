"""A stream without task boundaries (``training.textstream``): the shift detector, matching
shifts, and bad text-stream configs."""

from __future__ import annotations

import random

import pytest

from everlearn.errors import ConfigError
from everlearn.runs.runner import Run
from everlearn.training.textstream import ShiftDetector, match_shifts
from everlearn.validation import build_config, load_config
from tests.helpers.text_stream import stream_config


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

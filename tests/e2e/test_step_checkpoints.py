"""Step checkpoints: a phase stopped mid-way resumes from its latest saved step and ends with
the results of an uninterrupted run, for strategies whose state moves during a stage."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest

from everlearn.cli import _interrupt
from everlearn.runs.runner import resume_run, start_run
from everlearn.runs.tracking import Tracker
from everlearn.validation import build_config
from tests.conftest import constant_task, tiny_config
from tests.helpers.crash_resume import comparable

STEPS = 12  # per stage; the crash comes at step 6 of phase 2

STRATEGIES = {
    # LoRA dropout: training draws from torch's RNG, so the restored RNG state matters
    "seqft": [],
    "replay": [{"name": "replay", "buffer_size": 12, "mix_ratio": 0.25}],
    "ewc": [{"name": "ewc", "ewc_lambda": 100.0, "fisher_samples": 8}],
    "der": [{"name": "der", "buffer_size": 12}],  # draws buffer batches every step
    "agem": [{"name": "agem", "memory_size": 12}],  # draws and counts projections every step
}


def two_stage_config(tmp: Path, strategy: str, every: int) -> dict:
    stages = [constant_task(tmp, "red", "alpha"), constant_task(tmp, "green", "bravo")]
    cfg = tiny_config(tmp, stages, strategies=STRATEGIES[strategy])
    # a warm-up and a decay: the schedule's position matters too
    cfg["train"].update(steps=STEPS, checkpoint_every=every, schedule="cosine",
                        warmup_ratio=0.25)
    if strategy == "seqft":  # LoRA dropout: training draws from torch's RNG
        cfg["model"] = {"name": "tiny-llama", "finetune": "lora",
                        "lora": {"r": 4, "dropout": 0.1}}
        cfg["train"]["lr"] = 1e-2
    return cfg


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """uninterrupted(strategy) -> (its config, the results of its uninterrupted run), run
    once per strategy for the module (checkpoint_every does not change results)."""
    data = tmp_path_factory.mktemp("data")
    cache: dict[str, tuple[dict, dict]] = {}

    def get(strategy: str) -> tuple[dict, dict]:
        if strategy not in cache:
            cfg = two_stage_config(data, strategy, every=2)
            run = tmp_path_factory.mktemp(f"full-{strategy}")
            _, full = start_run(build_config(cfg), run, quiet=True)
            assert step_dirs(run) == []  # a finished phase drops its step checkpoints
            cache[strategy] = cfg, full
        return cache[strategy]
    return get


@pytest.fixture
def stop_at(monkeypatch):
    """stop_at(step, action): run ``action`` right after the run's global optimizer step
    ``step`` (phase 2 starts after step STEPS)."""
    def install(at: int, action):
        original = Tracker.on_step

        def on_step(self, loss, lr):
            original(self, loss, lr)
            if self.step == at:
                action()

        monkeypatch.setattr(Tracker, "on_step", on_step)
        return lambda: monkeypatch.setattr(Tracker, "on_step", original)
    return install


def crash():
    raise KeyboardInterrupt  # a killed run seen from the inside: nothing more is written


def step_dirs(run: Path) -> list[str]:
    steps = run / "checkpoints" / "steps"
    return sorted(p.name for p in steps.iterdir()) if steps.exists() else []


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_resume_from_a_step_checkpoint_equals_uninterrupted(tmp_path, uninterrupted, stop_at,
                                                            strategy):
    cfg, full = uninterrupted(strategy)

    restore = stop_at(STEPS + 6, crash)  # after step 6 of phase 2, before its checkpoint
    with pytest.raises(KeyboardInterrupt):
        start_run(build_config(cfg), tmp_path / "cut", quiet=True)
    restore()
    assert step_dirs(tmp_path / "cut") == ["phase-02-step-000004"]  # 2 deleted: latest only
    # a newer one killed while being written (no done.json yet) is passed over
    steps = tmp_path / "cut" / "checkpoints" / "steps"
    shutil.copytree(steps / "phase-02-step-000004", steps / "phase-02-step-000006")
    (steps / "phase-02-step-000006" / "done.json").unlink()

    _, resumed = resume_run(tmp_path / "cut", quiet=True)
    log = (tmp_path / "cut" / "log.txt").read_text()
    assert "phase-02-step-000006: done.json: missing" in log
    assert "resumed phase 2 at step 4 of 12" in log
    assert comparable(resumed) == comparable(full)
    assert not (tmp_path / "cut" / "checkpoints" / "steps").exists()


def test_a_corrupt_step_checkpoint_falls_back_to_the_stage_checkpoint(tmp_path, uninterrupted,
                                                                       stop_at):
    cfg, full = uninterrupted("replay")
    restore = stop_at(STEPS + 6, crash)
    with pytest.raises(KeyboardInterrupt):
        start_run(build_config(cfg), tmp_path / "cut", quiet=True)
    restore()
    ckpt = tmp_path / "cut" / "checkpoints" / "steps" / "phase-02-step-000004"
    tensors = ckpt / "state.safetensors"
    data = bytearray(tensors.read_bytes())
    data[-1] ^= 0x01  # one flipped bit in the last tensor's data
    tensors.write_bytes(bytes(data))

    _, resumed = resume_run(tmp_path / "cut", quiet=True)
    log = (tmp_path / "cut" / "log.txt").read_text()
    assert f"{tensors}: checksum mismatch" in log and "falling back to the stage checkpoint" in log
    assert "resumed phase 2 at step" not in log  # phase 2 trained again from its start
    assert comparable(resumed) == comparable(full)


def test_sigterm_during_training_writes_a_step_checkpoint(tmp_path, uninterrupted, stop_at):
    """checkpoint_every 0: no periodic checkpoints, but a signal still saves the step."""
    cfg, full = uninterrupted("der")
    cfg = {**cfg, "train": {**cfg["train"], "checkpoint_every": 0}}
    previous = signal.signal(signal.SIGTERM, _interrupt)  # what the CLI installs
    try:
        restore = stop_at(STEPS + 5, lambda: os.kill(os.getpid(), signal.SIGTERM))
        with pytest.raises(KeyboardInterrupt):
            start_run(build_config(cfg), tmp_path / "termed", quiet=True)
        restore()
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert signal.getsignal(signal.SIGTERM) is previous  # the trainer put its handler back
    run = tmp_path / "termed"
    assert step_dirs(run) == ["phase-02-step-000005"]  # the step the signal arrived in
    done = json.loads((run / "checkpoints/steps/phase-02-step-000005/done.json").read_text())
    assert set(done["files"]) == {"state.safetensors", "state.json"}
    assert "phase 2: interrupted after step 5 of 12" in (run / "log.txt").read_text()
    _, resumed = resume_run(run, quiet=True)
    assert comparable(resumed) == comparable(full)


def test_a_step_checkpoint_that_cannot_be_written_does_not_stop_the_run(tmp_path, monkeypatch):
    from everlearn.runs.run_dir import RunDir

    def full_disk(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(RunDir, "save_step", full_disk)
    cfg = tiny_config(tmp_path, [constant_task(tmp_path, "red", "alpha")])
    cfg["train"].update(steps=4, checkpoint_every=2)
    _, results = start_run(build_config(cfg), tmp_path / "run", quiet=True)
    assert results["status"] == "complete"
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "phase 1: step 2: step checkpoint not written: [Errno 28] No space left" in log

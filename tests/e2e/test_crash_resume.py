"""A run killed with SIGKILL at any moment resumes to the results of an uninterrupted run
(from a stage checkpoint, or mid-stage from a step checkpoint), a SIGTERM saves the step in
progress, and the same config and seed give the same results twice."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from everlearn.errors import ResumeError
from everlearn.runs.runner import resume_run, start_run
from everlearn.validation import build_config
from tests.conftest import killed_at_phase, tiny_config
from tests.helpers.crash_resume import comparable


@pytest.fixture
def replay_config(tmp_path, three_stages) -> dict:
    return tiny_config(tmp_path, three_stages, strategies=[
        {"name": "replay", "buffer_size": 12, "mix_ratio": 0.25}])


def test_same_config_and_seed_give_identical_results(tmp_path, replay_config):
    _, first = start_run(build_config(replay_config), tmp_path / "a", quiet=True)
    _, second = start_run(build_config(replay_config), tmp_path / "b", quiet=True)
    assert comparable(first) == comparable(second)
    on_disk = json.loads((tmp_path / "b" / "results.json").read_text())
    assert comparable(on_disk) == comparable(second)


def _exists(path: Path):
    return lambda run: (run / path).exists()


def _step_checkpoint(phase: int):
    """Whether a complete step checkpoint of ``phase`` exists (its done.json is written last)."""
    return lambda run: any((run / "checkpoints" / "steps").glob(
        f"phase-{phase:02d}-step-*/done.json"))


# Moments to kill at: before the base row is written, in the middle of the second phase's
# training (after its first step checkpoint, which the resume continues from; the step
# checkpoint being written next may be cut half-way), and right after the second phase's
# checkpoint (before or after results.json).
KILL_POINTS = {
    "at_start": lambda run: (run / "config.yaml").exists(),
    "mid_phase_2": _step_checkpoint(2),
    "after_phase_2_checkpoint": _exists(Path("checkpoints/phase-02/done.json")),
}


def kill_when(cmd: list[str], run: Path, ready, delay: float, timeout: float = 120) -> bool:
    """Start ``cmd``; SIGKILL it ``delay`` s after ``ready(run)`` holds. False if it finished."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    while not ready(run):
        if proc.poll() is not None:
            raise AssertionError(f"run ended before the kill point: {proc.stderr.read()!r}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("kill point never reached")
        time.sleep(0.01)
    time.sleep(delay)
    finished = proc.poll() is not None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return not finished


@pytest.mark.parametrize("point, delay", [("at_start", 0.0), ("mid_phase_2", 0.05),
                                          ("after_phase_2_checkpoint", 0.0)])
def test_kill_9_then_resume_equals_uninterrupted(tmp_path, replay_config, point, delay):
    replay_config["train"]["checkpoint_every"] = 4
    if point == "mid_phase_2":
        replay_config["stages"][1]["steps"] = 40  # a longer phase 2: time to kill inside it
    _, full = start_run(build_config(replay_config), tmp_path / "full", quiet=True)
    cfg_file = tmp_path / "stream.yaml"
    cfg_file.write_text(yaml.safe_dump(replay_config))
    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "everlearn", "run", str(cfg_file), "--output", str(run), "-q"]
    assert kill_when(cmd, run, KILL_POINTS[point], delay), "the run finished before the kill"
    before = json.loads((run / "results.json").read_text()) if (
        run / "results.json").exists() else None
    assert before is None or before["status"] == "running"
    _, resumed = resume_run(run, quiet=True)
    assert comparable(resumed) == comparable(full)
    if before is not None:  # rows written before the kill are kept as they were
        assert resumed["R"][:len(before["R"])] == before["R"]
    if point == "mid_phase_2":  # the phase went on from a step checkpoint, not from its start
        assert "resumed phase 2 at step " in (run / "log.txt").read_text()


def test_sigterm_exits_cleanly_and_the_run_resumes(tmp_path, replay_config):
    """SIGTERM in the middle of phase 2 (after its first periodic step checkpoint): the step in
    progress finishes, a step checkpoint is written, the exit status is 130, and the resumed
    run continues from that step to the uninterrupted results."""
    replay_config["train"]["checkpoint_every"] = 4
    replay_config["stages"][1]["steps"] = 40
    cfg_file = tmp_path / "stream.yaml"
    cfg_file.write_text(yaml.safe_dump(replay_config))
    run = tmp_path / "termed"
    cmd = [sys.executable, "-m", "everlearn", "run", str(cfg_file), "--output", str(run), "-q"]
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not _step_checkpoint(2)(run):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("everlearn: interrupted")
    assert "Traceback" not in err
    log = (run / "log.txt").read_text()
    stopped = re.search(r"phase 2: interrupted after step (\d+) of 40; step checkpoint written",
                        log)
    assert stopped, log
    step = int(stopped[1])
    assert [p.name for p in (run / "checkpoints" / "steps").iterdir()] == [
        f"phase-02-step-{step:06d}"]
    _, full = start_run(build_config(replay_config), tmp_path / "full", quiet=True)
    _, resumed = resume_run(run, quiet=True)
    assert f"resumed phase 2 at step {step} of 40" in (run / "log.txt").read_text()
    assert comparable(resumed) == comparable(full)


@pytest.mark.parametrize(("field", "edit"), [
    ("train.lr", lambda c: c["train"].update(lr=c["train"]["lr"] * 10)),
    ("seed", lambda c: c.update(seed=7)),
    ("stages.0.test.path", lambda c: c["stages"][0].update(test=c["stages"][1]["test"])),
])
def test_resume_refuses_a_config_edited_since_the_run_started(tmp_path, monkeypatch,
                                                               replay_config, field, edit):
    run = tmp_path / "run"
    with killed_at_phase(monkeypatch, 3):
        start_run(build_config(replay_config), run, quiet=True)
    before = (run / "results.json").read_text()
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    edit(cfg)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    with pytest.raises(ResumeError) as err:
        resume_run(run, quiet=True)
    assert str(err.value).startswith(f"{run / 'config.yaml'}: {field}: changed since the run "
                                     "started") and "\n" not in str(err.value)
    assert (run / "results.json").read_text() == before  # nothing mixed in


def test_resume_may_change_the_tracker(tmp_path, monkeypatch, replay_config):
    run = tmp_path / "run"
    with killed_at_phase(monkeypatch, 3):
        start_run(build_config(replay_config), run, quiet=True)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["tracker"]["log_every"] = 5
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    assert resume_run(run, quiet=True)[1]["status"] == "complete"


def test_resume_removes_what_a_killed_write_left_behind(tmp_path, monkeypatch, replay_config):
    run = tmp_path / "run"
    with killed_at_phase(monkeypatch, 3):
        start_run(build_config(replay_config), run, quiet=True)
    stale = [run / ".results.json.k1ll3d0a", run / "checkpoints" / "phase-01" /
             ".trainable.safetensors.x_9q2w7e"]  # mkstemp names, as write_atomic leaves them
    for p in stale:
        p.write_bytes(b"half")
    _, res = resume_run(run, quiet=True)
    assert res["status"] == "complete" and not any(p.exists() for p in stale)
    assert "left by a write that was killed" in (run / "log.txt").read_text()


def _string_cell(res):
    res["R"][1][0] = str(res["R"][1][0])


def _short_row(res):
    res["R"][2] = res["R"][2][:1]


def _cost_of_a_wrong_type(res):
    res["cost"] = "none"


# How results.json is damaged, and the first row a resume must redo (the rows before it are
# kept; the later ones come back from the phase checkpoints, or from the base row up)
DAMAGES = {
    "string_cell": (_string_cell, "R[1][0]: expected a number or null", 1),
    "short_row": (_short_row, "R[2]: expected a list of 3 scores", 2),
    "wrong_type": (_cost_of_a_wrong_type, "cost: expected a list, got str", 0),
    "truncated": (None, "not valid JSON", 0),
}


def test_resume_on_a_damaged_results_file_falls_back_to_the_checkpoints(
        tmp_path, monkeypatch, replay_config):
    """A damaged results.json is reported in one line naming it and what is wrong; the rows
    before the damage are kept, the others redone from the phase checkpoints (or from the base
    row when nothing can be trusted), and the run ends as the uninterrupted one."""
    import shutil

    _, full = start_run(build_config(replay_config), tmp_path / "full", quiet=True)
    killed = tmp_path / "killed"
    with killed_at_phase(monkeypatch, 3):
        start_run(build_config(replay_config), killed, quiet=True)
    for name, (damage, problem, first_redone) in DAMAGES.items():
        run = tmp_path / name
        shutil.copytree(killed, run)
        text = (run / "results.json").read_text()
        if damage is None:
            (run / "results.json").write_text(text[:len(text) // 2])
        else:
            res = json.loads(text)
            damage(res)
            (run / "results.json").write_text(json.dumps(res))
        _, resumed = resume_run(run, quiet=True)
        assert comparable(resumed) == comparable(full), name
        warning = [ln for ln in (run / "log.txt").read_text().splitlines()
                   if f"{run / 'results.json'}: {problem}" in ln]
        assert len(warning) == 1, name
        kept = "keeping rows 0-" if first_redone else "starting again from the base row"
        assert kept in warning[0], warning[0]
        if first_redone:
            assert f"keeping rows 0-{first_redone - 1} " in warning[0]


def test_resume_refuses_an_edited_eval_setting_of_the_finished_rows(tmp_path, monkeypatch,
                                                                    replay_config):
    """Besides lr, seed and a test path: a scoring setting (eval.max_new_tokens) and a stage's
    sample size (stages.0.max_test) are what the finished rows were computed with, too."""
    run = tmp_path / "run"
    with killed_at_phase(monkeypatch, 3):
        start_run(build_config(replay_config), run, quiet=True)
    original = (run / "config.yaml").read_text()
    for field, edit in (("eval.max_new_tokens", lambda c: c["eval"].update(max_new_tokens=3)),
                        ("stages.0.max_test", lambda c: c["stages"][0].update(max_test=2))):
        cfg = yaml.safe_load(original)
        edit(cfg)
        (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        with pytest.raises(ResumeError, match=rf"config.yaml: {re.escape(field)}: changed"):
            resume_run(run, quiet=True)


@pytest.mark.parametrize("strategy", [{"name": "replay", "buffer_size": 12, "mix_ratio": 0.25},
                                      {"name": "migu"}], ids=["replay", "migu"])
def test_gradient_checkpointing_gives_the_same_run(tmp_path, three_stages, strategy,
                                                   monkeypatch):
    """Recomputing activations changes memory and time, not one number of the results (MIGU's
    hooks inside the layers see the recomputed forward pass as well). Both runs take the
    whole-batch forward: recomputation turns the shared prompt head off (a cache under
    checkpointing), and the head's rounding is tested apart (tests/unit/training/test_losses)."""
    monkeypatch.setattr("everlearn.training.losses.MIN_SHARED_HEAD", 10**9)
    cfg = tiny_config(tmp_path, three_stages, model={"name": "tiny-llama", "finetune": "lora"},
                      strategies=[strategy])
    _, kept = start_run(build_config(cfg), tmp_path / "a", quiet=True)
    cfg["train"]["gradient_checkpointing"] = True
    _, recomputed = start_run(build_config(cfg), tmp_path / "b", quiet=True)
    assert recomputed["config"]["train"]["gradient_checkpointing"] is True
    assert comparable(recomputed) == comparable(kept)

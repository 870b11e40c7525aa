"""Two processes (torchrun, gloo on CPU) give the matrix of one process, and write one run.

Each case runs ``torchrun --nproc_per_node 2 -m everlearn run CONFIG`` (as
``python -m torch.distributed.run``, torchrun's module) on the tiny model and the same config in
this process, then compares. Tolerance: every cell of R within one test example's worth
(100 / n_test points); in practice the matrices come out equal (the ranks' summed gradient is
the one-process gradient up to float rounding). The strategy state saved by rank 0 must match
the one-process state (the replay buffer exactly, the Fisher to float rounding), and the run
itself checks after every phase that both ranks hold the same weights and strategy state."""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from everlearn.runs.runner import resume_run, start_run
from everlearn.runs.tracking import Tracker
from everlearn.validation import build_config
from tests.conftest import constant_task, tiny_config
from tests.helpers.distributed import assert_checkpoints_close, torchrun

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(),
                                reason="torch.distributed is not available")

N_TEST = 6

STRATEGIES = {
    "seqft": [],
    "replay": [{"name": "replay", "buffer_size": 12, "mix_ratio": 0.25}],
    "ewc": [{"name": "ewc", "ewc_lambda": 100.0, "fisher_samples": 8}],
}


@contextlib.contextmanager
def cut_at_step(step: int):
    """The run inside stops (KeyboardInterrupt, as if killed) after global step ``step``."""
    original = Tracker.on_step

    def on_step(self, loss, lr):
        original(self, loss, lr)
        if self.step == step:
            raise KeyboardInterrupt

    Tracker.on_step = on_step
    try:
        with pytest.raises(KeyboardInterrupt):
            yield
    finally:
        Tracker.on_step = original


def run_files(run: Path) -> set[str]:
    return {str(p.relative_to(run)) for p in run.rglob("*") if p.is_file()}


@pytest.mark.slow  # two torchrun processes
@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_two_processes_give_the_one_process_matrix(tmp_path, strategy):
    """2 processes vs 1 on a 3-stage stream; the replay case also resumes under torchrun."""
    stages = [constant_task(tmp_path, name, answer, n_test=N_TEST)
              for name, answer in (("red", "alpha"), ("green", "bravo"), ("blue", "charlie"))]
    cfg = tiny_config(tmp_path, stages, strategies=STRATEGIES[strategy],
                      keep_stage_weights="all")  # (so that a resume can start after phase 2)
    cfg["train"]["steps"] = 20
    if strategy == "replay":  # step checkpoints too: rank 0 alone writes them
        cfg["train"]["checkpoint_every"] = 4
    cfg_file = tmp_path / "stream.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    if strategy == "replay":  # one process, cut at step 10 of phase 3 and resumed; its step
        # checkpoint (step 8) is kept for the resume under torchrun below
        with cut_at_step(2 * 20 + 10):
            start_run(build_config(cfg), tmp_path / "one", quiet=True)
        shutil.copytree(tmp_path / "one" / "checkpoints" / "steps", tmp_path / "steps")
        _, one = resume_run(tmp_path / "one", quiet=True)
    else:
        _, one = start_run(build_config(cfg), tmp_path / "one", quiet=True)

    run = tmp_path / "two"
    proc = torchrun("run", str(cfg_file), "--output", str(run), "-q")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("Accuracy matrix") == 1  # only rank 0 prints
    assert proc.stdout.count(f"run directory: {run}") == 1
    two = json.loads((run / "results.json").read_text())

    assert two["status"] == "complete" and len(two["R"]) == len(one["R"]) == 4
    tolerance = 100.0 / N_TEST  # one test example
    diff = max(abs(a - b) for r1, r2 in zip(one["R"], two["R"]) for a, b in zip(r1, r2))
    assert diff <= tolerance, (one["R"], two["R"])
    assert one["R"][1][0] == 100.0 and two["R"][1][0] == 100.0  # a stage is learned
    for c1, c2 in zip(one["cost"], two["cost"]):  # the same batches: global token counts
        assert (c2["steps"], c2["examples"], c2["tokens_trained"], c2["buffer_size"]) == (
            c1["steps"], c1["examples"], c1["tokens_trained"], c1["buffer_size"])
        assert c2["final_loss"] == pytest.approx(c1["final_loss"], rel=0.02)

    # one run directory, written once and complete: no second results.json, no temp files
    files = run_files(run)
    assert {"config.yaml", "results.json", "log.txt", "report/index.html"} <= files
    assert not [f for f in files if Path(f).name.startswith(".")]
    assert sum(f.endswith("results.json") for f in files) == 1
    phases = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert phases == ["phase-01", "phase-02", "phase-03"]
    assert all((run / "checkpoints" / p / "done.json").exists() for p in phases)
    assert not (tmp_path / "runs").exists()  # no rank chose a directory of its own
    assert files - {"report/index.html"} - {f for f in files if f.startswith("report/")} == (
        run_files(tmp_path / "one"))  # the files of a one-process run, each once

    # The strategy state rank 0 saved is the one-process state: the replay buffer exactly, the
    # Fisher and anchors up to float rounding. Summing over ranks rounds differently; Adam
    # amplifies it (weights after phase 1, 2, 3 differ by ~5e-7, ~2e-5, ~1e-2 relative, seqft
    # as much as ewc), hence a tight bound after phase 1 and a loose one at the end.
    for phase, rtol in (("phase-01", 1e-4), ("phase-03", 0.1)):
        assert_checkpoints_close(tmp_path / "one" / "checkpoints" / phase,
                                 run / "checkpoints" / phase, "strategy.safetensors", rtol)

    if strategy == "replay":
        # --resume under torchrun in the middle of phase 3: after phase 2 and from the step
        # checkpoint the one-process run wrote at step 8 (both ranks load it; rank 1 takes rank
        # 0's RNG state); it finishes like the uninterrupted two-process run
        cut = dict(two, R=two["R"][:3], cost=two["cost"][:2], status="running")
        (run / "results.json").write_text(json.dumps(cut))
        shutil.copytree(tmp_path / "steps", run / "checkpoints" / "steps")
        proc = torchrun("run", "--resume", str(run), "-q")
        assert proc.returncode == 0, proc.stderr
        resumed = json.loads((run / "results.json").read_text())
        log = (run / "log.txt").read_text()
        assert "resumed after phase 2 of 3" in log and "resumed phase 3 at step 8 of 20" in log
        assert resumed["status"] == "complete" and resumed["R"] == two["R"]
        assert resumed["cost"][:2] == two["cost"][:2]
        assert resumed["cost"][2]["tokens_trained"] == two["cost"][2]["tokens_trained"]
        assert resumed["cost"][2]["final_loss"] == pytest.approx(two["cost"][2]["final_loss"],
                                                                 rel=0.02)
        assert not (run / "checkpoints" / "steps").exists()  # dropped with phase 3's

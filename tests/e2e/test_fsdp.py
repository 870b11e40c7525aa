"""FSDP2 under two processes (torchrun, gloo on CPU) gives the matrix of one process.

The launch environment is the one ``accelerate launch --config_file
examples/accelerate/fsdp.yaml`` sets, derived by accelerate's own launcher code from the
example file, so the example is tested as shipped. Tolerance: every cell of R within one test
example's worth (100 / n_test points); in practice the matrices come out equal and the final
losses agree to ~1e-5 relative. The checkpoints of the sharded run are the one-process files
(same names, shapes and dtypes, whole tensors), and a one-process run resumes from them. A run
stopped by SIGTERM in the middle of a phase resumes under FSDP from its gathered step
checkpoint to the uninterrupted run's results. Strategies FSDP cannot run, FSDP1 and
Megatron-LM configs stop with a one-line error."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from everlearn.cli import main
from everlearn.runs.runner import resume_run, start_run
from everlearn.validation import build_config
from tests.conftest import constant_task, tiny_config
from tests.helpers.distributed import assert_checkpoints_close, free_port, torchrun
from tests.helpers.fsdp import FSDP_YAML, launch_env

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(),
                                reason="torch.distributed is not available")

N_TEST = 6

CASES = {  # strategy -> (strategies, overrides of the example's FSDP settings)
    "seqft": ([], {"FSDP_RESHARD_AFTER_FORWARD": "false"}),  # SHARD_GRAD_OP
    "replay": ([{"name": "replay", "buffer_size": 12, "mix_ratio": 0.25}], {}),  # FULL_SHARD
}


@pytest.mark.slow  # two torchrun processes
@pytest.mark.parametrize("strategy", list(CASES))
def test_fsdp_gives_the_one_process_matrix(tmp_path, monkeypatch, strategy):
    """2 FSDP processes vs 1 on a 2-stage stream; then a one-process resume of the FSDP run."""
    strategies, overrides = CASES[strategy]
    stages = [constant_task(tmp_path, name, answer, n_test=N_TEST)
              for name, answer in (("red", "alpha"), ("green", "bravo"))]
    cfg = tiny_config(tmp_path, stages, strategies=strategies, keep_stage_weights="all")
    cfg["train"].update(steps=20, max_grad_norm=1.0)  # clipping on the sharded gradients
    if strategy == "replay":  # step checkpoints: every rank gathers, rank 0 writes
        cfg["train"]["checkpoint_every"] = 8
    cfg_file = tmp_path / "stream.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    _, one = start_run(build_config(cfg), tmp_path / "one", quiet=True)

    run = tmp_path / "fsdp"
    for k, v in {**launch_env(FSDP_YAML), **overrides}.items():
        monkeypatch.setenv(k, v)  # inherited by torchrun's processes
    proc = torchrun("run", str(cfg_file), "--output", str(run), "-q")
    for k in ("ACCELERATE_USE_FSDP", "FSDP_VERSION"):
        monkeypatch.delenv(k)  # the resume below runs in this process, without FSDP
    assert proc.returncode == 0, proc.stderr
    two = json.loads((run / "results.json").read_text())
    log = (run / "log.txt").read_text()
    # 2 decoder layers and the model; SHARD_GRAD_OP when the override says so
    reshard = overrides.get("FSDP_RESHARD_AFTER_FORWARD", "true") == "true"
    assert (f"FSDP: model sharded over 2 processes in 3 units (2 by the wrap policy, then the "
            f"model), reshard_after_forward={reshard}") in log
    if strategy == "replay":  # gathered from both processes, written once (rank 0's log)
        assert log.count("phase 2: step checkpoint at step 16 of 20") == 1

    assert two["status"] == "complete" and len(two["R"]) == len(one["R"]) == 3
    tolerance = 100.0 / N_TEST  # one test example
    diff = max(abs(a - b) for r1, r2 in zip(one["R"], two["R"]) for a, b in zip(r1, r2))
    assert diff <= tolerance, (one["R"], two["R"])
    assert one["R"][1][0] == 100.0 and two["R"][1][0] == 100.0  # a stage is learned
    for c1, c2 in zip(one["cost"], two["cost"]):  # the same batches, the same step
        assert (c2["steps"], c2["examples"], c2["tokens_trained"], c2["buffer_size"]) == (
            c1["steps"], c1["examples"], c1["tokens_trained"], c1["buffer_size"])
        assert c2["final_loss"] == pytest.approx(c1["final_loss"], rel=1e-3)

    # checkpoints: the one-process files (whole tensors), weights close to one process's
    for phase in ("phase-01", "phase-02"):
        ckpt1, ckpt2 = tmp_path / "one" / "checkpoints" / phase, run / "checkpoints" / phase
        assert sorted(p.name for p in ckpt2.iterdir()) == sorted(p.name for p in ckpt1.iterdir())
        assert_checkpoints_close(ckpt1, ckpt2, "trainable.safetensors", 1e-2)

    # one process resumes the FSDP run after its phase 1 and finishes it like the FSDP run
    cut = dict(two, R=two["R"][:2], cost=two["cost"][:1], status="running")
    (run / "results.json").write_text(json.dumps(cut))
    _, resumed = resume_run(run, quiet=True)
    assert resumed["status"] == "complete"
    assert max(abs(a - b) for a, b in zip(resumed["R"][2], two["R"][2])) <= tolerance
    assert resumed["cost"][1]["final_loss"] == pytest.approx(two["cost"][1]["final_loss"],
                                                             rel=1e-3)


@pytest.mark.parametrize("env,expected", [
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1", "WORLD_SIZE": "2"},
     "fsdp_config.fsdp_version: 1 is not supported"),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "WORLD_SIZE": "2",
      "FSDP_OFFLOAD_PARAMS": "true"}, "fsdp_config.fsdp_offload_params: true is not supported"),
    ({"ACCELERATE_USE_MEGATRON_LM": "true"}, "distributed_type MEGATRON_LM is not supported"),
])
def test_launcher_configs_everlearn_cannot_honour_stop_in_one_line(
        tmp_path, monkeypatch, capsys, three_stages, env, expected):
    cfg_file = tmp_path / "stream.yaml"
    cfg_file.write_text(yaml.safe_dump(tiny_config(tmp_path, three_stages)))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert main(["run", str(cfg_file), "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err
    if "MEGATRON" in expected:
        assert "examples/accelerate/fsdp.yaml" in err  # the sharded alternative
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # two torchrun processes
def test_sigterm_under_fsdp_then_resume_equals_the_uninterrupted_fsdp_run(tmp_path, monkeypatch):
    """SIGTERM to torchrun in the middle of phase 2 (after a step checkpoint): every process
    stops at the same step, rank 0 writes the gathered step checkpoint, and an FSDP resume from
    it (each process re-shards the whole tensors) ends where the uninterrupted FSDP run ends."""
    stages = [constant_task(tmp_path, name, answer, n_test=N_TEST)
              for name, answer in (("red", "alpha"), ("green", "bravo"))]
    cfg = tiny_config(tmp_path, stages, strategies=[{"name": "der", "buffer_size": 12}])
    cfg["train"].update(steps=12, checkpoint_every=4)
    cfg["stages"][1]["steps"] = 60
    cfg_file = tmp_path / "stream.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    for k, v in launch_env(FSDP_YAML).items():
        monkeypatch.setenv(k, v)  # inherited by torchrun's processes

    full = tmp_path / "full"
    proc = torchrun("run", str(cfg_file), "--output", str(full), "-q")
    assert proc.returncode == 0, proc.stderr[-3000:]

    run = tmp_path / "termed"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
           "-m", "everlearn", "run", str(cfg_file), "--output", str(run), "-q"]
    term = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while not any((run / "checkpoints" / "steps").glob("phase-02-step-*/done.json")):
        assert term.poll() is None and time.monotonic() < deadline, term.stderr.read()
        time.sleep(0.02)
    term.send_signal(signal.SIGTERM)  # torchrun passes it on to both processes
    _, err = term.communicate(timeout=120)
    assert term.returncode != 0
    log = (run / "log.txt").read_text()
    stopped = re.search(r"phase 2: interrupted after step (\d+) of 60; step checkpoint written",
                        log)
    assert stopped, err[-3000:]
    assert (json.loads((run / "results.json").read_text())["status"] != "complete")

    proc = torchrun("run", "--resume", str(run), "-q")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resumed phase 2 at step {stopped[1]} of 60" in (run / "log.txt").read_text()
    done = json.loads((run / "results.json").read_text())
    ref = json.loads((full / "results.json").read_text())
    assert done["status"] == "complete" and done["R"] == ref["R"]
    for c1, c2 in zip(ref["cost"], done["cost"]):
        assert (c2["steps"], c2["tokens_trained"], c2["buffer_size"]) == (
            c1["steps"], c1["tokens_trained"], c1["buffer_size"])
        assert c2["final_loss"] == pytest.approx(c1["final_loss"], rel=1e-5)

"""DeepSpeed ZeRO stage 2 under two processes (torchrun, gloo on CPU) gives the matrix of one
process.

The launch environment is the one ``accelerate launch --config_file
examples/accelerate/deepspeed_zero2.yaml`` sets, derived by accelerate's own launcher code from
the example file, so the example is tested as shipped. Tolerance: every cell of R within one
test example's worth (100 / n_test points), final losses within 1e-3 relative, trained weights
within 1% of their norm. What everlearn cannot run under DeepSpeed stops with a one-line error
before anything is written."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from everlearn.cli import main
from everlearn.runs.runner import start_run
from everlearn.validation import build_config
from tests.conftest import constant_task, tiny_config
from tests.helpers.deepspeed import ZERO2_YAML, launch_env, zero_env
from tests.helpers.distributed import assert_checkpoints_close, torchrun

pytestmark = [
    pytest.mark.skipif(not torch.distributed.is_available(),
                       reason="torch.distributed is not available"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

deepspeed = pytest.importorskip("deepspeed")

N_TEST = 6

CASES = {  # strategy -> (strategies, finetune, lr, ZeRO stage, grad_accum)
    "seqft": ([], "full", 3e-3, "2", 2),
    "ewc": ([{"name": "ewc", "ewc_lambda": 50.0, "fisher_samples": 8}], "full", 3e-3, "1", 1),
    # a new engine per adapter; at lr 1e-2 Adam on the fresh LoRA amplifies float rounding
    # (two plain data-parallel processes drift from one process the same way)
    "inc_lora": ([{"name": "inc_lora"}], "lora", 3e-3, "2", 1),
}


@pytest.mark.slow  # two torchrun processes
@pytest.mark.parametrize("strategy", list(CASES))
def test_zero_gives_the_one_process_matrix(tmp_path, monkeypatch, strategy):
    strategies, finetune, lr, stage, accum = CASES[strategy]
    stages = [constant_task(tmp_path, name, answer, n_test=N_TEST)
              for name, answer in (("red", "alpha"), ("green", "bravo"))]
    cfg = tiny_config(tmp_path, stages, strategies=strategies,
                      model={"name": "tiny-llama", "finetune": finetune})
    cfg["train"].update(steps=16, lr=lr, max_grad_norm=1.0, grad_accum=accum)  # DeepSpeed clips
    cfg_file = tmp_path / "stream.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    _, one = start_run(build_config(cfg), tmp_path / "one", quiet=True)

    run = tmp_path / "zero"
    env = {**launch_env(ZERO2_YAML), "ACCELERATE_DEEPSPEED_ZERO_STAGE": stage}
    for k, v in env.items():
        monkeypatch.setenv(k, v)  # inherited by torchrun's processes
    proc = torchrun("run", str(cfg_file), "--output", str(run), "-q", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads((run / "results.json").read_text())
    log = (run / "log.txt").read_text()
    assert log.count(f"DeepSpeed ZeRO stage {stage} over 2 processes") == 2  # one per phase
    # the whole phase's trainable count, not one rank's flat partition of it
    assert f"over 2 processes: {one['cost'][0]['trainable_params']} trainable weights" in log

    assert two["status"] == "complete" and len(two["R"]) == len(one["R"]) == 3
    tolerance = 100.0 / N_TEST  # one test example
    diff = max(abs(a - b) for r1, r2 in zip(one["R"], two["R"]) for a, b in zip(r1, r2))
    assert diff <= tolerance, (one["R"], two["R"])
    if finetune == "full":  # (16 steps do not teach the tiny model's LoRA the answer)
        assert one["R"][1][0] == 100.0 and two["R"][1][0] == 100.0  # a stage is learned
    for c1, c2 in zip(one["cost"], two["cost"]):  # the same batches, the same step
        assert (c2["steps"], c2["examples"], c2["tokens_trained"]) == (
            c1["steps"], c1["examples"], c1["tokens_trained"])
        assert c2["final_loss"] == pytest.approx(c1["final_loss"], rel=1e-3)
    ckpt = "checkpoints/phase-02"
    assert_checkpoints_close(tmp_path / "one" / ckpt, run / ckpt, "trainable.safetensors", 1e-2)
    if finetune == "lora":  # LoRA's B starts at zero: trained
        w2 = load_file(run / ckpt / "trainable.safetensors")
        assert all(float(w2[k].norm()) > 0 for k in w2 if "lora_B" in k)


@pytest.mark.parametrize("env,expected", [
    ({"ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}, "deepspeed_config.zero_stage: 3 is not supported"),
    ({"ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": "cpu"},
     "deepspeed_config.offload_optimizer_device: cpu is not supported"),
    ({"ACCELERATE_DEEPSPEED_CONFIG_FILE": "ds.json"},
     "deepspeed_config.deepspeed_config_file: not read by everlearn"),
])
def test_deepspeed_settings_everlearn_cannot_honour_stop_in_one_line(
        tmp_path, monkeypatch, capsys, three_stages, env, expected):
    cfg_file = tmp_path / "stream.yaml"
    cfg_file.write_text(yaml.safe_dump(tiny_config(tmp_path, three_stages)))
    zero_env(monkeypatch, **env)
    assert main(["run", str(cfg_file), "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err
    assert not (tmp_path / "run").exists()

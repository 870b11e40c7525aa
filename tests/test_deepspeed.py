"""DeepSpeed ZeRO stage 2 under two processes (torchrun, gloo on CPU) gives the matrix of one
process.

The launch environment is the one ``accelerate launch --config_file
examples/accelerate/deepspeed_zero2.yaml`` sets, derived by accelerate's own launcher code from
the example file, so the example is tested as shipped. Tolerance: every cell of R within one
test example's worth (100 / n_test points), final losses within 1e-3 relative, trained weights
within 1% of their norm. What everlearn cannot run under DeepSpeed stops with a one-line error
before anything is written.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from everlearn.cli import main
from everlearn.errors import ConfigError
from everlearn.parallel import zero
from everlearn.runs.runner import Run, start_run
from everlearn.validation import build_config
from tests.conftest import constant_task, tiny_config
from tests.test_distributed import assert_checkpoints_close, torchrun

pytestmark = [
    pytest.mark.skipif(not torch.distributed.is_available(),
                       reason="torch.distributed is not available"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]
deepspeed = pytest.importorskip("deepspeed")

ROOT = Path(__file__).resolve().parents[1]
ZERO2_YAML = ROOT / "examples" / "accelerate" / "deepspeed_zero2.yaml"
N_TEST = 6
CASES = {  # strategy -> (strategies, finetune, lr, ZeRO stage, grad_accum)
    "seqft": ([], "full", 3e-3, "2", 2),
    "ewc": ([{"name": "ewc", "ewc_lambda": 50.0, "fisher_samples": 8}], "full", 3e-3, "1", 1),
    # a new engine per adapter; at lr 1e-2 Adam on the fresh LoRA amplifies float rounding
    # (two plain data-parallel processes drift from one process the same way)
    "inc_lora": ([{"name": "inc_lora"}], "lora", 3e-3, "2", 1),
}


def launch_env(config: Path) -> dict[str, str]:
    """The ACCELERATE_* variables ``accelerate launch --config_file config`` gives the
    processes (accelerate's launcher code, run in this process)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    args = launch_command_parser().parse_args(["--config_file", str(config), "x.py"])
    args, defaults, _ = _validate_launch_command(args)
    args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
    _, env = prepare_deepspeed_cmd_env(args)
    return {k: v for k, v in env.items() if k.startswith("ACCELERATE_")}


def test_the_example_config_asks_for_zero_stage_2(monkeypatch):
    env = launch_env(ZERO2_YAML)
    assert env["ACCELERATE_USE_DEEPSPEED"] == "true"
    for k, v in {**env, "WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(k, v)
    assert zero.requested() and zero.settings().stage == 2
    monkeypatch.setenv("WORLD_SIZE", "1")  # one process: DeepSpeed is not used
    assert not zero.requested()


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


def _zero_env(monkeypatch, **extra: str) -> None:
    for k, v in {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2",
                 "WORLD_SIZE": "2", **extra}.items():
        monkeypatch.setenv(k, v)


@pytest.mark.parametrize("strategy", ["agem", "grace"])
def test_zero_refuses_a_strategy_it_cannot_run(tmp_path, monkeypatch, three_stages, strategy):
    cfg = build_config(tiny_config(tmp_path, three_stages, strategies=[strategy]))
    _zero_env(monkeypatch)
    with pytest.raises(ConfigError) as err:
        Run(cfg, tmp_path / "run", source="stream.yaml")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"stream.yaml: strategies: '{strategy}' is not "
                                              "supported under DeepSpeed")
    assert not (tmp_path / "run").exists()  # nothing written


def test_zero_refuses_edit_stages_text_streams_recycle_and_step_checkpoints(monkeypatch):
    _zero_env(monkeypatch)
    cases = [((["seqft"], ["sft", "edit"], False, False, 0), "stages: edit stages"),
             (([], ["cpt"], False, True, 0), "text_stream: not supported under DeepSpeed"),
             (([], [], True, False, 0), "recycle: not supported under DeepSpeed"),
             ((["seqft"], ["sft"], False, False, 10), "train.checkpoint_every: step checkpoints")]
    for args, expected in cases:
        with pytest.raises(ConfigError, match=expected):
            zero.check_run(*args, "s.yaml")
    zero.check_run(["ewc", "inc_lora"], ["sft"], False, False, 0, "s.yaml")  # allowed
    monkeypatch.setenv("WORLD_SIZE", "1")  # one process: DeepSpeed is not used, nothing refused
    zero.check_run(["agem"], ["edit"], True, True, 10, "s.yaml")


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
    _zero_env(monkeypatch, **env)
    assert main(["run", str(cfg_file), "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err
    assert not (tmp_path / "run").exists()

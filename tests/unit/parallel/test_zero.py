"""DeepSpeed ZeRO (``parallel.zero``): the example config asks for stage 2, and what everlearn
cannot run under DeepSpeed stops with a one-line error before anything is written."""

from __future__ import annotations

import pytest
import torch

from everlearn.errors import ConfigError
from everlearn.parallel import zero
from everlearn.runs.runner import Run
from everlearn.validation import build_config
from tests.conftest import tiny_config
from tests.helpers.deepspeed import ZERO2_YAML, launch_env, zero_env

pytestmark = [
    pytest.mark.skipif(not torch.distributed.is_available(),
                       reason="torch.distributed is not available"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

deepspeed = pytest.importorskip("deepspeed")


def test_the_example_config_asks_for_zero_stage_2(monkeypatch):
    env = launch_env(ZERO2_YAML)
    assert env["ACCELERATE_USE_DEEPSPEED"] == "true"
    for k, v in {**env, "WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(k, v)
    assert zero.requested() and zero.settings().stage == 2
    monkeypatch.setenv("WORLD_SIZE", "1")  # one process: DeepSpeed is not used
    assert not zero.requested()


@pytest.mark.parametrize("strategy", ["agem", "grace", "wise"])
def test_zero_refuses_a_strategy_it_cannot_run(tmp_path, monkeypatch, three_stages, strategy):
    cfg = build_config(tiny_config(tmp_path, three_stages, strategies=[strategy]))
    zero_env(monkeypatch)
    with pytest.raises(ConfigError) as err:
        Run(cfg, tmp_path / "run", source="stream.yaml")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"stream.yaml: strategies: '{strategy}' is not "
                                              "supported under DeepSpeed")
    assert not (tmp_path / "run").exists()  # nothing written


def test_zero_refuses_edit_stages_text_streams_recycle_and_step_checkpoints(monkeypatch):
    zero_env(monkeypatch)
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

"""FSDP (``parallel.fsdp``): the example config asks for FSDP2 full shard by decoder layer, and
strategies and stage kinds FSDP cannot run stop with a one-line error."""

from __future__ import annotations

import pytest
import torch

from everlearn.errors import ConfigError
from everlearn.parallel import fsdp
from everlearn.runs.runner import Run
from everlearn.validation import build_config
from tests.conftest import tiny_config
from tests.helpers.fsdp import FSDP_YAML, launch_env

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(),
                                reason="torch.distributed is not available")


def test_the_example_config_asks_for_fsdp2_full_shard_by_decoder_layer(monkeypatch):
    env = launch_env(FSDP_YAML)
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"
    for k, v in {**env, "WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(k, v)
    assert fsdp.requested()
    s = fsdp.settings()
    assert s.reshard_after_forward is True
    assert s.plugin.transformer_cls_names_to_wrap is None  # the model's own decoder layer class


def _fsdp_env(monkeypatch, version: str = "2") -> None:
    for k, v in {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": version,
                 "WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(k, v)


@pytest.mark.parametrize("strategy", ["ewc", "agem", "inc_lora", "merge"])
def test_fsdp_refuses_a_strategy_it_cannot_run(tmp_path, monkeypatch, three_stages, strategy):
    finetune = "lora" if strategy == "inc_lora" else "full"
    cfg = build_config(tiny_config(tmp_path, three_stages, strategies=[strategy],
                                   model={"name": "tiny-llama", "finetune": finetune}))
    _fsdp_env(monkeypatch)
    with pytest.raises(ConfigError) as err:
        Run(cfg, tmp_path / "run", source="stream.yaml")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"stream.yaml: strategies: '{strategy}' is not "
                                              "supported under FSDP")
    assert "supported: der, general_mix, joint, lwf, replay, seqft" in msg
    assert not (tmp_path / "run").exists()  # nothing written


def test_fsdp_refuses_edit_stages_and_recycle(monkeypatch):
    _fsdp_env(monkeypatch)
    with pytest.raises(ConfigError, match="stages: edit stages are not supported under FSDP"):
        fsdp.check_run(["seqft"], ["sft", "edit"], False, False, "s.yaml")
    with pytest.raises(ConfigError, match="recycle: not supported under FSDP"):
        fsdp.check_run([], [], True, False, "s.yaml")
    monkeypatch.setenv("WORLD_SIZE", "1")  # one process: nothing is sharded, nothing refused
    fsdp.check_run(["ewc"], ["edit"], True, True, "s.yaml")

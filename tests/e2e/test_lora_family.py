"""The LoRA-family strategies of issue 18 (nlora, ilora, ...) in runs on the tiny model: each
one's defining property, measured on what the run leaves behind."""

from __future__ import annotations

from everlearn.runs.runner import Run
from everlearn.validation import build_config
from tests.conftest import constant_task, tiny_config


def _cfg(tmp, stages, strategy: dict, steps: int = 6, **overrides):
    return build_config(tiny_config(
        tmp, stages, model={"name": "tiny-llama", "finetune": "lora", "lora": {"r": 4}},
        train={"lr": 5e-3, "steps": steps, "batch_size": 4, "precision": "fp32",
               "max_length": 48, "warmup_ratio": 0.0, "schedule": "constant"},
        strategies=[strategy], **overrides))


def _two_stages(tmp):
    return [constant_task(tmp, "red", "alpha", 12, 2), constant_task(tmp, "green", "bravo", 12, 2)]


# --- N-LoRA -----------------------------------------------------------------------------------
def _nlora_collision(tmp_path, lambda_1: float) -> dict:
    cfg = _cfg(tmp_path, _two_stages(tmp_path), {"name": "nlora", "lambda_1": lambda_1}, steps=20)
    run = Run(cfg, tmp_path / f"run-{lambda_1}", quiet=True)
    result = run.execute()
    assert result["strategy_metrics"]["nlora"]["collision_rate"]["green"] == \
        run.strategy.members[0].collisions["green"]
    return run.strategy.members[0].collisions["green"]


def test_nlora_collision_falls_as_the_l1_penalty_grows(tmp_path):
    rates = {lam: _nlora_collision(tmp_path, lam) for lam in (0.0, 0.01, 0.1)}
    # Same seed, data and initial adapters: only the penalty differs.
    assert rates[0.0]["collision_rate"] > rates[0.01]["collision_rate"] > \
        rates[0.1]["collision_rate"]
    assert rates[0.0]["collision_rate"] > 5 * rates[0.1]["collision_rate"]
    assert rates[0.0]["density"] > rates[0.01]["density"] > rates[0.1]["density"]
    assert rates[0.0]["l1"] > rates[0.01]["l1"] > rates[0.1]["l1"]

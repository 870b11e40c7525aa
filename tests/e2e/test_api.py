"""The Python API end to end on the tiny model: a stream run, evaluated, resumed and exported,
and every exported adapter loaded with plain PEFT (the same logits as everlearn's model)."""

from __future__ import annotations

import json

import pytest
import torch

import everlearn
from everlearn.models.loading import load_base_model, load_trainable_state, make_trainable
from everlearn.runs.results import Results
from everlearn.runs.run_dir import RunDir
from everlearn.runs.runner import Run
from everlearn.validation import build_config, load_config
from tests.conftest import constant_task, killed_at_phase, tiny_config
from tests.helpers.export import assert_same_logits, logits, plain_peft, save_tiny_base


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return save_tiny_base(tmp_path_factory.mktemp("base"))


def stream(tmp, base, strategy: str = "seqft") -> dict:
    stages = [constant_task(tmp, "red", "alpha", 8, 2), constant_task(tmp, "green", "bravo", 8, 2)]
    return tiny_config(tmp, stages, model={"name": str(base), "finetune": "lora",
                                           "lora": {"r": 4}},
                       train={"lr": 5e-3, "steps": 6, "batch_size": 4, "precision": "fp32",
                              "max_length": 48}, strategies=[{"name": strategy}])


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, base):
    tmp = tmp_path_factory.mktemp("api")
    return everlearn.run(stream(tmp, base), tmp / "run", quiet=True, train={"steps": 4},
                         **{"eval.batch_size": 8})


def stage_model(run_dir, phase: int):
    """Everlearn's model after ``phase``: the base, the LoRA wrapper, the checkpoint's weights
    (how --resume and `everlearn eval --weights` restore it)."""
    cfg = load_config(run_dir / "config.yaml")
    model = make_trainable(load_base_model(cfg.model)[0], cfg.model)
    weights, _ = RunDir(run_dir).load_phase(phase, need_weights=True)
    load_trainable_state(model, weights, "test")
    return model


def test_run_returns_the_directory_and_typed_results(lora_run):
    res = lora_run.results
    assert isinstance(res, Results) and res.status == "complete"
    assert res.config["train"]["steps"] == 4 and res.config["eval"]["batch_size"] == 8
    assert len(res.R) == 3 and lora_run.metrics is res.metrics and "ap" in res.metrics
    assert everlearn.load_results(lora_run.run_dir) == res


def test_evaluate_a_stage_checkpoint_reproduces_its_row(lora_run):
    scores = everlearn.evaluate(lora_run.run_dir / "config.yaml",
                                weights=lora_run.run_dir / "checkpoints" / "phase-01",
                                quiet=True)
    assert list(scores) == ["red", "green"]
    assert [scores[n]["score"] for n in scores] == pytest.approx(lora_run.results.R[1])


@pytest.mark.parametrize("phase", [1, 2])
def test_each_stage_adapter_loads_in_plain_peft_with_everlearns_logits(lora_run, base,
                                                                       tmp_path, phase):
    ours = logits(stage_model(lora_run.run_dir, phase))
    beside = RunDir(lora_run.run_dir).phase_dir(phase) / "adapter"
    assert_same_logits(logits(plain_peft(base, beside)), ours)
    done = everlearn.export(lora_run.run_dir, phase, tmp_path / "out")
    assert done.form == "adapter" and done.stages == [["red"], ["green"]][phase - 1]
    assert_same_logits(logits(plain_peft(base, tmp_path / "out")), ours)


def test_merged_export_loads_without_peft(lora_run, tmp_path):
    from transformers import AutoModelForCausalLM

    everlearn.export(lora_run.run_dir, 2, tmp_path / "merged", merged=True)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert_same_logits(logits(merged), logits(stage_model(lora_run.run_dir, 2)))


def test_resume_finishes_a_killed_run(tmp_path, base, monkeypatch):
    with killed_at_phase(monkeypatch, 2):
        everlearn.run(stream(tmp_path, base), tmp_path / "run", quiet=True)
    assert everlearn.load_results(tmp_path / "run").status == "running"
    res = everlearn.resume(tmp_path / "run", quiet=True)
    assert res.run_dir == tmp_path / "run" and res.results.status == "complete"
    assert len(res.results.R) == 3
    done = json.loads((tmp_path / "run/checkpoints/phase-02/done.json").read_text())
    assert "adapter/adapter_model.safetensors" in done["files"]


def adapter_run(tmp, base, strategy: str) -> Run:
    run = Run(build_config(stream(tmp, base, strategy)), tmp / "run", quiet=True)
    run.execute()
    return run


def test_inc_lora_exports_the_sum_of_its_adapters_as_one(tmp_path, base):
    from transformers import AutoModelForCausalLM

    run = adapter_run(tmp_path, base, "inc_lora")
    assert list(run.model.peft_config) == ["stage1", "stage2"]
    done = everlearn.export(run.dir.path, 2, tmp_path / "sum")
    config = json.loads((tmp_path / "sum" / "adapter_config.json").read_text())
    assert done.form == "adapter_sum" and config["r"] == 8
    assert_same_logits(logits(plain_peft(base, tmp_path / "sum")), logits(run.model))
    everlearn.export(run.dir.path, 2, tmp_path / "merged", merged=True)
    assert_same_logits(logits(AutoModelForCausalLM.from_pretrained(tmp_path / "merged")),
                       logits(run.model))


def test_routed_lora_exports_each_stage_adapter(tmp_path, base):
    run = adapter_run(tmp_path, base, "routed_lora")
    done = everlearn.export(run.dir.path, 2, tmp_path / "per")
    assert done.form == "stage_adapters"
    stages = json.loads((tmp_path / "per" / "stages.json").read_text())
    assert [s["stage_name"] for s in stages] == ["red", "green"]
    outputs = []
    for entry in stages:
        run.model.base_model.set_adapter([entry["adapter"]])
        outputs.append(logits(run.model))
        assert_same_logits(logits(plain_peft(base, tmp_path / "per" / entry["adapter"])),
                           outputs[-1])
    assert not torch.allclose(*outputs)  # two different adapters

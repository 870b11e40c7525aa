"""everlearn.runs.export and ``everlearn export``: a stage checkpoint out as a PEFT adapter or a
model directory, the one-line refusals, and the Hub upload (against a fake, never the network).

The run directories here are made by hand from everlearn's own pieces (config.yaml, the model
loader, RunDir.save_phase) with non-zero adapters, so no training is needed; tests/e2e/test_api.py
exports real runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from everlearn.cli import main
from everlearn.config import dump_yaml
from everlearn.errors import ExportError
from everlearn.models.loading import load_base_model, make_trainable, trainable_state
from everlearn.runs.export import MANIFEST, export_stage
from everlearn.runs.peft_adapter import phase_writer
from everlearn.runs.run_dir import RunDir, claim_run_dir
from everlearn.validation import build_config
from tests.conftest import constant_task, tiny_config
from tests.helpers.export import (
    assert_same_logits,
    logits,
    plain_peft,
    randomise_lora,
    save_tiny_base,
)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return save_tiny_base(tmp_path_factory.mktemp("base"))


def fake_run(tmp_path, base, finetune: str = "lora", strategy: str = "seqft", phases=(1, 2)):
    """A run directory whose phases hold a randomised model (the last one is returned)."""
    stages = [constant_task(tmp_path, "red", "alpha", 2, 1),
              constant_task(tmp_path, "green", "bravo", 2, 1)]
    cfg = build_config(tiny_config(tmp_path, stages, model={
        "name": str(base), "finetune": finetune, "lora": {"r": 4}},
        strategies=[{"name": strategy}]))
    run = RunDir(tmp_path / "run")
    claim_run_dir(run.path)
    run.config.write_text(dump_yaml(cfg))
    (run.path / "results.json").write_text(json.dumps({"phases": [["red"], ["green"]]}))
    model = make_trainable(load_base_model(cfg.model)[0], cfg.model)
    for phase in phases:
        if finetune == "full":
            with torch.no_grad():
                model.model.norm.weight.add_(0.1 * phase)
        else:
            randomise_lora(model, seed=phase)
        weights, state = trainable_state(model), {"meta": {f"0.{strategy}": {}}, "tensors": {}}
        run.save_phase(phase, weights, state,  # the runner's hook: adapter/ beside the weights
                       extra=phase_writer(cfg, model, weights, state, [strategy]))
    return run, model


def test_a_lora_stage_exports_as_an_adapter_plain_peft_loads(tmp_path, base):
    run, model = fake_run(tmp_path, base)
    done = export_stage(run.path, 2, tmp_path / "out")
    assert (done.form, done.phase, done.stages) == ("adapter", 2, ["green"])
    assert_same_logits(logits(plain_peft(base, tmp_path / "out")), logits(model))
    manifest = json.loads((tmp_path / "out" / MANIFEST).read_text())
    assert manifest["phase"] == 2 and manifest["base_model"] == str(base)
    # the stage checkpoint carries the same adapter beside its trainable.safetensors
    assert_same_logits(logits(plain_peft(base, run.phase_dir(2) / "adapter")), logits(model))
    files = json.loads((run.phase_dir(2) / "done.json").read_text())["files"]
    assert {"adapter/adapter_config.json", "adapter/adapter_model.safetensors"} <= set(files)


def test_an_earlier_stage_exports_its_own_weights(tmp_path, base):
    run, last = fake_run(tmp_path, base)
    export_stage(run.path, 1, tmp_path / "one")
    export_stage(run.path, 2, tmp_path / "two")
    one, two = (logits(plain_peft(base, tmp_path / d)) for d in ("one", "two"))
    assert not torch.allclose(one, two)
    assert_same_logits(two, logits(last))


def test_merged_loads_with_auto_model_and_gives_the_same_logits(tmp_path, base):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run, model = fake_run(tmp_path, base)
    done = export_stage(run.path, 2, tmp_path / "merged", merged=True)
    assert done.form == "merged"
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert not hasattr(merged, "peft_config")
    assert_same_logits(logits(merged), logits(model))
    assert AutoTokenizer.from_pretrained(tmp_path / "merged")("ab")["input_ids"]


def test_full_fine_tuning_exports_the_whole_model(tmp_path, base):
    from transformers import AutoModelForCausalLM

    run, model = fake_run(tmp_path, base, finetune="full")
    assert not (run.phase_dir(2) / "adapter").exists()  # full models: on export only
    done = export_stage(run.path, 2, tmp_path / "full")
    assert done.form == "full"
    assert_same_logits(logits(AutoModelForCausalLM.from_pretrained(tmp_path / "full")),
                       logits(model))


def test_push_to_hub_uploads_the_export_through_hf_api(tmp_path, base, monkeypatch):
    calls = []

    class FakeApi:
        def create_repo(self, **kwargs):
            calls.append(("create_repo", kwargs))

        def upload_folder(self, **kwargs):
            names = sorted(p.name for p in Path(kwargs["folder_path"]).iterdir())
            calls.append(("upload_folder", kwargs, names))

    monkeypatch.setattr("huggingface_hub.HfApi", FakeApi)
    run, _ = fake_run(tmp_path, base)
    done = export_stage(run.path, 2, tmp_path / "out", push_to_hub="me/adapter")
    assert done.pushed == "me/adapter"
    (_, created), (_, upload, names) = calls
    assert created["repo_id"] == "me/adapter" and upload["repo_id"] == "me/adapter"
    assert upload["folder_path"] == str(tmp_path / "out")
    assert names == ["adapter_config.json", "adapter_model.safetensors", MANIFEST]


def test_a_failed_upload_is_one_line_and_keeps_the_export(tmp_path, base, monkeypatch):
    class Offline:
        def create_repo(self, **kwargs):
            raise ConnectionError("no route to host\nmore")

    monkeypatch.setattr("huggingface_hub.HfApi", Offline)
    run, _ = fake_run(tmp_path, base)
    with pytest.raises(ExportError, match=r"upload failed \(no route to host\); the export is"):
        export_stage(run.path, 2, tmp_path / "out", push_to_hub="me/adapter")
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()


def test_refusals_are_one_line(tmp_path, base, capsys):
    run, _ = fake_run(tmp_path, base, phases=(1,))
    capsys.readouterr()  # the model loads' progress bars
    cases = [
        ([str(tmp_path / "nowhere"), "--stage", "1"], "nowhere: no such run directory"),
        ([str(tmp_path), "--stage", "1"], "config.yaml: missing; not an everlearn run"),
        ([str(run.path), "--stage", "2"], "--stage 2: no finished stage checkpoint "
                                          "(finished: 1)"),
    ]
    for argv, message in cases:
        assert main(["export", *argv, "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("x")
    assert main(["export", str(run.path), "--stage", "1", "--out", str(tmp_path / "full")]) == 2
    assert "exists and is not an empty directory" in capsys.readouterr().err
    assert (tmp_path / "full" / "mine.txt").read_text() == "x"
    assert not (tmp_path / "o").exists()


def test_the_command_says_what_it_wrote(tmp_path, base, capsys):
    run, _ = fake_run(tmp_path, base)
    capsys.readouterr()
    assert main(["export", str(run.path), "--stage", "2", "--out", str(tmp_path / "o")]) == 0
    assert f"stage 2 (green): adapter written to {tmp_path / 'o'}" in capsys.readouterr().out


def test_a_strategy_whose_state_is_not_the_weights_is_refused(tmp_path, base):
    run, _ = fake_run(tmp_path, base)
    data = yaml.safe_load(run.config.read_text())
    data["strategies"] = [{"name": "merge", "options": {}}]
    run.config.write_text(yaml.safe_dump(data))
    with pytest.raises(ExportError, match="strategies: 'merge' is not exportable: under LoRA"):
        export_stage(run.path, 1, tmp_path / "out")


def test_weights_not_kept_name_keep_stage_weights(tmp_path, base):
    run, _ = fake_run(tmp_path, base)
    run.drop_weights(1)
    assert not (run.phase_dir(1) / "adapter").exists()  # the adapter goes with the weights
    with pytest.raises(ExportError, match="not kept for this phase.*keep_stage_weights: all"):
        export_stage(run.path, 1, tmp_path / "out")


def test_routed_lora_refuses_merged(tmp_path, base):
    run, _ = fake_run(tmp_path, base)
    data = yaml.safe_load(run.config.read_text())
    data["strategies"] = [{"name": "routed_lora", "options": {}}]
    run.config.write_text(yaml.safe_dump(data))
    with pytest.raises(ExportError, match="routed_lora picks one adapter per record"):
        export_stage(run.path, 1, tmp_path / "out", merged=True)

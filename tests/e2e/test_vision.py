"""Visual instruction stages in runs: the image decides the prediction, the alignment stage,
routing by the per-stage projector, and resuming - on the tiny LLaVA (32x32 images, a few steps)."""

from __future__ import annotations

import json

import pytest
import torch

from everlearn.errors import ConfigError, TrainingError
from everlearn.runs.runner import Run, resume_run, start_run
from everlearn.validation import build_config, load_config
from everlearn.vision import scenes
from everlearn.vision.models import build_tiny_llava
from everlearn.vision.parts import find_parts
from tests.conftest import killed_at_phase, write_jsonl
from tests.helpers.crash_resume import comparable
from tests.helpers.vision import tiny_vision_config


def test_the_image_decides_the_prediction(tmp_path):
    """Eight pictures, one prompt: trained on them, the model answers each picture's colour, and
    with the colours' pictures swapped it answers the other colour - so it reads the image."""
    (tmp_path / "img").mkdir()
    rows, swapped = [], []
    for i in range(8):
        colour, kind = ["red", "blue"][i % 2], ["circle", "square"][i // 4]
        spec = f"scene:64;bg=255,255,255;{kind},{colour},{28 + i},{36 - i},{14 + i % 3}"
        scenes.render(scenes.parse(spec)).save(tmp_path / "img" / f"{i}.png")
        rows.append({"image": f"img/{i}.png", "prompt": "What colour?", "response": colour})
        swapped.append(dict(rows[-1], response=["blue", "red"][i % 2]))
    write_jsonl(tmp_path / "train.jsonl", rows)
    write_jsonl(tmp_path / "swapped.jsonl", swapped)
    cfg = tiny_vision_config(tmp_path, [{"name": "mem", "train": "train.jsonl",
                                         "test": "swapped.jsonl"}], train={
        "lr": 3e-3, "batch_size": 8, "steps": 40, "max_length": 96, "precision": "fp32",
        "warmup_ratio": 0.0, "schedule": "constant"})
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    _, res = start_run(load_config(tmp_path / "cfg.json"), tmp_path / "run", quiet=True)
    assert res["stages"][0]["metric"] == "accuracy"
    assert res["R"][0][0] == 50.0  # untrained: one answer for everything
    assert res["R"][1][0] <= 12.5  # trained: follows the (swapped) pictures


def test_alignment_stage_trains_vision_parts_only(tmp_path, monkeypatch):
    cfg = build_config(tiny_vision_config(tmp_path, [
        {"name": "cap", "builtin": "visual_captions", "freeze_lm": True, "max_train": 16,
         "max_test": 4, "lr": 5e-3}]))
    rates = []
    adamw = torch.optim.AdamW
    monkeypatch.setattr(torch.optim, "AdamW", lambda params, lr, **kw: (
        rates.append(lr), adamw(params, lr=lr, **kw))[1])
    run = Run(cfg, tmp_path / "run", quiet=True)
    res = run.execute()
    assert rates == [5e-3]  # the stage's own lr, not train.lr
    fresh, _ = build_tiny_llava()
    before, after = dict(fresh.named_parameters()), dict(run.model.named_parameters())
    parts = find_parts(fresh)
    vision = {f"{parts.tower_name}.", f"{parts.projector_name}."}
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and all(n.startswith(tuple(vision)) for n in changed)
    assert any(n.startswith(parts.tower_name) for n in changed)
    assert any(n.startswith(parts.projector_name) for n in changed)
    n_vision = sum(p.numel() for p in parts.tower.parameters()) + sum(
        p.numel() for p in parts.projector.parameters())
    assert res["cost"][0]["trainable_params"] == n_vision
    from safetensors.torch import load_file
    saved = load_file(tmp_path / "run" / "checkpoints" / "phase-01" / "trainable.safetensors")
    assert {n for n in before if n.startswith(tuple(vision))} <= set(saved)  # resumable


def test_text_model_refuses_image_stages(tmp_path):
    cfg = build_config(tiny_vision_config(tmp_path, [
        {"name": "col", "builtin": "visual_colour", "max_train": 8, "max_test": 4}],
        model={"name": "tiny-llama"}))
    with pytest.raises(ConfigError, match="stage 'col': its records carry images"):
        start_run(cfg, tmp_path / "run", quiet=True)


def test_alignment_stage_cannot_share_a_phase(tmp_path):
    cfg = build_config(tiny_vision_config(tmp_path, [
        {"name": "cap", "builtin": "visual_captions", "freeze_lm": True, "max_train": 8,
         "max_test": 2},
        {"name": "col", "builtin": "visual_colour", "max_train": 8, "max_test": 2}],
        strategies=["joint"]))
    with pytest.raises(TrainingError, match="an alignment stage .* cannot train in one phase"):
        start_run(cfg, tmp_path / "run", quiet=True)
    assert not (tmp_path / "run" / "results.json").exists()  # refused before the base row


@pytest.fixture
def projector_stream(tmp_path) -> dict:
    return tiny_vision_config(tmp_path, [
        {"name": "vis", "builtin": "visual_shapes",
         "builtin_options": {"tasks": ["colour", "shape"], "train_size": 16, "test_size": 6}}],
        scenario="DIL", strategies=["stage_projector"],
        eval={"batch_size": 16, "general_probes": ["kl"], "general_max_new_tokens": 2})


def test_stage_projector_routes_by_prototype_and_resumes(tmp_path, projector_stream,
                                                         monkeypatch):
    cfg = build_config(projector_stream)
    run = Run(cfg, tmp_path / "a", quiet=True)
    full = run.execute()
    assert full["rows"] == ["base", "vis-colour", "vis-shape"]
    strategy = run.strategy.members[0]
    # the two tasks' images differ (background): every test image goes to its own projector
    assert full["strategy_metrics"]["stage_projector"]["routing_accuracy"][-1]["mean"] == 100.0
    one, two = strategy.projectors["projector1"], strategy.projectors["projector2"]
    assert any(not torch.equal(one[k], two[k]) for k in one)
    colour_record = run.stream.stages[0].test[0]
    assert strategy.route(colour_record) == "projector1"
    assert strategy.activate(run.model, "projector1")
    live = dict(find_parts(run.model).projector.named_parameters())
    assert all(torch.equal(live[k], one[k]) for k in one)
    assert "general" in full  # text probes measured on the vision-language model
    # killed in phase 2, resumed: the same results as the uninterrupted run
    with killed_at_phase(monkeypatch, 2):
        start_run(build_config(projector_stream), tmp_path / "b", quiet=True)
    _, resumed = resume_run(tmp_path / "b", quiet=True)
    assert comparable(resumed) == comparable(full)


def test_strategies_compose_on_visual_stages(tmp_path):
    cfg = build_config(tiny_vision_config(tmp_path, [
        {"name": "cap", "builtin": "visual_captions", "freeze_lm": True, "max_train": 16,
         "max_test": 4},
        {"name": "vis", "builtin": "visual_shapes",
         "builtin_options": {"tasks": ["count", "position"], "train_size": 16, "test_size": 4}}],
        model={"name": "tiny-llava", "finetune": "lora"},
        strategies=["stage_projector", "inc_lora", {"name": "replay", "buffer_size": 8},
                    {"name": "ewc", "fisher_samples": 4}]))
    run = Run(cfg, tmp_path / "run", quiet=True)
    res = run.execute()
    projector, inc, replay, ewc = run.strategy.members
    assert res["rows"] == ["base", "cap", "vis-count", "vis-position"]
    assert inc.names == ["stage1", "stage2", "stage3"]
    lora = [n for n, _ in run.model.named_parameters() if "lora_" in n]
    assert lora and all(".language_model." in n for n in lora)  # LoRA on the LM only
    assert len(replay.buffer) == 8 and all(r.image for _, r in replay.buffer)
    assert [idx for idx, _, _ in ewc.terms] == [1, 2]
    assert any("multi_modal_projector" in n and f.abs().sum() > 0
               for n, f in ewc.terms[1][1].items())  # the Fisher saw the images
    assert set(projector.projectors) == {"shared", "projector2", "projector3"}


def test_routed_lora_routes_visual_stages_by_prototype(tmp_path):
    """Per-stage LoRA with routing on image stages: each test record goes to its own stage's
    adapter (DIL: no task id; the prototypes are the base model's hidden states of prompt and
    image)."""
    cfg = build_config(tiny_vision_config(tmp_path, [
        {"name": "vis", "builtin": "visual_shapes",
         "builtin_options": {"tasks": ["colour", "count"], "train_size": 16, "test_size": 8}}],
        model={"name": "tiny-llava", "finetune": "lora"}, scenario="DIL",
        strategies=["routed_lora"]))
    run = Run(cfg, tmp_path / "run", quiet=True)
    res = run.execute()
    routing = res["strategy_metrics"]["routed_lora"]["routing_accuracy"]
    assert [r["after"] for r in routing] == ["vis-colour", "vis-count"]
    assert routing[-1]["per_stage"] == {"vis-colour": 100.0, "vis-count": 100.0}
    assert run.strategy.members[0].names == ["stage1", "stage2"]

"""Recyclable tuning on the tiny model: adapters on the old base, a base update, every policy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from everlearn.cli import main
from everlearn.errors import ModelError
from everlearn.models.loading import build_tiny_model, build_tiny_tokenizer
from everlearn.report.tables import format_summary
from everlearn.runs.base_weights import base_parameters
from everlearn.runs.recycle import RecycleRun
from everlearn.runs.recycle_distill import Distill
from everlearn.runs.runner import resume_run, start_run
from everlearn.training.trainer import Trainer
from everlearn.validation import build_config
from tests.conftest import killed_at_phase
from tests.helpers.recycle import DISTILL, RETUNE, STEPS, recycle_config

pytestmark = pytest.mark.filterwarnings("ignore:Model has `tie_word_embeddings=True`")  # LORA

POLICIES = ["reapply", "retune", "distill", "scratch"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One complete recycle run (the run object kept, to inspect its model)."""
    tmp = tmp_path_factory.mktemp("recycle")
    cfg = build_config(recycle_config(tmp))
    steps: list[tuple[int, int]] = []  # (trainer phase, optimizer steps actually taken)
    original_phase, original_step = Trainer.train_phase, torch.optim.AdamW.step
    counter = {"n": 0}

    def counting_step(self, *a, **kw):
        counter["n"] += 1
        return original_step(self, *a, **kw)

    def recording_phase(self, model, stages, phase):
        counter["n"] = 0
        out = original_phase(self, model, stages, phase)
        steps.append((phase, counter["n"]))
        return out

    mp = pytest.MonkeyPatch()
    mp.setattr(Trainer, "train_phase", recording_phase)
    mp.setattr(torch.optim.AdamW, "step", counting_step)
    try:
        run = RecycleRun(cfg, tmp / "run", quiet=True)
        results = run.execute()
    finally:
        mp.undo()
    return run, results, dict(steps)


def test_results_hold_every_task_and_policy_with_score_and_cost(finished):
    run, res, _ = finished
    assert res["status"] == "complete" and res["strategies"] == ["recycle"]
    on_disk = json.loads((run.dir.results).read_text())
    assert on_disk["recycling"] == res["recycling"]
    rec = res["recycling"]
    assert rec["policies"] == POLICIES
    assert rec["update"]["source"] == "cpt" and rec["update"]["steps"] == 6
    assert rec["update"]["relative_change"] > 0
    assert list(rec["tasks"]) == ["red", "green"]
    for name, task in rec["tasks"].items():
        assert task["old_adapter"]["steps"] == STEPS
        assert isinstance(task["new_base"]["score"], float)
        assert set(task["policies"]) == set(POLICIES)
        for policy, entry in task["policies"].items():
            for key in ("score", "steps", "wall_time_s", "kl_to_old", "delta_vs_old"):
                assert isinstance(entry[key], (int, float)), (name, policy, key)
            assert entry["kl_to_old"] >= 0
        assert [task["policies"][p]["steps"] for p in POLICIES] == [0, RETUNE, DISTILL, STEPS]
    assert set(rec["summary"]) == {"old_adapter", "new_base", *POLICIES}
    assert rec["summary"]["scratch"]["steps"] == 2 * STEPS
    # R: base, one row per adapter (the task with its own adapter), the update (reapply)
    R = res["R"]
    assert res["rows"] == ["base", "red", "green", "news"] and len(R) == 4
    old = [rec["tasks"][t]["old_adapter"]["score"] for t in ("red", "green")]
    assert max(old) == 100.0  # the adapters learned their (constant) answers
    assert R[0][:2] == [0.0, 0.0] and R[1][:2] == [old[0], 0.0] and R[2][:2] == old
    assert R[3][:2] == [rec["tasks"][t]["policies"]["reapply"]["score"] for t in ("red", "green")]
    assert R[3][2] == rec["update"]["scores"]["new_base"] < rec["update"]["scores"]["old_base"]
    assert "main" in res["metrics"] and [c["steps"] for c in res["cost"]] == [STEPS, STEPS, 6]
    text = format_summary(res)
    assert "Recycling adapters" in text and "distill" in text and "scratch" in text


def test_scratch_retune_and_distill_train_the_stated_steps(finished):
    run, _, steps = finished
    assert steps[1] == steps[2] == STEPS  # the adapters on the old base
    assert steps[3] == 6  # the base update (cpt stage budget)
    for task in ("red", "green"):
        assert steps[run.units[(task, "retune")]] == RETUNE
        assert steps[run.units[(task, "distill")]] == DISTILL
        assert steps[run.units[(task, "scratch")]] == STEPS


def test_reapply_puts_exactly_the_old_adapter_on_the_new_base(finished):
    run, res, _ = finished
    ckpt = run.dir.path / "checkpoints"
    old = load_file(ckpt / "phase-01" / "trainable.safetensors")
    reapplied = load_file(ckpt / "recycled" / "task01-reapply.safetensors")
    assert old.keys() == reapplied.keys() and old
    assert all(torch.equal(old[k], reapplied[k]) for k in old)
    run._use("new", run.adapters[0])
    params = dict(run.model.named_parameters())
    assert all(torch.equal(params[k], old[k]) for k in old)
    base = base_parameters(run.model)
    assert all(torch.equal(p, run.new_base[n]) for n, p in base.items())
    assert any(not torch.equal(run.new_base[n], run.old_base[n]) for n in base)
    score = run.evaluator.score(run.model, run.tasks[0]).score
    assert score == res["recycling"]["tasks"]["red"]["policies"]["reapply"]["score"]


def test_distill_lowers_the_kl_to_the_old_model_on_the_task_inputs(finished):
    run, res, _ = finished
    ckpt = run.dir.path / "checkpoints" / "recycled"
    for k, task in enumerate(run.tasks, 1):
        teacher = Distill(run.ctx, 1.0, 50)
        run._use("old", run.adapters[k - 1])
        teacher.set_teacher(task.train)  # the old base + adapter on the training inputs
        assert teacher.mean_kl(run.model, task.train) == pytest.approx(0.0, abs=1e-6)
        run._use("new", run.adapters[k - 1])
        before = teacher.mean_kl(run.model, task.train)
        run._use("new", load_file(ckpt / f"task{k:02d}-distill.safetensors"))
        after = teacher.mean_kl(run.model, task.train)
        assert after < before, task.name
        policies = res["recycling"]["tasks"][task.name]["policies"]
        assert policies["distill"]["kl_to_old"] < policies["reapply"]["kl_to_old"]


@pytest.mark.parametrize("phase", [2, 3, 7])  # an adapter, the update, (green, retune)
def test_resume_after_a_kill_equals_uninterrupted(tmp_path, monkeypatch, finished, phase):
    _, full, _ = finished
    cfg = build_config(recycle_config(tmp_path))
    with killed_at_phase(monkeypatch, phase):
        start_run(cfg, tmp_path / "killed", quiet=True)
    partial = json.loads((tmp_path / "killed" / "results.json").read_text())
    assert partial["status"] == "running"
    _, resumed = resume_run(tmp_path / "killed", quiet=True)
    assert resumed["R"] == full["R"] and resumed["metrics"] == full["metrics"]

    def scores(res):
        return {t: {p: (e["score"], e["steps"], round(e["kl_to_old"], 6))
                    for p, e in task["policies"].items()}
                for t, task in res["recycling"]["tasks"].items()}

    assert scores(resumed) == scores(full)


def _save_tiny(path: Path, **kw) -> Path:
    tok = build_tiny_tokenizer()
    build_tiny_model(tok, **kw).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_a_new_base_checkpoint_replaces_the_update_stage(tmp_path):
    new = _save_tiny(tmp_path / "vendor-v2", seed=1)
    cfg = build_config(recycle_config(tmp_path, cpt_update=False, new_base=str(new),
                               policies=["reapply", "retune"]))
    path, res = start_run(cfg, tmp_path / "run", quiet=True)
    rec = res["recycling"]
    assert rec["update"]["source"] == "checkpoint" and rec["update"]["new_base"] == str(new)
    assert len(res["R"]) == 3 and res["rows"] == ["base", "red", "green"]
    for task in rec["tasks"].values():
        assert set(task["policies"]) == {"reapply", "retune"}
    assert (path / "checkpoints" / "recycled" / "task02-retune.safetensors").exists()


def test_a_lora_update_is_merged_into_the_base(tmp_path):
    cfg = recycle_config(tmp_path, update="lora", policies=["reapply"])
    cfg["model"]["lora"] = {"r": 4}  # all-linear: merging into the tied lm_head would also
    cfg = build_config(cfg)  # change the input embeddings
    run = RecycleRun(cfg, tmp_path / "run", quiet=True)
    res = run.execute()
    assert res["recycling"]["update"]["finetune"] == "lora"
    changed = {n for n in run.old_base if not torch.equal(run.old_base[n], run.new_base[n])}
    assert changed and all("proj" in n for n in changed)  # the adapted linears only
    assert not any("lora" in n for n in run.new_base)


def test_a_new_base_of_another_architecture_is_refused_before_training(tmp_path):
    other = _save_tiny(tmp_path / "wider", hidden=32)
    cfg = build_config(recycle_config(tmp_path, cpt_update=False, new_base=str(other)))
    with pytest.raises(ModelError, match=r"recycle\.new_base: .*shape") as err:
        start_run(cfg, tmp_path / "run", quiet=True)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_missing_new_base_is_one_line_naming_the_field(tmp_path, capsys):
    cfg = recycle_config(tmp_path, cpt_update=False, new_base=str(tmp_path / "nowhere"))
    cfg_file = tmp_path / "recycle.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(cfg_file), "-q", "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "recycle.new_base" in err and "not found" in err


def test_the_report_has_a_recycling_section(finished):
    from everlearn.report import write_report

    run, _, _ = finished
    html = Path(write_report(run.dir.path)).read_text(encoding="utf-8")
    assert "Recycling adapters over the base update" in html and "scratch" in html
    assert 'class="other"' not in html or "recycling</h3>" not in html

"""`everlearn export`: a run's stage as files other tools load, optionally pushed to the Hub.

From a stage checkpoint (``RUN_DIR/checkpoints/phase-K``, checksums verified) and the run's
``config.yaml``:

* LoRA: the stage's adapter as a PEFT adapter directory (everlearn.runs.peft_adapter says which
  adapter each strategy exports as); ``merged``: the base model with that adapter merged in
  (PEFT's ``merge_and_unload``), written with ``save_pretrained`` with its tokenizer, so
  ``AutoModelForCausalLM.from_pretrained(OUT)`` loads it without PEFT.
* Full fine-tuning: the whole model at that stage, written with ``save_pretrained`` with its
  tokenizer. Only on export: a run already stores every weight in ``trainable.safetensors``, and
  a second full copy per stage would double the run directory's size.

``OUT`` gets ``everlearn-export.json`` (run, stage, strategies, form, base model) and is written
as a whole (a temporary directory renamed into place), so a failed export leaves nothing behind.
``push_to_hub``: the directory is uploaded with huggingface_hub's ``HfApi.upload_folder``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from everlearn.errors import EverlearnError, ExportError, first_line
from everlearn.runs.peft_adapter import (
    export_form,
    fill_adapter_dir,
    peft_adapters,
    stage_entries,
)
from everlearn.runs.run_dir import RunDir

MANIFEST = "everlearn-export.json"


@dataclass
class Exported:
    """What ``export_stage`` wrote: the directory, its form (``adapter``, ``adapter_sum``,
    ``stage_adapters``, ``merged`` or ``full``), the phase and the stages it had trained, and
    the Hub repository it went to (None: not pushed)."""

    out: Path
    form: str
    phase: int
    stages: list[str] = field(default_factory=list)
    base_model: str | None = None
    pushed: str | None = None


def export_stage(run_dir: str | Path, stage: int, out: str | Path, merged: bool = False,
                 push_to_hub: str | None = None) -> Exported:
    """Export phase ``stage`` (1-based, as ``checkpoints/phase-NN``) of ``run_dir`` into
    ``out``, which must not exist or be empty."""
    from everlearn.validation import load_config

    run = RunDir(run_dir)
    if not run.path.is_dir():
        raise ExportError(f"{run.path}: no such run directory")
    if not run.config.is_file():
        raise ExportError(f"{run.config}: missing; not an everlearn run directory")
    cfg = load_config(run.config)
    source = str(run.config)
    if cfg.recycle is not None:
        raise ExportError(f"{source}: recycle: a recyclable-tuning run keeps its adapters in "
                          "its own layout; it is not exportable by stage")
    form = export_form([s.name for s in cfg.strategies], cfg.model.finetune, source)
    if merged and form == "stage_adapters":
        raise ExportError(f"{source}: strategies: routed_lora picks one adapter per record; "
                          "--merged needs a single adapter (export without --merged to get "
                          "one adapter per stage)")
    weights, state = load_stage(run, stage, cfg.keep_stage_weights)
    target = check_out(Path(out))
    stages = phase_stages(run, stage)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        form, base = write_export(cfg, source, form, merged, weights, state, tmp)
        (tmp / MANIFEST).write_text(json.dumps(
            {"run_dir": str(run.path.resolve()), "phase": stage, "stages": stages,
             "strategies": [s.name for s in cfg.strategies], "finetune": cfg.model.finetune,
             "form": form, "base_model": base}, indent=2) + "\n", encoding="utf-8")
        if target.exists():
            target.rmdir()  # empty (check_out)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    done = Exported(target, form, stage, stages, base)
    if push_to_hub:
        done.pushed = push(target, push_to_hub, f"everlearn export: {cfg.name}, phase {stage}")
    return done


def load_stage(run: RunDir, stage: int, keep: str):
    """(weights, strategy state) of phase ``stage``, verified; one-line errors otherwise."""
    finished = sorted(int(d.name[6:]) for d in (run.path / "checkpoints").glob("phase-*")
                      if d.name[6:].isdigit() and (d / "done.json").is_file())
    if stage not in finished:
        have = ", ".join(map(str, finished)) or "none"
        raise ExportError(f"{run.path}: --stage {stage}: no finished stage checkpoint "
                          f"(finished: {have})")
    try:
        return run.load_phase(stage, need_weights=True)
    except EverlearnError as exc:
        hint = (f" (keep_stage_weights: {keep} keeps only the last stage's weights; set "
                "keep_stage_weights: all to export every stage)"
                if "not kept" in str(exc) else "")
        raise ExportError(f"{exc}{hint}") from None


def check_out(out: Path) -> Path:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out}: exists and is not an empty directory; choose another --out")
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            raise ExportError(f"{out}: {parent} is a file, not a directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out.resolve()


def phase_stages(run: RunDir, stage: int) -> list[str]:
    """The names of the stages phase ``stage`` trained, from results.json (empty if unknown)."""
    try:
        phases = json.loads(run.results.read_text(encoding="utf-8")).get("phases") or []
        return list(phases[stage - 1])
    except (OSError, ValueError, IndexError, TypeError, AttributeError):
        return []


def write_export(cfg, source: str, form: str, merged: bool, weights, state,
                 tmp: Path) -> tuple[str, str]:
    """Fill ``tmp`` with the export; (the form written, the base model it applies to)."""
    from everlearn.models.loading import load_base_model, load_trainable_state, make_trainable
    from everlearn.vision import is_vision_model

    model, tok = load_base_model(cfg.model, source)
    if is_vision_model(model):
        raise ExportError(f"{source}: model.name: vision-language models are not exportable "
                          "(AutoModelForCausalLM cannot load them)")
    if form == "full":
        load_trainable_state(model, weights, source)
        save_model(model, tok, tmp)
        return "full", cfg.model.name
    peft_model = make_trainable(model, cfg.model, source=source)
    lora = peft_model.peft_config["default"]
    base = lora.base_model_name_or_path or cfg.model.name
    names = [s.name for s in cfg.strategies]
    adapters = peft_adapters(form, lora, weights, state, names)
    if not merged:
        fill_adapter_dir(tmp, adapters, base, stage_entries(form, state, names))
        return form, base
    from peft import PeftModel

    with tempfile.TemporaryDirectory(dir=tmp.parent) as scratch:
        fill_adapter_dir(Path(scratch), adapters, base)
        plain = PeftModel.from_pretrained(peft_model.unload(), scratch)
        save_model(plain.merge_and_unload(), tok, tmp)
    return "merged", base


def save_model(model, tok, out: Path) -> None:
    model.save_pretrained(str(out))
    if hasattr(tok, "save_pretrained"):
        tok.save_pretrained(str(out))


def push(folder: Path, repo: str, message: str) -> str:
    """Upload ``folder`` to the Hub model repository ``repo`` (created if needed)."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo_id=repo, repo_type="model", exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo, repo_type="model",
                          commit_message=message)
    except Exception as exc:  # network, auth, a bad name: one line, the export stays on disk
        first = first_line(exc)
        raise ExportError(f"--push-to-hub {repo}: upload failed ({first}); the export is in "
                          f"{folder}") from None
    return repo

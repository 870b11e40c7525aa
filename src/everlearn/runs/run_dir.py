"""The run directory: atomic writes, stage checkpoints with checksums, and reading them back.

Layout::

    RUN_DIR/config.yaml            resolved config (what --resume reruns)
    RUN_DIR/results.json           R so far, metrics, cost per phase (rewritten after each phase)
    RUN_DIR/checkpoints/phase-01/  trainable.safetensors, strategy.safetensors, strategy.json,
                                   optimizer.safetensors (a text stream: AdamW's state, carried
                                   over the boundary), adapter/ (LoRA runs: the phase's adapter
                                   as PEFT saves one, everlearn.runs.peft_adapter), done.json
                                   (written last: names the files and their sha256)
    RUN_DIR/checkpoints/steps/phase-02-step-000040/
                                   a step checkpoint inside a phase (train.checkpoint_every,
                                   or an interrupt): state.safetensors (weights, optimizer,
                                   RNG and strategy tensors), state.json, done.json; only the
                                   newest is kept

A directory is a run directory when everlearn made it: ``RUN_DIR/everlearn-run.json`` is written
first, and a new run writes only into a new or empty directory or one with that marker and no
run in it yet (``claim_run_dir``), so a user's own files are never written over.

Every file is written to a temporary name and renamed, so a killed run never leaves a
half-written file that a resume would trust. In a multi-process run (torchrun, accelerate
launch) only rank 0 writes: on the other ranks, which hold the same values, the writers here
return without touching the disk.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save, save_file

from everlearn.errors import ConfigError, ResumeError
from everlearn.parallel import distributed as dist
from everlearn.training import stepstate

log = logging.getLogger("everlearn")
ADAPTER_DIR = "adapter"  # a phase's LoRA as a PEFT adapter directory (runs.peft_adapter)


def umask() -> int:
    """The process's file-mode creation mask (read by setting it and setting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: 0666 less the umask. ``mkstemp`` creates
    its files 0600 whatever the umask, so the atomic writers set this mode before renaming."""
    return 0o666 & ~umask()


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write ``path`` through a temporary sibling and a rename, with the mode a plain ``open``
    would give it (:func:`new_file_mode`)."""
    if not dist.is_main():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, new_file_mode())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """safetensors, written atomically (an empty dict still writes a valid file), with the mode
    a plain ``open`` would give it."""
    if not dist.is_main():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp)
        os.chmod(tmp, new_file_mode())  # save_file writes the file anew, 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


_TEMPORARY = re.compile(r"^\..+\.[A-Za-z0-9_]{8}$")  # tempfile.mkstemp's prefix + 8 random
MARKER = "everlearn-run.json"  # not a dot-file: those are atomic writes in progress


def check_new_run_dir(path: Path) -> None:
    """Refuse, in one line, a ``path`` that a new run must not write into: a file, a link to
    nothing, a path under a file, a directory that holds a run already, or one that holds
    files everlearn did not write (no marker). Reads only."""
    if path.is_symlink() and not path.exists():
        raise ConfigError(f"{path}: a symbolic link to nothing; expected a directory")
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{path}: exists and is not a directory")
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise ConfigError(f"{path}: {parent} is a file, not a directory")
    if not path.is_dir():
        return
    if (path / "results.json").exists():
        raise ConfigError(f"{path}: already holds a run; use --resume {path} or another --output")
    if any(path.iterdir()) and not (path / MARKER).exists():
        raise ConfigError(f"{path}: holds files everlearn did not write (no {MARKER}); a run "
                          "writes only into a new or empty directory, so choose another --output")


def claim_run_dir(path: Path) -> None:
    """Create ``path`` (if needed) and mark it as everlearn's run directory (rank 0 writes)."""
    if not dist.is_main():
        return
    path.mkdir(parents=True, exist_ok=True)
    if not (path / MARKER).exists():
        from everlearn import __version__

        write_json(path / MARKER, {"everlearn": __version__})


def check_resumable(path: Path) -> None:
    """A resume writes into ``path``: only into a run directory everlearn made (its marker, or
    results.json from a run older than the marker)."""
    if not (path / "config.yaml").exists():
        raise ResumeError(f"{path}: config.yaml: missing; not an everlearn run directory")
    if not (path / MARKER).exists() and not (path / "results.json").exists():
        raise ResumeError(f"{path}: not a run directory everlearn made (no {MARKER} and no "
                          "results.json); start a run with --output instead")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class RunDir:
    """Paths and checkpoint I/O of one run directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def remove_temporaries(self) -> list[Path]:
        """Delete what a killed write left behind (``.<name>.<random>`` beside its target,
        from :func:`write_atomic` and :func:`save_tensors`); returns the paths removed. Nothing
        else starts with a dot in a run directory."""
        if not dist.is_main() or not self.path.is_dir():
            return []
        stale = [p for p in self.path.rglob(".*") if p.is_file() and _TEMPORARY.match(p.name)]
        for p in stale:
            p.unlink(missing_ok=True)
        return stale

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def results(self) -> Path:
        return self.path / "results.json"

    def phase_dir(self, phase: int) -> Path:
        return self.path / "checkpoints" / f"phase-{phase:02d}"

    def save_phase(self, phase: int, weights: dict[str, torch.Tensor] | None,
                   strategy_state: dict[str, Any],
                   optimizer: dict[str, torch.Tensor] | None = None,
                   extra: Callable[[Path], list[str]] | None = None) -> None:
        """Checkpoint a finished phase; ``done.json`` is written last and marks it complete.
        ``optimizer``: the optimizer state a text stream carries into its next segment.
        ``extra(phase_dir)`` writes more files there (the PEFT ``adapter/`` directory of
        everlearn.runs.peft_adapter) and names them, relative to it, for done.json."""
        if not dist.is_main():
            return
        d = self.phase_dir(phase)
        if d.exists():
            shutil.rmtree(d)
        files = {}
        if weights is not None:
            save_tensors(d / "trainable.safetensors", weights)
            files["trainable.safetensors"] = sha256(d / "trainable.safetensors")
        if optimizer is not None:
            save_tensors(d / "optimizer.safetensors", optimizer)
            files["optimizer.safetensors"] = sha256(d / "optimizer.safetensors")
        save_tensors(d / "strategy.safetensors", strategy_state.get("tensors", {}))
        write_json(d / "strategy.json", strategy_state.get("meta", {}))
        for name in ("strategy.safetensors", "strategy.json"):
            files[name] = sha256(d / name)
        for name in extra(d) if extra is not None else []:
            files[name] = sha256(d / name)
        write_json(d / "done.json", {"phase": phase, "files": files})

    def drop_weights(self, phase: int) -> None:
        """Remove a phase's weights (keep_stage_weights: last), the optimizer state and the
        PEFT adapter directory that go with them, but keep its strategy state."""
        if not dist.is_main():
            return
        d = self.phase_dir(phase)
        done = d / "done.json"
        if not done.exists():
            return
        meta = json.loads(done.read_text())
        adapter = [name for name in meta["files"] if name.startswith(f"{ADAPTER_DIR}/")]
        dropped = [name for name in ("trainable.safetensors", "optimizer.safetensors", *adapter)
                   if meta["files"].pop(name, None) is not None]
        if dropped:
            write_json(done, meta)
            for name in dropped:
                (d / name).unlink(missing_ok=True)
            shutil.rmtree(d / ADAPTER_DIR, ignore_errors=True)

    def load_phase(self, phase: int, need_weights: bool):
        """(weights or None, strategy state) of a finished phase, verified by checksum; a text
        stream's optimizer state, when saved, is the state's ``optimizer`` entry."""
        d = self.phase_dir(phase)
        done = d / "done.json"
        if not done.exists():
            raise ResumeError(f"{d}: done.json: missing; phase {phase} did not finish")
        try:
            files = json.loads(done.read_text())["files"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ResumeError(f"{done}: expected a JSON object with 'files'") from None
        for name, digest in files.items():
            f = d / name
            if not f.exists() or sha256(f) != digest:
                raise ResumeError(f"{f}: checksum mismatch or missing; the checkpoint is corrupt")
        if need_weights and "trainable.safetensors" not in files:
            raise ResumeError(f"{d}: trainable.safetensors: not kept for this phase")
        weights = load_file(d / "trainable.safetensors") if need_weights else None
        meta = json.loads((d / "strategy.json").read_text())
        tensors = load_file(d / "strategy.safetensors")
        state = {"meta": meta, "tensors": tensors}
        if need_weights and "optimizer.safetensors" in files:
            state["optimizer"] = load_file(d / "optimizer.safetensors")
        return weights, state

    # --- step checkpoints (inside a phase) -----------------------------------------------------
    @property
    def steps_dir(self) -> Path:
        return self.path / "checkpoints" / "steps"

    def step_dir(self, phase: int, step: int) -> Path:
        return self.steps_dir / f"phase-{phase:02d}-step-{step:06d}"

    def step_checkpoints(self) -> list[tuple[int, int, Path]]:
        """(phase, step, directory) of the step checkpoints on disk, newest first."""
        if not self.steps_dir.is_dir():
            return []
        found = []
        for d in self.steps_dir.iterdir():
            m = _STEP_DIR.fullmatch(d.name)
            if m and d.is_dir():
                found.append((int(m[1]), int(m[2]), d))
        return sorted(found, reverse=True)

    def save_step(self, phase: int, step: int, tensors: dict[str, dict[str, torch.Tensor]],
                  meta: dict[str, Any]) -> Path:
        """Write a step checkpoint, then delete every older one (the newest is kept alone).

        ``tensors`` maps a group to its tensors (``trainable`` -> weights, ``optimizer``, ...),
        stored in one ``state.safetensors`` as ``<group>/<name>`` (three files in all: each
        file costs an fsync, which dominates the time of a small checkpoint); ``meta`` goes to
        ``state.json``. The checksums are taken from the bytes in memory (no re-read);
        ``done.json`` is written last and marks the checkpoint complete.
        """
        d = self.step_dir(phase, step)
        if not dist.is_main():
            return d
        if d.exists():
            shutil.rmtree(d)
        data = save(stepstate.flatten(tensors))
        write_atomic(d / "state.safetensors", data)
        files = {"state.safetensors": hashlib.sha256(data).hexdigest()}
        text = json.dumps(meta, allow_nan=False) + "\n"
        write_atomic(d / "state.json", text)
        files["state.json"] = hashlib.sha256(text.encode("utf-8")).hexdigest()
        write_json(d / "done.json", {"phase": phase, "step": step, "files": files})
        for _, _, old in self.step_checkpoints():
            if old != d:
                shutil.rmtree(old, ignore_errors=True)
        return d

    def load_step(self, phase: int) -> dict[str, Any] | None:
        """The newest step checkpoint of ``phase`` that verifies, as {"meta": state.json,
        "tensors": {group: tensors}, "where": its directory}; None when there is none. A
        corrupt one is reported and skipped (the caller then trains the phase from its stage
        checkpoint)."""
        for p, step, d in self.step_checkpoints():
            if p != phase:
                continue
            try:
                return {**self._read_step(d, phase, step), "where": str(d)}
            except ResumeError as err:
                log.warning("%s; falling back to the stage checkpoint", err)
        return None

    def _read_step(self, d: Path, phase: int, step: int) -> dict[str, Any]:
        done = d / "done.json"
        if not done.exists():
            raise ResumeError(f"{d}: done.json: missing; the step checkpoint is incomplete")
        try:
            info = json.loads(done.read_text())
            files = info["files"]
            assert info["phase"] == phase and info["step"] == step and isinstance(files, dict)
        except (json.JSONDecodeError, KeyError, TypeError, AssertionError):
            raise ResumeError(f"{done}: expected a JSON object with phase {phase}, step {step} "
                              "and 'files'") from None
        if set(files) != {"state.safetensors", "state.json"}:
            raise ResumeError(f"{done}: files: expected state.safetensors and state.json")
        for name, digest in files.items():
            f = d / name
            if not f.exists() or sha256(f) != digest:
                raise ResumeError(f"{f}: checksum mismatch or missing; the step checkpoint is "
                                  "corrupt")
        return {"meta": json.loads((d / "state.json").read_text()),
                "tensors": stepstate.unflatten(load_file(d / "state.safetensors"))}

    def drop_steps(self, keep: int | None = None) -> None:
        """Delete the step checkpoints of every phase but ``keep`` (after a stage checkpoint,
        which supersedes them, all of them)."""
        if not dist.is_main():
            return
        for phase, _, d in self.step_checkpoints():
            if phase != keep:
                shutil.rmtree(d, ignore_errors=True)
        if self.steps_dir.is_dir() and not any(self.steps_dir.iterdir()):
            self.steps_dir.rmdir()  # a finished run keeps only its stage checkpoints


_STEP_DIR = re.compile(r"phase-(\d+)-step-(\d+)")

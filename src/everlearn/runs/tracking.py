"""Experiment trackers (TensorBoard, MLflow, Weights & Biases) through accelerate.

Chosen with the config section ``tracker`` (``tracker: tensorboard``), off by default. What is
logged, against the run's global optimizer step:

* ``train/loss`` and ``train/lr`` every ``tracker.log_every`` steps (values the training loop
  already holds: no extra device sync);
* after the base evaluation and after each phase: ``R/<stage>`` (the row of the accuracy
  matrix), ``AP`` (mean over the stages trained so far, higher-is-better stages only),
  ``phase`` and the phase's cost as ``cost/<field>`` (time, tokens, memory, parameters).

The resolved config goes in as hyper-parameters. A resumed run logs into the same tracker run
where the tracker can resume one (MLflow run id and W&B run id are kept in
``RUN_DIR/tracker.json``; TensorBoard appends to the same directory).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import secrets
from pathlib import Path
from typing import Any

from everlearn.config import RunConfig, to_dict
from everlearn.errors import ConfigError
from everlearn.runs.run_dir import write_json

# backend -> (modules accelerate can use, how to install one)
PACKAGES = {"tensorboard": (("tensorboard", "tensorboardX"), "pip install 'everlearn[trackers]'"),
            "mlflow": (("mlflow",), "pip install 'everlearn[trackers]' (or mlflow)"),
            "wandb": (("wandb",), "pip install wandb")}


def check_available(backend: str) -> None:
    """One-line error when the tracker's package is missing (accelerate would drop it
    silently and the run would log nothing)."""
    if backend == "none":
        return
    modules, install = PACKAGES[backend]
    if not any(importlib.util.find_spec(m) is not None for m in modules):
        raise ConfigError(f"tracker.backend: {backend!r} needs the {modules[0]} package, "
                          f"which is not installed: {install}")


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested config -> {dotted.key: scalar}; lists of scalars as JSON text."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        out = {}
        for i, v in enumerate(value):
            out.update(_flat(v, f"{prefix}{i}."))
        return out
    key = prefix.rstrip(".")
    if isinstance(value, list):
        return {key: json.dumps(value)}
    return {key: "null" if value is None else value}


def metric_name(text: str) -> str:
    """A name every backend accepts (MLflow allows letters, digits, _ - . / and space)."""
    return re.sub(r"[^\w\-./ ]", "_", text)


class Tracker:
    """One run's tracker; every method is a no-op when ``tracker.backend`` is ``none``."""

    def __init__(self, cfg: RunConfig, run_dir: Path):
        self.cfg = cfg.tracker
        self.run_config = cfg
        self.run_dir = Path(run_dir)
        self.enabled = self.cfg.backend != "none"
        check_available(self.cfg.backend)
        self.acc = None
        self.step = 0  # global optimizer step (the x axis of every logged value)
        self._state_path = self.run_dir / "tracker.json"

    def accelerator_kwargs(self) -> dict[str, Any]:
        """``log_with`` / ``project_dir`` for the run's Accelerator."""
        if not self.enabled:
            return {}
        kwargs: dict[str, Any] = {"log_with": self.cfg.backend}
        if self.cfg.backend == "tensorboard":
            kwargs["project_dir"] = str(Path(self.cfg.dir) if self.cfg.dir
                                        else self.run_dir / "tensorboard")
        return kwargs

    def start(self, acc, resume: bool = False) -> None:
        """``init_trackers`` on the run's Accelerator (after it was built with the kwargs)."""
        if not self.enabled:
            return
        self.acc = acc
        backend = self.cfg.backend
        state = self._read_state() if resume else {}
        run_name = self.run_dir.resolve().name
        project = self.cfg.project or self.run_config.name
        init: dict[str, Any] = {}
        if backend == "tensorboard":
            project = run_name  # the subdirectory of tracker.dir that holds this run's events
        elif backend == "mlflow":
            self._mlflow_uri()
            init = {"run_name": run_name}
            if state.get("run_id"):
                init = {"run_id": state["run_id"]}
        elif backend == "wandb":
            run_id = state.get("run_id") or secrets.token_hex(4)
            init = {"name": run_name, "id": run_id, "resume": "allow",
                    "dir": str(Path(self.cfg.dir) if self.cfg.dir else self.run_dir)}
            Path(init["dir"]).mkdir(parents=True, exist_ok=True)
            state = {"run_id": run_id}
        acc.init_trackers(project, config=_flat(to_dict(self.run_config)),
                          init_kwargs={backend: init} if init else {})
        if backend == "mlflow":
            state = {"run_id": acc.get_tracker("mlflow").tracker.info.run_id}
        if state and acc.is_main_process:
            write_json(self._state_path, {"backend": backend, **state})

    def _mlflow_uri(self) -> None:
        """``tracker.dir``: a tracking URI (``sqlite:///...``, ``http://...``, ``file:...``) or a
        directory for a local file store; unset: MLFLOW_TRACKING_URI, else RUN_DIR/mlruns."""
        import mlflow

        target = self.cfg.dir
        if target is None and os.environ.get("MLFLOW_TRACKING_URI"):
            return
        if target is None or (":" not in target and target != "databricks"):  # a directory
            path = Path(target) if target else self.run_dir / "mlruns"
            target = path.resolve().as_uri()
        if target.startswith("file:"):
            # MLflow 3 refuses its file store unless asked for; a local directory is asked for.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        mlflow.set_tracking_uri(target)

    def _read_state(self) -> dict[str, Any]:
        try:
            state = json.loads(self._state_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return state if state.get("backend") == self.cfg.backend else {}

    def on_step(self, loss: float, lr: float) -> None:
        """Called by the trainer after every optimizer step."""
        self.step += 1
        if self.acc is not None and self.step % self.cfg.log_every == 0:
            self.acc.log({"train/loss": loss, "train/lr": lr}, step=self.step)

    def log_row(self, phase: int, row: list[float], stages: list, trained: set[str],
                cost: dict[str, Any] | None = None) -> None:
        """The row of R after ``phase`` (0: the base model), AP so far and the phase's cost."""
        if self.acc is None:
            return
        values: dict[str, float] = {"phase": float(phase)}
        for st, score in zip(stages, row):
            if score is not None:  # None: a stage the eval schedule skipped in this row
                values[metric_name(f"R/{st.name}")] = float(score)
        seen = [score for st, score in zip(stages, row)
                if st.name in trained and st.higher_is_better and score is not None]
        if seen:
            values["AP"] = sum(seen) / len(seen)
        for key, value in (cost or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "phase":
                values[metric_name(f"cost/{key}")] = float(value)
        self.acc.log(values, step=self.step)

    def finish(self) -> None:
        if self.acc is not None:
            acc, self.acc = self.acc, None
            acc.end_training()

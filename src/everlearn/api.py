"""The public Python API: what the commands do, callable from a notebook or another framework.

``everlearn.run``, ``resume``, ``evaluate``, ``load_results`` and ``export`` (re-exported
lazily by the package, so ``import everlearn`` stays torch-free until one is called) take a
config as a YAML path, a plain dict or a ``RunConfig``, plus overrides: dotted keys as the
command line's ``key=value`` (``**{"train.lr": 1e-4}``) or nested keyword arguments
(``train={"lr": 1e-4}``, which sets ``train.lr`` and leaves the other train fields alone). Each
drives the same code as its command (``runs.runner``, ``runs.eval_only``, ``runs.export``) and
returns a value instead of printing one.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from everlearn.errors import ConfigError, EverlearnError


@dataclass
class RunResult:
    """A finished (or resumed) run: its directory and its typed results.json."""

    run_dir: Path
    results: Any  # everlearn.runs.results.Results

    @property
    def metrics(self) -> dict[str, Any] | None:
        """AP, BWT, FWT, forgetting, ... (None until the run is complete)."""
        return self.results.metrics


WHOLE = ("strategy", "strategies")  # a strategy's dict is one entry of a list: set it whole


def flatten_overrides(overrides: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) pairs: ``{"train": {"lr": 1}}`` and ``{"train.lr": 1}`` both give
    ``("train.lr", 1)``. A dict value is merged field by field; anything else is set whole."""
    out = []
    for key, value in overrides.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value and dotted.split(".")[0] not in WHOLE:
            out.extend(flatten_overrides(value, dotted + "."))
        else:
            out.append((dotted, value))
    return out


def build_run_config(config: Any = None, overrides: dict[str, Any] | None = None,
                     preset: str | None = None):
    """(the validated RunConfig, where it came from) for a YAML path, a dict, a RunConfig or
    (``config`` None) a preset, the quickstart by default; ``overrides`` as :func:`run` takes
    them. Relative data paths in a YAML file resolve against its directory; in a dict, against
    the working directory."""
    from everlearn.config import RunConfig, dump_yaml
    from everlearn.config_files import apply_override, read_config_data
    from everlearn.presets import PRESETS
    from everlearn.validation import build_config, resolve_paths

    path = None
    if preset is not None and config is not None:
        raise EverlearnError("give either a config or preset=, not both")
    if config is None:
        name = preset or "quickstart"
        if name not in PRESETS:
            raise EverlearnError(f"preset: expected one of {', '.join(PRESETS)}, got {name!r}")
        data, source = read_config_data(None, (), PRESETS[name][1]())
        source = f"<preset {name}>"
    elif isinstance(config, (str, Path)):
        path = Path(config)
        data, source = read_config_data(path)
    elif isinstance(config, RunConfig):
        data, source = read_config_data(None, (), yaml.safe_load(dump_yaml(config)))
        source = "<RunConfig>"
    elif isinstance(config, dict):
        data, source = read_config_data(None, (), copy.deepcopy(config))
        source = "<dict>"
    else:
        raise EverlearnError(f"config: expected a YAML path, a dict or a RunConfig, got "
                             f"{type(config).__name__}")
    for key, value in flatten_overrides(overrides or {}):
        keys = key.split(".")
        if keys[0] == "strategy":  # the alias the config file and the command line accept
            keys[0] = "strategies"
            if len(keys) == 1 and not isinstance(value, list):
                value = [value]
        try:
            apply_override(data, keys, copy.deepcopy(value), f"{key}={value!r}")
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
    cfg = build_config(data, source)
    if path is not None:
        resolve_paths(cfg, path.resolve().parent)
    return cfg, source


def run(config: Any = None, output: str | Path | None = None, *, preset: str | None = None,
        quiet: bool = False, **overrides: Any) -> RunResult:
    """Train a stream (``everlearn run``) into ``output`` (default: OUTPUT_DIR/NAME-TIMESTAMP);
    the run directory and its typed results."""
    from everlearn.runs.runner import start_run

    cfg, source = build_run_config(config, overrides, preset)
    path, _ = start_run(cfg, output, quiet=quiet, source=source)
    return RunResult(Path(path), load_results(path))


def resume(run_dir: str | Path, *, quiet: bool = False) -> RunResult:
    """Continue a stopped run after its last finished stage (``everlearn run --resume``)."""
    from everlearn.runs.runner import resume_run

    path, _ = resume_run(run_dir, quiet=quiet)
    return RunResult(Path(path), load_results(path))


def evaluate(config: Any = None, weights: str | Path | None = None, *,
             preset: str | None = None, quiet: bool = False,
             **overrides: Any) -> dict[str, dict[str, Any]]:
    """Score the configured model, or a run's stage checkpoint (``weights``: a
    RUN_DIR/checkpoints/phase-NN directory), on every stage of the stream, without training
    (``everlearn eval``): ``{stage name: {"metric", "score", "n"}}``."""
    from everlearn.runs.eval_only import evaluate_config

    cfg, source = build_run_config(config, overrides, preset)
    return evaluate_config(cfg, None if weights is None else str(weights), quiet=quiet,
                           source=source)


def load_results(run_dir: str | Path):
    """RUN_DIR/results.json as the typed :class:`everlearn.runs.results.Results` (torch-free)."""
    from everlearn.runs.results import read_results

    return read_results(run_dir)


def export(run_dir: str | Path, stage: int, out: str | Path, *, merged: bool = False,
           push_to_hub: str | None = None):
    """Write stage ``stage``'s weights as a PEFT adapter directory (or, ``merged`` or full
    fine-tuning, a ``save_pretrained`` model directory) in ``out`` (``everlearn export``); an
    :class:`everlearn.runs.export.Exported` naming what was written."""
    from everlearn.runs.export import export_stage

    return export_stage(run_dir, stage, out, merged=merged, push_to_hub=push_to_hub)

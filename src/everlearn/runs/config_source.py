"""Where a run's config comes from on the command line: CONFIG (a YAML file), ``--preset`` or
the built-in quickstart, plus ``key=value`` overrides.

``everlearn run``, ``eval``, ``validate`` and ``sweep`` all read their config this way, so the
rules (one of CONFIG or --preset; a first positional with ``=`` that is not a file is an
override) live here once, next to the config loader they call.
"""

from __future__ import annotations

from pathlib import Path

from everlearn.data.benchmarks.hub import is_hub_source
from everlearn.errors import EverlearnError


def split_overrides(config: str | None,
                    overrides: list[str]) -> tuple[str | None, list[str]]:
    """``everlearn run train.lr=1`` (no config): the first positional is an override."""
    if config is not None and "=" in config and not Path(config).exists():
        return None, [config, *overrides]
    return config, overrides


def benchmark_overrides(name: str | None, order: int | None,
                        data_dir: str | None) -> list[str]:
    """``--benchmark NAME --order K --data-dir DIR`` as ``benchmark.*`` overrides."""
    if name is None:
        if order is not None or data_dir is not None:
            raise EverlearnError("--order and --data-dir go with --benchmark NAME")
        return []
    if data_dir is None:
        raise EverlearnError("--benchmark: give --data-dir DIR, the folder holding its tasks")
    where = data_dir if is_hub_source(data_dir) else Path(data_dir).resolve()
    out = [f"benchmark.name={name}", f"benchmark.data_dir={where}"]
    return out + ([f"benchmark.order={order}"] if order is not None else [])


def load_run_config(config: str | None, overrides: list[str], preset: str | None = None,
                    benchmark: list[str] | None = None):
    """(the RunConfig, where it came from: the file or ``<preset NAME>``). ``benchmark``: the
    ``--benchmark`` overrides; without CONFIG the stream is the benchmark's, on the
    quickstart's model and training settings (``<benchmark NAME>``)."""
    from everlearn.presets import PRESETS, benchmark_base
    from everlearn.validation import load_config

    config, overrides = split_overrides(config, overrides)
    if config is not None and preset is not None:
        raise EverlearnError("give either CONFIG or --preset, not both")
    if benchmark:
        if preset is not None:
            raise EverlearnError("give either --benchmark or --preset, not both")
        overrides = [*benchmark, *overrides]
        if config is None:
            name = benchmark[0].split("=", 1)[1]
            return load_config(None, overrides, base=benchmark_base()), f"<benchmark {name}>"
    if config is None:
        name = preset or "quickstart"
        if name not in PRESETS:
            raise EverlearnError(f"--preset: expected one of {', '.join(PRESETS)}, got {name!r}")
        return load_config(None, overrides, base=PRESETS[name][1]()), f"<preset {name}>"
    return load_config(config, overrides), config

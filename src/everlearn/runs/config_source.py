"""Where a run's config comes from on the command line: CONFIG (a YAML file), ``--preset`` or
the built-in quickstart, plus ``key=value`` overrides.

``everlearn run``, ``eval``, ``validate`` and ``sweep`` all read their config this way, so the
rules (one of CONFIG or --preset; a first positional with ``=`` that is not a file is an
override) live here once, next to the config loader they call.
"""

from __future__ import annotations

from pathlib import Path

from everlearn.errors import EverlearnError


def split_overrides(config: str | None,
                    overrides: list[str]) -> tuple[str | None, list[str]]:
    """``everlearn run train.lr=1`` (no config): the first positional is an override."""
    if config is not None and "=" in config and not Path(config).exists():
        return None, [config, *overrides]
    return config, overrides


def load_run_config(config: str | None, overrides: list[str], preset: str | None = None):
    """(the RunConfig, where it came from: the file or ``<preset NAME>``)."""
    from everlearn.presets import PRESETS
    from everlearn.validation import load_config

    config, overrides = split_overrides(config, overrides)
    if config is not None and preset is not None:
        raise EverlearnError("give either CONFIG or --preset, not both")
    if config is None:
        name = preset or "quickstart"
        if name not in PRESETS:
            raise EverlearnError(f"--preset: expected one of {', '.join(PRESETS)}, got {name!r}")
        return load_config(None, overrides, base=PRESETS[name][1]()), f"<preset {name}>"
    return load_config(config, overrides), config

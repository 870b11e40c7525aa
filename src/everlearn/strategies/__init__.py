"""The strategy registry: every ``Strategy`` subclass with a ``name`` in this package's modules.

One continual-learning method per module; adding a module registers it (no list to edit).
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from everlearn.errors import ConfigError
from everlearn.strategies.base import RunContext, Strategy, StrategyStack


def _discover() -> dict[str, type[Strategy]]:
    found: dict[str, type[Strategy]] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_") or info.name == "base" or info.ispkg:
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        for obj in vars(module).values():
            if (isinstance(obj, type) and issubclass(obj, Strategy) and obj.name
                    and obj.__module__ == module.__name__):
                if obj.name in found:
                    raise RuntimeError(f"two strategies named {obj.name!r}")
                found[obj.name] = obj
    return found


STRATEGIES: dict[str, type[Strategy]] = _discover()

__all__ = ["STRATEGIES", "RunContext", "Strategy", "StrategyStack", "build_strategy"]


def build_strategy(specs: list[Any], source: str = "config",
                   finetune: str | None = None) -> StrategyStack:
    """Instantiate and validate the configured strategies (``config.strategies``); with
    ``finetune`` (``model.finetune``) also check that each strategy supports it."""
    from everlearn.schema import FieldError, build

    members = []
    for i, spec in enumerate(specs):
        where = f"strategies.{i}"
        cls = STRATEGIES.get(spec.name)
        if cls is None:
            raise ConfigError(f"{source}: {where}.name: expected one of "
                              f"{', '.join(sorted(STRATEGIES))}, got {spec.name!r}")
        try:
            options = build(cls.Options, spec.options, f"{where}.options")
        except FieldError as exc:
            raise ConfigError(f"{source}: {exc.path}: {exc.message}") from None
        problem = options.check() if hasattr(options, "check") else None
        if problem:
            raise ConfigError(f"{source}: {where}.options.{problem[0]}: {problem[1]}")
        if finetune is not None and cls.requires_finetune not in (None, finetune):
            raise ConfigError(f"{source}: model.finetune: strategy '{cls.name}' needs "
                              f"'{cls.requires_finetune}', got '{finetune}'")
        members.append(cls(options))
    names = [m.name for m in members]
    if "joint" in names and len(names) > 1:
        raise ConfigError(f"{source}: strategies: 'joint' is an upper bound and does not "
                          "compose with other strategies")
    return StrategyStack(members)

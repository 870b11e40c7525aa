"""The strategy registry: name -> class. One continual-learning method per module."""

from __future__ import annotations

from typing import Any

from everlearn.errors import ConfigError
from everlearn.strategies.base import RunContext, Strategy, StrategyStack
from everlearn.strategies.joint import Joint
from everlearn.strategies.replay import Replay
from everlearn.strategies.seqft import SeqFT

STRATEGIES: dict[str, type[Strategy]] = {cls.name: cls for cls in (SeqFT, Joint, Replay)}

__all__ = ["STRATEGIES", "RunContext", "Strategy", "StrategyStack", "build_strategy"]


def build_strategy(specs: list[Any], source: str = "config") -> StrategyStack:
    """Instantiate and validate the configured strategies (``config.strategies``)."""
    from everlearn.config import _build, _Mismatch

    members = []
    for i, spec in enumerate(specs):
        where = f"strategies.{i}"
        cls = STRATEGIES.get(spec.name)
        if cls is None:
            raise ConfigError(f"{source}: {where}.name: expected one of "
                              f"{', '.join(sorted(STRATEGIES))}, got {spec.name!r}")
        try:
            options = _build(cls.Options, spec.options, f"{where}.options")
        except _Mismatch as exc:
            raise ConfigError(f"{source}: {exc.path}: {exc.message}") from None
        problem = options.check() if hasattr(options, "check") else None
        if problem:
            raise ConfigError(f"{source}: {where}.options.{problem[0]}: {problem[1]}")
        members.append(cls(options))
    names = [m.name for m in members]
    if "joint" in names and len(names) > 1:
        raise ConfigError(f"{source}: strategies: 'joint' is an upper bound and does not "
                          "compose with other strategies")
    return StrategyStack(members)

"""Registries that modules fill by declaring themselves: stage kinds (``KIND = Kind(...)`` in a
module of everlearn.stages) and metrics (``METRIC = Metric(...)`` in everlearn.evaluation.scorers).

A package's modules are imported on the first lookup, not when the package is imported, so code
below them (the data layer, config validation) may ask a registry without an import cycle.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any


def declarations(path: list[str], package: str, attribute: str, kind: type) -> dict[str, Any]:
    """The ``attribute`` of every module of ``package`` that is a ``kind``, by name, sorted by
    their ``order``; two declarations of one name are a programming error."""
    found: dict[str, Any] = {}
    for info in pkgutil.iter_modules(path):
        module = importlib.import_module(f"{package}.{info.name}")
        item = getattr(module, attribute, None)
        if isinstance(item, kind):
            if item.name in found:
                raise RuntimeError(f"{package}: two declarations named {item.name!r}")
            found[item.name] = item
    return dict(sorted(found.items(), key=lambda entry: entry[1].order))

"""Stage kinds (sft, cpt, align, edit) and the stream of stages a run trains on.

The registry of kinds: every module of this package that defines ``KIND = Kind(...)`` declares
one kind, with everything that is particular to it (its metrics, how its records are read,
checked and encoded, its loss, how it is scored). Code that would branch on a kind's name asks
the registry instead (``get_kind(stage.kind).raw_text``), so a new kind is one new module here
and no list elsewhere. Modules are discovered on the first lookup, not on import, so the data
layer may ask the registry without importing the kinds (which build on it) in a cycle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from everlearn.errors import ConfigError
from everlearn.registry import declarations


@dataclass(frozen=True)
class Kind:
    """What one stage kind says about itself.

    ``read_record(row, where, task, i, path)`` turns one source object (fields already renamed)
    into a Record; ``check_records(split, records, source)`` returns what is wrong with a split
    of a stage (None when nothing); ``encode(encoder, records)`` gives the training examples.
    ``loss`` is ``"tokens"`` (token loss on the labels ``encode`` sets) or ``"dpo"`` (preference
    pairs, :mod:`everlearn.stages.align`). ``edits``: the records are fact edits, trained by an
    editor (:mod:`everlearn.stages.edit`) and scored by the edit metrics. ``raw_text``: the
    records are plain text (packed; label options continue the prompt as a cloze; prompts
    that ask a model for more data ask for text). ``instructions``: the records are
    instruction/response pairs trained on their response.
    """

    name: str
    order: int  # position in kinds()
    description: str
    # the metrics a configured stage of this kind may name (a built-in suite scores its own
    # stages as it declares: worldline's cpt stages by accuracy, options read as a cloze)
    metrics: tuple[str, ...]
    default_metric: str | None  # None: inferred from the data (labels -> accuracy ...)
    read_record: Callable[..., Any]
    encode: Callable[[Any, list], list]
    check_records: Callable[[str, list, str], str | None] | None = None
    loss: str = "tokens"
    edits: bool = False
    raw_text: bool = False
    instructions: bool = False
    plain_text_files: bool = False  # a .txt file holds its records (documents)
    superni_files: bool = False  # a SuperNI task JSON holds its records
    freeze_lm: bool = False  # may train a vision-language model's vision side only


_KINDS: dict[str, Kind] = {}


def _discover() -> dict[str, Kind]:
    if not _KINDS:
        _KINDS.update(declarations(__path__, __name__, "KIND", Kind))
    return _KINDS


def kinds() -> list[str]:
    """The names of every stage kind, in order (sft, cpt, align, edit)."""
    return list(_discover())


def get_kind(name: str) -> Kind:
    """The kind called ``name``; a one-line ConfigError naming the kinds otherwise."""
    found = _discover()
    if name not in found:
        raise ConfigError(f"unknown stage kind {name!r}; expected one of {', '.join(found)}")
    return found[name]


def kind_of_metric(metric: str) -> str:
    """The first kind (in order) whose stages may be scored by ``metric``."""
    for kind in _discover().values():
        if metric in kind.metrics:
            return kind.name
    raise ConfigError(f"no stage kind is scored by {metric!r}")


def kinds_with(flag: str) -> str:
    """The kinds whose ``flag`` is set, for messages: ``'cpt'``, ``'sft or cpt'``."""
    return " or ".join(k.name for k in _discover().values() if getattr(k, flag))


__all__ = ["Kind", "get_kind", "kind_of_metric", "kinds", "kinds_with"]

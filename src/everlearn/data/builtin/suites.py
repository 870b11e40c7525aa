"""Built-in suites: generated benchmarks that expand into several stages of a stream.

A built-in *task* (``builtin: cipher``) is one stage; a *suite* (``builtin: worldline``,
``builtin: long_stream``) is a stream of its own: one config entry with ``periods: N`` becomes
N stages named ``<name>-01 .. <name>-N``, with suite options under ``builtin_options``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from everlearn.data.builtin import counterfactual, long_stream, worldline
from everlearn.data.records import Record


@dataclass(frozen=True)
class BuiltinSuite:
    """A generated multi-stage benchmark (see :mod:`everlearn.data.builtin.suites`)."""

    name: str
    description: str
    kind: str  # the stage kind of every stage it makes
    metric: str
    Options: type
    default_periods: int
    build: Callable[[int, int, Any], list[tuple[list[Record], list[Record]]]] = field(
        repr=False)
    sample_test: Callable[[list[Record], int | None, int, str], list[Record]] = field(
        repr=False)


SUITES: dict[str, BuiltinSuite] = {
    "worldline": BuiltinSuite(
        name="worldline",
        description="a fictional world whose facts change each period: cpt text per period, "
                    "cloze probes split into invariant/updated/new facts, FUAR",
        kind="cpt", metric="accuracy", Options=worldline.WorldlineOptions, default_periods=4,
        build=worldline.build_periods, sample_test=worldline.sample_probes),
    "long_stream": BuiltinSuite(
        name="long_stream",
        description="many cheap classification stages (default 100): words or numbers sorted "
                    "under labels invented per stage, short prompts, scored by option "
                    "log-likelihood; for long-stream cost and behaviour",
        kind="sft", metric="accuracy", Options=long_stream.LongStreamOptions,
        default_periods=100, build=long_stream.build_stages,
        sample_test=long_stream.sample_test),
    "edits_counterfactual": BuiltinSuite(
        name="edits_counterfactual",
        description="batches of counterfactual edits to facts the embedded model knows "
                    "(capitals, languages, landmarks...): edit stages with paraphrases and "
                    "locality prompts, reliability in R (docs/editing.md)",
        kind="edit", metric="reliability", Options=counterfactual.CounterfactualOptions,
        default_periods=4, build=counterfactual.build_batches,
        sample_test=counterfactual.sample_edits),
}


def get_suite(name: str | None) -> BuiltinSuite | None:
    """The suite called ``name``, or None when it is not a suite (maybe a task)."""
    return SUITES.get(name) if name else None

"""Built-in suites: generated benchmarks that expand into several stages of a stream.

A built-in *task* (``builtin: cipher``) is one stage; a *suite* (``builtin: worldline``,
``builtin: long_stream``) is a stream of its own: one config entry with ``periods: N`` becomes
N stages named ``<name>-01 .. <name>-N`` (or ``<name>-<suffix>`` for a suite that names its
stages, as ``visual_shapes`` does by task), with suite options under ``builtin_options``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from everlearn.data.builtin import counterfactual, long_stream, visual, worldline
from everlearn.data.records import Record


@dataclass(frozen=True)
class BuiltinSuite:
    """A generated multi-stage benchmark (see :mod:`everlearn.data.builtin.suites`)."""

    name: str
    description: str
    kind: str  # the stage kind of every stage it makes
    metric: str
    Options: type
    default_periods: int | Callable[[Any], int]  # a number, or one read from the options
    build: Callable[[int, int, Any], list[tuple[list[Record], list[Record]]]] = field(
        repr=False)
    sample_test: Callable[[list[Record], int | None, int, str], list[Record]] = field(
        repr=False)
    # the suffix of each stage's name (from the options and the number of stages); None: 01..N
    stage_suffixes: Callable[[Any, int], list[str]] | None = field(default=None, repr=False)

    def periods_for(self, options: Any) -> int:
        """The number of stages when ``periods`` is not set."""
        d = self.default_periods
        return d if isinstance(d, int) else d(options)


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
    "visual_shapes": BuiltinSuite(
        name="visual_shapes",
        description="visual instruction tasks over generated scenes of coloured shapes "
                    "(colour, shape, count, position, compare), one stage each, named "
                    "NAME-<task>; images only (needs a vision-language model, docs/multimodal.md)",
        kind="sft", metric="accuracy", Options=visual.VisualOptions,
        default_periods=visual.default_stages, build=visual.build_stages,
        sample_test=visual.sample_test, stage_suffixes=visual.stage_suffixes),
}


def get_suite(name: str | None) -> BuiltinSuite | None:
    """The suite called ``name``, or None when it is not a suite (maybe a task)."""
    return SUITES.get(name) if name else None

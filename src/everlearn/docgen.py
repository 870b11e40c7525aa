"""Generate the config reference (docs/config.md) from the dataclass field docs.

The reference is produced from the code, and a test checks that the committed file matches,
so the docs cannot drift from the fields: each field's help and its range (declared on the
field with ``schema.field``, the one ``schema.build`` checks) are rendered from it.
Regenerate with ``python -m everlearn.docgen``.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from pathlib import Path

from everlearn.config import (
    BoundaryConfig,
    DataSource,
    EditConfig,
    EvalConfig,
    LoraConfig,
    ModelConfig,
    RecycleConfig,
    RunConfig,
    StageConfig,
    StrategySpec,
    TextStreamConfig,
    TrackerConfig,
    TrainConfig,
    VisionConfig,
)
from everlearn.data.builtin.counterfactual import CounterfactualOptions
from everlearn.data.builtin.visual import VisualOptions
from everlearn.data.builtin.worldline import WorldlineOptions
from everlearn.schema import field_range, type_name

SECTIONS = [
    ("top level", RunConfig),
    ("model", ModelConfig),
    ("model.lora", LoraConfig),
    ("model.vision", VisionConfig),
    ("train", TrainConfig),
    ("eval", EvalConfig),
    ("stages[]", StageConfig),
    ("stages[].train / stages[].test", DataSource),
    ("strategies[]", StrategySpec),
    ("stages[].builtin_options (builtin: worldline)", WorldlineOptions),
    ("tracker", TrackerConfig),
    ("edit", EditConfig),
    ("stages[].builtin_options (builtin: edits_counterfactual)", CounterfactualOptions),
    ("stages[].builtin_options (builtin: visual_shapes)", VisualOptions),
    ("recycle", RecycleConfig),
    ("text_stream", TextStreamConfig),
    ("text_stream.boundaries", BoundaryConfig),
]


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "required"
    return f"`{value!r}`" if value is not None else "`null`"


def config_reference() -> str:
    lines = ["# Configuration reference", "",
             "Generated from the dataclasses in `src/everlearn/config.py` by "
             "`python -m everlearn.docgen`; a test keeps it in sync. Any field can be overridden "
             "on the command line as `section.field=value` (lists by index: "
             "`stages.0.max_train=200`). A value outside a field's range is refused in one line "
             "naming the file and the field.", ""]
    for title, cls in SECTIONS:
        hints = typing.get_type_hints(cls)
        lines += [f"## {title}", "", (cls.__doc__ or "").strip(), "",
                  "| field | type | default | range | meaning |",
                  "| --- | --- | --- | --- | --- |"]
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            default = ("see its section" if dataclasses.is_dataclass(tp) else _default(f))
            kind = type_name(tp).replace("|", "\\|")
            rng = field_range(f)
            lines.append(f"| `{f.name}` | {kind} | {default} | {rng or ''} | "
                         f"{f.metadata.get('help', '')} |")
        lines.append("")
    return "\n".join(lines)


def strategy_reference() -> str:
    from everlearn.strategies import STRATEGIES
    from everlearn.strategies.base import option_fields

    lines = ["# Strategies", "", "Generated from the strategy classes by "
             "`python -m everlearn.docgen`. Compose them in order: `strategy: [replay, ...]`.", ""]
    for name, cls in sorted(STRATEGIES.items()):
        lines += [f"## `{name}`", "", f"{cls.summary}.", "", f"Reference: {cls.paper}.", ""]
        details = getattr(cls, "details", "")  # the method as built: equations, deviations
        if details:
            lines += [details.strip(), ""]
        opts = option_fields(cls)
        if opts:
            lines += ["| option | default | meaning |", "| --- | --- | --- |"]
            lines += [f"| `{o}` | `{d!r}` | {h} |" for o, d, h in opts]
        else:
            lines.append("No options.")
        lines.append("")
    return "\n".join(lines)


DOCS = {"config.md": config_reference, "strategies.md": strategy_reference}


def main(argv: list[str] | None = None) -> int:
    out = Path(argv[0] if argv else "docs")
    out.mkdir(parents=True, exist_ok=True)
    for name, fn in DOCS.items():
        (out / name).write_text(fn() + "\n", encoding="utf-8")
        print(f"wrote {out / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

"""Helpers shared by the tests of the locate-then-edit editors (ROME, MEMIT, AlphaEdit)."""

from __future__ import annotations

from everlearn.data.records import Record
from everlearn.stages.stream import Stage
from everlearn.strategies.base import RunContext
from tests.helpers.edit import tiny_setup

# the tiny random model's hidden states are small and its predictions never confident: no norm
# clamp or weight decay, and a value is done once its NLL is moderate
TINY_VALUES = {"prefixes": 1, "prefix_length": 4, "value_steps": 25, "clamp_norm": 100.0,
               "weight_decay": 0.0, "stop_loss": 1.0}


def editor_on_tiny(cls, run_dir=None, **options):
    """(editor set up on a fresh tiny model, model, encoder)."""
    tok, model, encoder, evaluator = tiny_setup()
    editor = cls(cls.Options(**{**TINY_VALUES, **options}))
    editor.setup(RunContext(model=model, tokenizer=tok, encoder=encoder, config=None,
                            stream=None, seed=0, accelerator=evaluator.acc, run_dir=run_dir))
    return editor, model, encoder


def edit_stage_of(facts: list[tuple[str, str]], subject: bool = False) -> tuple[Stage, list]:
    """An edit stage of "Colour of <s> is " -> <t> edits (one byte-level token each)."""
    recs = [Record(prompt=f"Colour of {s} is ", response=t,
                   meta={"subject": s} if subject else {}) for s, t in facts]
    return Stage(1, "e", "edit", "reliability", recs, recs), recs

"""The edit phase's protocol (``training.editing``): edits reach an editor batch by batch in the
stage's order (``edit.batch_size``), and the phase's cost covers every batch, not the last."""

from __future__ import annotations

import pytest
import torch

from everlearn.config import EditConfig
from everlearn.data.records import Record
from everlearn.errors import TrainingError
from everlearn.stages.stream import Stage
from everlearn.strategies.base import Strategy
from everlearn.training.editing import apply_edits, batches
from everlearn.training.resources import Stopwatch

CPU = torch.device("cpu")


class RecordingEditor(Strategy):
    name = ""  # not registered

    def __init__(self, edits_kinds=("edit",)):
        super().__init__()
        self.calls: list[tuple[str, list[str]]] = []
        self.after: list[str] = []
        self.kinds = edits_kinds

    def apply_edits(self, stage, records):
        if stage.kind not in self.kinds:
            return None
        self.calls.append((stage.name, [r.prompt for r in records]))
        return {"steps": 10 * len(records), "tokens": 3, "edits": len(records), "loss": 1.0,
                "trainable_params": 7}

    def after_stage(self, stage):
        self.after.append(stage.name)


def _stage(name: str, n: int, batch_size: int | None, kind: str = "edit") -> Stage:
    recs = [Record(prompt=f"{name}{i}", response="x") for i in range(n)]
    st = Stage(1, name, kind, "reliability", recs, recs)
    st.edit = EditConfig(batch_size=batch_size)
    return st


def test_batches_keep_order_and_size():
    assert batches(list(range(5)), 2) == [[0, 1], [2, 3], [4]]
    assert batches(list(range(5)), None) == [list(range(5))]
    assert batches(list(range(3)), 8) == [[0, 1, 2]] and batches([], 1) == []


@pytest.mark.parametrize("size, expected", [(1, [["a0"], ["a1"], ["a2"]]),
                                            (2, [["a0", "a1"], ["a2"]]),
                                            (None, [["a0", "a1", "a2"]])])
def test_editor_gets_the_stage_in_batches_and_the_cost_covers_all(size, expected):
    editor = RecordingEditor()
    st = _stage("a", 3, size)
    cost = apply_edits(editor, [st], {"a": st.train}, Stopwatch(), CPU)
    assert [c[1] for c in editor.calls] == expected  # in order, one update per batch
    assert cost.examples == 3 and cost.steps == 30  # every batch counted, not the last one
    assert cost.trainable_params == 7 * len(expected) and editor.after == ["a"]


def test_not_an_editor_fine_tunes_and_a_half_edited_phase_is_refused():
    assert apply_edits(Strategy(), [_stage("a", 2, 1)], {"a": []}, Stopwatch(), CPU) is None
    editor = RecordingEditor(edits_kinds=("edit",))
    stages = [_stage("a", 1, None), _stage("b", 1, None, kind="other")]
    with pytest.raises(TrainingError, match="edited some of the phase's stages but not all"):
        apply_edits(editor, stages, {"a": stages[0].train, "b": stages[1].train}, Stopwatch(),
                    CPU)

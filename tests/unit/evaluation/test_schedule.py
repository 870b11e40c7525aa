"""The evaluation schedule (``evaluation.schedule``): which cells each row scores, and bad values
as config errors."""

from __future__ import annotations

import pytest

from everlearn.errors import ConfigError
from everlearn.evaluation.schedule import describe, scored_columns
from everlearn.validation import build_config
from tests.conftest import tiny_config
from tests.helpers.long_stream import SIX


# --- the schedule (pure) -------------------------------------------------------------------
def test_default_schedule_scores_every_row_in_full():
    assert all(scored_columns(None, None, 0, SIX, row) is None for row in range(7))
    assert all(scored_columns(1, 3, 0, SIX, row) is None for row in range(7))  # every row full
    assert describe(None, None) is None and describe(1, 2) is None


def test_every_k_scores_the_stage_trained_and_the_next_in_between():
    rows = [scored_columns(3, None, 0, SIX, row) for row in range(7)]
    assert rows == [None, [0, 1], [1, 2], None, [3, 4], [4, 5], None]  # full: 0, 3, 6 (last)


def test_sample_earlier_adds_seeded_earlier_stages():
    rows = [scored_columns(None, 1, 0, SIX, row) for row in range(7)]
    assert rows[0] is None and rows[6] is None  # base and last row: always full
    assert rows[1] == [0, 1]  # nothing trained before stage 1
    assert rows[2] == [0, 1, 2]  # the only earlier stage
    for row in (3, 4, 5):
        earlier = [c for c in rows[row] if c < row - 1]
        assert len(rows[row]) == 3 and len(earlier) == 1
        assert {row - 1, row} <= set(rows[row])
    assert rows == [scored_columns(None, 1, 0, SIX, row) for row in range(7)]  # deterministic
    many = [[c] for c in range(40)]
    assert ([scored_columns(None, 3, 0, many, r) for r in range(41)]
            != [scored_columns(None, 3, 1, many, r) for r in range(41)])  # the seed matters
    assert scored_columns(None, 0, 0, SIX, 4) == [3, 4]  # 0: only what the metrics need


def test_schedule_with_phases_of_several_stages():
    phases = [[0, 1], [2], [3, 4]]
    assert scored_columns(None, 0, 0, phases, 1) == [0, 1, 2]
    assert scored_columns(None, 0, 0, phases, 2) == [2, 3, 4]
    assert scored_columns(None, 0, 0, phases, 3) is None


@pytest.mark.parametrize("field, value", [("every", 0), ("sample_earlier", -1)])
def test_bad_schedule_values_are_config_errors(tmp_path, field, value):
    cfg = tiny_config(tmp_path, [{"builtin": "long_stream", "periods": 3}])
    cfg["eval"][field] = value
    with pytest.raises(ConfigError, match=f"eval.{field}"):
        build_config(cfg)

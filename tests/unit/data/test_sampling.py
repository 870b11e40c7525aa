"""Deterministic record samples (everlearn.data.sampling)."""

from everlearn.data.records import Record
from everlearn.data.sampling import sample_records


def test_sample_is_deterministic_ordered_and_keyed():
    records = [Record(prompt=str(i), response="x") for i in range(50)]
    a = sample_records(records, 10, 3, "stage:train")
    assert a == sample_records(records, 10, 3, "stage:train")
    assert [int(r.prompt) for r in a] == sorted(int(r.prompt) for r in a)
    assert a != sample_records(records, 10, 3, "stage:test")
    assert sample_records(records, None, 3, "k") is records
    assert sample_records(records, 50, 3, "k") is records

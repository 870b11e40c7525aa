"""Helpers shared by several files of the bad input tests."""

from __future__ import annotations

import copy
from pathlib import Path

from hypothesis import strategies as st

ROWS = [{"prompt": f"question {i}", "response": "alpha" if i % 2 else "bravo"} for i in range(12)]


def valid_config(data_dir: Path) -> dict:
    return {
        "name": "fuzz", "seed": 0,
        "model": {"name": "tiny-llama", "finetune": "full", "lora": {"r": 4}},
        "train": {"lr": 1e-3, "batch_size": 4, "steps": 1, "max_length": 32,
                  "precision": "fp32"},
        "eval": {"batch_size": 8, "max_new_tokens": 4},
        "stages": [{"name": "a", "train": str(data_dir / "a.jsonl"),
                    "test": str(data_dir / "a.jsonl"), "max_train": 8},
                   {"builtin": "dates", "max_train": 8, "max_test": 4}],
        "strategies": [{"name": "replay", "buffer_size": 4}],
    }


def paths_of(obj, prefix=()):
    """Every key path into a nested dict/list config."""
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from paths_of(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from paths_of(v, prefix + (i,))


JUNK = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.lists(st.one_of(st.integers(), st.text(max_size=5)), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


@st.composite
def mutated(draw, base: dict):
    """``base`` with one value replaced by junk, one key deleted, or one unknown key added."""
    cfg = copy.deepcopy(base)
    paths = [p for p in paths_of(cfg) if p]
    path = draw(st.sampled_from(paths))
    parent = cfg
    for key in path[:-1]:
        parent = parent[key]
    action = draw(st.sampled_from(["replace", "delete", "add"]))
    if action == "replace":
        parent[path[-1]] = draw(JUNK)
    elif action == "delete":
        del parent[path[-1]]
    elif isinstance(parent, dict):
        parent[draw(st.text(min_size=1, max_size=8))] = draw(JUNK)
    return cfg


def check_outcome(code: int, err: str, named: str) -> None:
    assert code in (0, 2), f"exit {code}: {err}"
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1, f"not one line: {err!r}"
        assert lines[0].startswith("everlearn: error: ") and named in lines[0], lines[0]
    assert "Traceback" not in err

"""Truncation in a run: the share of truncated examples per stage in results.json."""

from __future__ import annotations

import json

from everlearn.validation import build_config
from tests.conftest import tiny_config, write_jsonl
from tests.helpers.encode_tokens import DEFINITION


def test_truncated_share_per_stage_in_results(tmp_path):
    from everlearn.runs.runner import start_run

    short = [{"prompt": f"q{i}", "response": "ok"} for i in range(3)]
    long = {"prompt": f"{DEFINITION}\n\nInput: {'word ' * 30}\nOutput:", "response": "ok"}
    train = write_jsonl(tmp_path / "train.jsonl", short + [long])
    test = write_jsonl(tmp_path / "test.jsonl", short[:1] + [long])
    stage = {"name": "s", "train": str(train), "test": str(test), "metric": "exact_match"}
    cfg = build_config(tiny_config(tmp_path, [stage], train={
        "steps": 1, "max_length": 120, "precision": "fp32", "batch_size": 4}))
    path, res = start_run(cfg, tmp_path / "run", quiet=True)
    assert res["stages"][0]["truncated_share"] == {"train": 0.25, "test": 0.5}
    assert json.loads((path / "results.json").read_text())["stages"][0]["truncated_share"] == {
        "train": 0.25, "test": 0.5}

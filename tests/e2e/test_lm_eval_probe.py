"""lm-evaluation-harness tasks as general probes (``eval.lm_eval``) in a run, on a task defined by
a local YAML file and the tiny model."""

from __future__ import annotations

import json

import pytest

from everlearn.report.tables import format_summary
from everlearn.runs.runner import start_run
from everlearn.validation import build_config
from tests.conftest import constant_task, tiny_config, write_jsonl

pytest.importorskip("lm_eval")


def _harness_task(tmp):
    """Four questions whose right option is always 'alpha' (the stage below teaches it; the
    untrained tiny model prefers 'bravo')."""
    rows = [{"question": f"probe question {i}", "choices": ["alpha", "bravo"], "label": 0}
            for i in range(4)]
    data = write_jsonl(tmp / "probe.jsonl", rows)
    (tmp / "tasks").mkdir()
    (tmp / "tasks" / "probe.yaml").write_text(
        "task: everlearn_probe\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {json.dumps(str(data))}\ntest_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: label\n'
        "metric_list:\n  - metric: acc\n", encoding="utf-8")
    return tmp / "tasks"


def test_harness_task_is_measured_on_every_row(tmp_path):
    tasks = _harness_task(tmp_path)
    stages = [constant_task(tmp_path, "teach", "alpha")]
    cfg = build_config(tiny_config(
        tmp_path, stages, eval={"batch_size": 8, "max_new_tokens": 4, "lm_eval": {
            "tasks": ["everlearn_probe"], "include_path": str(tasks)}}), "test")
    _, res = start_run(cfg, tmp_path / "run", quiet=True)
    probe = res["general"]["lm_eval/everlearn_probe"]
    assert probe["metric"] == "acc,none" and len(probe["scores"]) == 2
    assert probe["scores"][0] < 100.0 and probe["scores"][-1] == 100.0  # learned 'alpha'
    assert probe["delta"] == [s - probe["scores"][0] for s in probe["scores"]]
    assert "everlearn_probe %" in format_summary(res)

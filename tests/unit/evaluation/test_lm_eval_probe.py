"""lm-evaluation-harness tasks as general probes (``evaluation.lm_eval_probe``): the main metric,
and a missing harness as a config error."""

from __future__ import annotations

import importlib.util

import pytest

from everlearn.errors import ConfigError
from everlearn.evaluation.lm_eval_probe import main_metric
from everlearn.validation import build_config
from tests.conftest import constant_task, tiny_config

pytest.importorskip("lm_eval")


def test_main_metric_prefers_acc_and_skips_stderr():
    assert main_metric({"alias": "x", "acc_norm,none": 0.7, "acc_stderr,none": 0.1,
                        "acc,none": 0.5}) == ("acc,none", 0.5)
    assert main_metric({"name": "x", "exact_match_stderr,strict": 0.2,
                        "exact_match,strict": 0.25}) == ("exact_match,strict", 0.25)
    assert main_metric({"alias": "group", "sample_len": 3}) is None


def test_missing_harness_is_a_config_error(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "lm_eval" else real(name, *a))
    stages = [constant_task(tmp_path, "teach", "bravo")]
    with pytest.raises(ConfigError, match=r"eval\.lm_eval\.tasks: lm-evaluation-harness is not "):
        build_config(tiny_config(tmp_path, stages, eval={"lm_eval": {"tasks": ["x"]}}), "cfg.yaml")

"""A failed ``run`` on malformed input leaves no run directory that a later resume would trust
(property-based: the malformed inputs of tests/unit/test_cli.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from everlearn.cli import main
from tests.helpers.bad_input import ROWS, check_outcome, mutated, valid_config


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data")
    (d / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return d


@settings(max_examples=8, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_run_on_bad_input_leaves_nothing_a_resume_would_trust(tmp_path, data_dir, capsys,
                                                              data):
    cfg = data.draw(mutated(valid_config(data_dir)))
    path = tmp_path / "stream.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    out = tmp_path / f"run-{data.draw(st.integers(0, 10**9))}"
    code = main(["run", str(path), "--output", str(out), "-q"])
    err = capsys.readouterr().err
    check_outcome(code, err, "stream.yaml")
    if code == 2:  # rejected before anything was written
        assert not (out / "results.json").exists()
    else:
        assert json.loads((out / "results.json").read_text())["status"] == "complete"

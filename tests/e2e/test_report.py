"""A run writes its report, and survives the report's failure."""

from __future__ import annotations

import json
from pathlib import Path

from everlearn.cli import main
from tests.helpers.report import fake_run


def test_run_writes_report_and_survives_its_failure(tmp_path: Path, monkeypatch, capsys):
    """`everlearn run` ends with the report; a failing report is a warning, the run stands."""
    import everlearn.report
    import everlearn.runs.runner

    run = fake_run(tmp_path)
    results = json.loads((run / "results.json").read_text())
    monkeypatch.setattr(everlearn.runs.runner, "start_run", lambda *a, **k: (run, results))
    assert main(["run", "--preset", "smoke", "-q"]) == 0
    out = capsys.readouterr().out
    assert f"report: {run / 'report' / 'index.html'}" in out
    assert (run / "report" / "matrix.png").is_file()

    def broken(_):
        raise RuntimeError("disk\nfull")

    monkeypatch.setattr(everlearn.report, "write_report", broken)
    before = (run / "results.json").read_bytes()
    assert main(["run", "--preset", "smoke", "-q"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("everlearn: warning: report not written")
    assert "disk full" in err[0]
    assert (run / "results.json").read_bytes() == before

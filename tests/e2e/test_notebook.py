"""examples/python_api.ipynb runs: its code cells, in order, on the tiny model saved as a
directory (the notebook reads the model and the step count from environment variables)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers.export import save_tiny_base

NOTEBOOK = Path(__file__).resolve().parents[2] / "examples" / "python_api.ipynb"


def test_the_notebook_is_valid_nbformat_4_without_outputs():
    nb = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    assert nb["nbformat"] == 4 and isinstance(nb["metadata"], dict)
    kinds = [c["cell_type"] for c in nb["cells"]]
    assert set(kinds) == {"markdown", "code"} and kinds.count("code") >= 5
    for cell in nb["cells"]:
        assert isinstance(cell["metadata"], dict) and isinstance(cell["source"], list)
        assert all(isinstance(line, str) for line in cell["source"])
        if cell["cell_type"] == "code":  # committed unexecuted: no stale outputs
            assert cell["outputs"] == [] and cell["execution_count"] is None


def test_the_notebook_runs_exports_and_loads_the_adapter_with_plain_peft(tmp_path,
                                                                         monkeypatch):
    monkeypatch.setenv("EVERLEARN_NOTEBOOK_MODEL", str(save_tiny_base(tmp_path / "base")))
    monkeypatch.setenv("EVERLEARN_NOTEBOOK_STEPS", "2")
    monkeypatch.setenv("EVERLEARN_NOTEBOOK_DIR", str(tmp_path / "work"))
    nb = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    namespace: dict = {"__name__": "__notebook__"}
    for i, cell in enumerate(c for c in nb["cells"] if c["cell_type"] == "code"):
        exec(compile("".join(cell["source"]), f"{NOTEBOOK.name} cell {i}", "exec"), namespace)
    assert namespace["results"].status == "complete"
    assert namespace["results"].config["train"]["steps"] == 2
    assert namespace["exported"].form == "adapter"
    assert namespace["same"] is True
    scores = namespace["scores"]  # everlearn.evaluate of stage 1 reproduces the run's row
    assert [round(scores[n]["score"], 4) for n in scores] == [
        round(s, 4) for s in namespace["results"].R[1]]

"""results.json -> a self-contained HTML report (``RUN_DIR/report/index.html``) with PNG figures.

Never imports torch: a report is written on any machine that has the run directory.
"""

from __future__ import annotations

import os
from pathlib import Path

from everlearn.report.data import ReportError, load_results

__all__ = ["ReportError", "load_results", "write_report"]


def _write(path: Path, payload: bytes) -> None:
    """Atomically: an interrupted report never leaves a half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(payload)
    os.replace(tmp, path)


def write_report(run_dir: str | Path) -> Path:
    """Write ``RUN_DIR/report/`` (index.html and the PNG figures); returns index.html's path."""
    from everlearn.report import figures
    from everlearn.report.page import build_page

    run_dir = Path(run_dir)
    results = load_results(run_dir)
    figs = {"matrix": figures.heatmap_png(results), "scores": figures.scores_png(results)}
    general = figures.general_png(results)
    if general is not None:
        figs["general"] = general
    loss = figures.loss_png(results)
    if loss is not None:
        figs["loss"] = loss
    stream = figures.text_stream_png(results)
    if stream is not None:
        figs["text_stream"] = stream
    config = run_dir / "config.yaml"
    config_text = config.read_text(encoding="utf-8") if config.is_file() else None
    out = run_dir / "report"
    out.mkdir(exist_ok=True)
    for name, png in figs.items():
        _write(out / f"{name}.png", png)
    index = out / "index.html"
    _write(index, build_page(results, figs, config_text).encode("utf-8"))
    return index
